"""The long-context pass: chunk planning, packed rows that share a long prompt, and the attention that computes them.

Rollouts of one prompt share its long context. Packed, one long prompt serves several completions in one sequence,
`[prompt[:-1], prompt[-1], c_1, prompt[-1], c_2, ...]`: the prefix `prompt[:-1]` is computed once, and each segment
`prompt[-1], c_j` attends to the prefix and causally to itself, its positions continuing where the prefix ends, so its
log-probabilities are those of the naive `[prompt, c_j]` sequence (the repeated last prompt token makes each segment's
first completion token predicted from the prompt, as in the naive pass).

The model runs the packed row with its own attention implementation (flash-attention or SDPA), which the
[`shared_prefix_attention`] wrapper calls twice per layer: causal attention over the prefix, then the segments as a
batch of queries over `[prefix keys, own keys]` with the causal diagonal aligned bottom-right. Nothing of size
`L x L` is built: flash-attention takes both calls as they are, SDPA the first as `is_causal` and the second with a
`(segment, prefix + segment)` mask. Sliding-window layers get the window the model passes for them, in positions.
"""

import functools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PretrainedConfig
from transformers.modeling_flash_attention_utils import flash_attn_supports_top_left_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.generic import is_flash_attention_requested


# Keyword argument that carries a row's layout from the model call down to every attention layer
SHARED_PREFIX_KWARG = "shared_prefix_layout"


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


def shared_row_tokens(prompt_length: int, completion_lengths: Sequence[int]) -> int:
    """Length of a packed row: the prompt once, and each completion after its own copy of the last prompt token."""
    return prompt_length + sum(completion_lengths) + len(completion_lengths) - 1


def plan_long_pass(
    prompt_keys: Sequence[Hashable],
    prompt_lengths: Sequence[int],
    completion_lengths: Sequence[int],
    token_budget: int | None,
    share_prefix: bool,
) -> list[list[list[int]]]:
    """Split rollouts into forwards: `chunks[c][r]` lists the rollouts of row `r` of forward `c`.

    With sharing, a forward is one packed row: one prompt with its rollouts, or, for a prompt whose rollouts do not
    fit in `token_budget` tokens ([`shared_row_tokens`]), with as many of them as fit (the others go to further rows,
    each with its own copy of the prompt). Without, a row is one rollout, and a forward batches rows while their
    count times the widest prompt plus the longest completion fits. `token_budget` None: no limit. A row that alone
    exceeds the budget gets a forward of its own.
    """
    budget = token_budget or float("inf")
    if not share_prefix:
        width = max(completion_lengths, default=0)
        chunks: list[list[list[int]]] = []
        for rollout in range(len(prompt_keys)):
            batch = (chunks[-1] if chunks else []) + [[rollout]]
            if chunks and len(batch) * (max(prompt_lengths[r[0]] for r in batch) + width) <= budget:
                chunks[-1] = batch
            else:
                chunks.append([[rollout]])
        return chunks
    groups: dict[Hashable, list[int]] = {}
    for rollout, key in enumerate(prompt_keys):
        groups.setdefault(key, []).append(rollout)
    rows: list[list[int]] = []
    for group in groups.values():
        row: list[int] = []
        for rollout in group:
            candidate = row + [rollout]
            if row and shared_row_tokens(prompt_lengths[rollout], [completion_lengths[r] for r in candidate]) > budget:
                rows.append(row)
                candidate = [rollout]
            row = candidate
        rows.append(row)
    return [[row] for row in rows]


def chunk_tokens(
    chunk: list[list[int]], prompt_lengths: Sequence[int], completion_lengths: Sequence[int], share_prefix: bool
) -> int:
    """Tokens one forward of [`plan_long_pass`] holds: its packed row, or its padded batch of naive rows."""
    if share_prefix:
        return sum(shared_row_tokens(prompt_lengths[row[0]], [completion_lengths[r] for r in row]) for row in chunk)
    return len(chunk) * (max(prompt_lengths[row[0]] for row in chunk) + max(completion_lengths, default=0))


@dataclass
class SharedPrefixLayout:
    """Where the segments of a packed row are: `segment_index[j, i]` is the row position of token `i` of segment `j`
    (padded segments repeat their last position); `valid_index` lists the real tokens of the flattened
    `(segments x longest)` grid in row order. Masks built for the row are kept, so each shape is built once per row
    rather than once per layer."""

    prefix_length: int
    segment_index: torch.Tensor  # (segments, longest segment), long
    valid_index: torch.Tensor  # (row length - prefix length,), long
    masks: dict = field(default_factory=dict, repr=False)


@dataclass
class SharedPrefixRow:
    """Model inputs of one packed row (on the device it was packed for), and where each scored token's log-prob
    lands: the `k`-th scored token is completion token `token[k]` of rollout `rollout[k]` (both on the CPU), predicted
    at row position `position[k] - 1`."""

    input_ids: torch.Tensor  # (1, L)
    position_ids: torch.Tensor  # (1, L)
    labels: torch.Tensor  # (1, L), -100 where nothing is scored
    layout: SharedPrefixLayout
    rollout: torch.Tensor
    token: torch.Tensor
    position: torch.Tensor


def pack_shared_row(
    prompt_ids: torch.Tensor, completions: Sequence[tuple[int, torch.Tensor]], device: torch.device | str | None = None
) -> SharedPrefixRow:
    """Pack one prompt (unpadded 1D ids) and `(rollout, completion_ids)` pairs (unpadded) into a shared row, built
    on `device` (default: the prompt's)."""
    device = prompt_ids.device if device is None else torch.device(device)
    prompt_ids = prompt_ids.to(device)
    prefix_length = len(prompt_ids) - 1
    pieces, labels = [prompt_ids[:-1]], [prompt_ids.new_full((prefix_length,), -100)]
    starts, lengths, rollouts, tokens, positions = [], [], [], [], []
    start = prefix_length
    for rollout, completion in completions:
        completion = completion.to(device)
        pieces.append(torch.cat([prompt_ids[-1:], completion]))
        labels.append(torch.cat([completion.new_full((1,), -100), completion]))
        rollouts += [rollout] * len(completion)
        tokens += range(len(completion))
        positions += range(start + 1, start + 1 + len(completion))
        starts.append(start)
        lengths.append(1 + len(completion))
        start += 1 + len(completion)
    longest = max(lengths)
    offsets = torch.arange(longest)
    lengths_tensor = torch.tensor(lengths).unsqueeze(-1)
    segment_index = torch.tensor(starts).unsqueeze(-1) + torch.minimum(offsets, lengths_tensor - 1)
    valid_index = (offsets < lengths_tensor).flatten().nonzero().squeeze(-1)
    row_positions = [torch.arange(prefix_length)] + [torch.arange(prefix_length, prefix_length + n) for n in lengths]
    return SharedPrefixRow(
        input_ids=torch.cat(pieces).unsqueeze(0),
        position_ids=torch.cat(row_positions).unsqueeze(0).to(device),
        labels=torch.cat(labels).long().unsqueeze(0),
        layout=SharedPrefixLayout(prefix_length, segment_index.to(device), valid_index.to(device)),
        rollout=torch.tensor(rollouts, dtype=torch.long),
        token=torch.tensor(tokens, dtype=torch.long),
        position=torch.tensor(positions, dtype=torch.long, device=device),
    )


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


def _attend_shared_prefix(
    original: Callable, flash: bool, module, query, key, value, layout: SharedPrefixLayout, kwargs: dict
) -> tuple[torch.Tensor, None]:
    """Attention of one packed row (batch 1), `(1, L, heads, dim)` like transformers' attention functions return."""
    prefix_length = layout.prefix_length
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

    prefix = slice(0, prefix_length)
    if prefix_length:
        prefix_output, _ = original(
            module,
            query[:, :, prefix],
            key[:, :, prefix],
            value[:, :, prefix],
            mask(prefix_length, prefix_length, 0),
            **kwargs,
        )
    else:  # a one-token prompt: nothing before the segments
        prefix_output = query.new_zeros((1, 0, query.shape[1], value.shape[-1]))
    index = layout.segment_index
    segments, longest = index.shape

    def segment_batch(states: torch.Tensor) -> torch.Tensor:  # (1, heads, L, dim) -> (segments, heads, longest, dim)
        return states[0][:, index].transpose(0, 1)

    def with_prefix(states: torch.Tensor) -> torch.Tensor:
        shared = states[:, :, prefix].expand(segments, -1, -1, -1)
        return torch.cat([shared, segment_batch(states)], dim=2)

    segment_output, _ = original(
        module,
        segment_batch(query),
        with_prefix(key),
        with_prefix(value),
        mask(longest, prefix_length + longest, prefix_length),
        **kwargs,
    )
    # Segments follow the prefix in row order, so their valid tokens, row-major, are positions prefix_length .. L - 1
    segment_output = segment_output.flatten(0, 1).index_select(0, layout.valid_index)
    return torch.cat([prefix_output, segment_output.unsqueeze(0)], dim=1), None


def shared_prefix_attention(original: Callable, flash: bool) -> Callable:
    """An attention function that computes packed rows (a call that carries [`SHARED_PREFIX_KWARG`]) with `original`,
    and hands every other call to `original` unchanged."""

    @functools.wraps(original)
    def attention(module, query, key, value, attention_mask, **kwargs):
        layout = kwargs.pop(SHARED_PREFIX_KWARG, None)
        if layout is None:
            return original(module, query, key, value, attention_mask, **kwargs)
        # The row's own mask and positions describe the packing, not what `original` should apply
        kwargs.pop("position_ids", None)
        return _attend_shared_prefix(original, flash, module, query, key, value, layout, kwargs)

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
