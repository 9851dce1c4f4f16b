"""The attention that computes a packed row (`packed_row.py`) with the model's own SDPA or flash-attention.

[`shared_prefix_attention`] wraps the registered attention function and calls it twice per layer and group: causal
attention over the prefix, then the segments as a batch of queries over `[prefix keys, own keys]` with the causal
diagonal aligned bottom-right. Nothing of size `L x L` is built for full-attention layers: flash-attention takes both
calls as they are, SDPA the first as `is_causal` and the second with a `(segment, prefix + segment)` mask.
Sliding-window layers get the window the model passes for them, in positions. Memory: per layer, the segments' call
takes the prefix's keys and values once per segment (`2 x segments x (prefix + segment)` key vectors, expanded to every
query head by SDPA's masked call), held for the backward of that layer only under layer checkpointing.
"""

import functools
from collections.abc import Callable

import torch
from transformers import PretrainedConfig
from transformers.modeling_flash_attention_utils import flash_attn_supports_top_left_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging
from transformers.utils.generic import is_flash_attention_requested

from .packed_row import SHARED_PREFIX_KWARG, PrefixGroup, SharedPrefixLayout


logger = logging.get_logger(__name__)


def layer_attention_windows(config: PretrainedConfig) -> dict[str, int | None] | None:
    """The attention window of each layer type of a model (None: full causal attention), keyed like transformers'
    per-layer-type masks; None when a layer type is one the packed pass cannot reproduce (e.g. chunked attention).

    Models without `layer_types` (Mistral, Mixtral, Phi-3, ...) apply `sliding_window`, if set, to every layer; a
    multimodal model's language model is read from its text config.
    """
    config = config.get_text_config()
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if not layer_types:
        return {"full_attention": None} if window is None else {"sliding_attention": window}
    windows: dict[str, int | None] = {}
    for layer_type in set(layer_types):
        if layer_type == "full_attention":
            windows[layer_type] = None
        elif layer_type == "sliding_attention" and window is not None:
            windows[layer_type] = window
        else:
            return None
    return windows


def causal_band_mask(
    queries: int, keys: int, query_offset: int, window: int | None, device: torch.device | str
) -> torch.Tensor:
    """Boolean `(1, 1, queries, keys)`: query `i` (at position `query_offset + i`) sees keys `j <= query_offset + i`
    fewer than `window` positions behind (None: all of them); `True` where attention is allowed."""
    query_positions = torch.arange(queries, device=device).unsqueeze(-1) + query_offset
    key_positions = torch.arange(keys, device=device)
    allowed = key_positions <= query_positions
    if window is not None:
        allowed &= query_positions - key_positions < window
    return allowed[None, None]


def _attend_group(original: Callable, module, query, key, value, group: PrefixGroup, mask: Callable, kwargs):
    """One prompt's part of a packed row: causal attention over its prefix, then its segments as a batch of queries
    over `[prefix keys, own keys]`. Returns the outputs of its positions, in row order."""
    outputs = []
    prefix = slice(group.start, group.start + group.prefix_length)
    if group.prefix_length:
        prefix_output, _ = original(
            module,
            query[:, :, prefix],
            key[:, :, prefix],
            value[:, :, prefix],
            mask(group.prefix_length, group.prefix_length, 0),
            **kwargs,
        )
        outputs.append(prefix_output)
    index = group.segment_index
    segments, longest = index.shape
    batch = [states[0][:, index].transpose(0, 1) for states in (query, key, value)]  # (segments, heads, T, dim)
    shared = [states[:, :, prefix].expand(segments, -1, -1, -1) for states in (key, value)]
    segment_output, _ = original(
        module,
        batch[0],
        torch.cat([shared[0], batch[1]], dim=2),
        torch.cat([shared[1], batch[2]], dim=2),
        mask(longest, group.prefix_length + longest, group.prefix_length),
        **kwargs,
    )
    # The segments follow their prefix in row order: their valid tokens, row-major, are the rest of the group
    outputs.append(segment_output.flatten(0, 1).index_select(0, group.valid_index).unsqueeze(0))
    return outputs


def _attend_shared_prefix(
    original: Callable, flash: bool, module, query, key, value, layout: SharedPrefixLayout, kwargs: dict
) -> tuple[torch.Tensor, None]:
    """Attention of one packed row (batch 1), `(1, L, heads, dim)` like transformers' attention functions return."""
    window = kwargs.get("sliding_window")
    if not flash:  # SDPA applies a window only through its mask
        kwargs = {name: value for name, value in kwargs.items() if name != "sliding_window"}

    def mask(queries: int, keys: int, offset: int) -> torch.Tensor | None:
        # flash-attention aligns the causal diagonal bottom-right and takes the window as an argument; SDPA's
        # `is_causal` only serves a square without window
        if flash or (queries == keys and window is None):
            return None
        shape = (queries, keys, offset, window)
        if shape not in layout.masks:
            layout.masks[shape] = causal_band_mask(queries, keys, offset, window, query.device)
        return layout.masks[shape]

    outputs = [
        output
        for group in layout.groups
        for output in _attend_group(original, module, query, key, value, group, mask, kwargs)
    ]
    output = torch.cat(outputs, dim=1)
    padding = query.size(2) - output.size(1)
    if padding:  # a row padded to a multiple of the sequence-parallel size: its padding attends to nothing
        output = torch.nn.functional.pad(output, (0, 0, 0, 0, 0, padding))
    return output, None


def shared_prefix_attention(original: Callable, flash: bool) -> Callable:
    """An attention function that computes packed rows (a call that carries [`SHARED_PREFIX_KWARG`]) with `original`,
    and hands every other call to `original` unchanged."""

    attend_row = functools.partial(_attend_shared_prefix, original, flash)

    def whole_row(module, query, key, value, attention_mask, **kwargs):
        """What Ulysses calls with the row gathered for a share of the heads (`sequence_parallel.py`)."""
        layout = kwargs.pop(SHARED_PREFIX_KWARG)
        kwargs.pop("position_ids", None)
        return attend_row(module, query, key, value, layout, kwargs)

    @functools.wraps(original)
    def attention(module, query, key, value, attention_mask, **kwargs):
        layout = kwargs.pop(SHARED_PREFIX_KWARG, None)
        if layout is None:
            return original(module, query, key, value, attention_mask, **kwargs)
        layout.attention_calls += 1
        if layout.ulysses is not None:  # this rank holds a shard of the row
            return layout.ulysses(whole_row, module, query, key, value, **kwargs, **{SHARED_PREFIX_KWARG: layout})
        # The row's own mask and positions describe the packing, not what `original` should apply
        kwargs.pop("position_ids", None)
        return attend_row(module, query, key, value, layout, kwargs)

    attention.computes_shared_prefix = True
    return attention


def install_shared_prefix_attention(implementation: str | None) -> bool:
    """Wrap the attention function registered under `implementation` with [`shared_prefix_attention`] (once).

    False when the implementation cannot compute packed rows this way (eager attention, whose function is each
    model's own, and anything but SDPA and flash-attention).
    """
    if implementation is None or implementation not in ALL_ATTENTION_FUNCTIONS:
        return False
    flash = is_flash_attention_requested(requested_attention_implementation=implementation)
    if implementation != "sdpa" and not flash:
        return False
    if flash and flash_attn_supports_top_left_mask():  # the segments need the causal diagonal bottom-right
        return False
    current = ALL_ATTENTION_FUNCTIONS[implementation]
    if not getattr(current, "computes_shared_prefix", False):
        ALL_ATTENTION_FUNCTIONS[implementation] = shared_prefix_attention(current, flash)
    return True


def enable_prefix_sharing(config: PretrainedConfig) -> bool:
    """Register the shared-prefix attention for the model's attention implementation (process-wide, once), or warn
    why the long pass cannot share its prompts and return False (it then computes each rollout's long prompt)."""
    implementation = getattr(config, "_attn_implementation", None)
    if not install_shared_prefix_attention(implementation):
        reason = f"SDPA or flash-attention, not {implementation!r}"
    elif layer_attention_windows(config) is None:
        reason = f"full or sliding-window attention layers, not {sorted(set(config.get_text_config().layer_types))}"
    else:
        return True
    logger.warning(f"share_long_prefix needs {reason}: the long pass recomputes each rollout's long prompt.")
    return False
