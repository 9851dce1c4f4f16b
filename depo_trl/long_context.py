"""The long-context pass: chunk planning, packed rows that share a long prompt, and the attention that computes them.

Rollouts of one prompt share its long context. Packed, one long prompt serves several completions in one sequence,
`[prompt[:-1], prompt[-1], c_1, prompt[-1], c_2, ...]`: the prefix `prompt[:-1]` is computed once, and each segment
`prompt[-1], c_j` attends to the prefix and causally to itself, its positions continuing where the prefix ends, so its
log-probabilities are those of the naive `[prompt, c_j]` sequence (the repeated last prompt token makes each segment's
first completion token predicted from the prompt, as in the naive pass).

Several prompts, each with its segments, can share one packed row (a forward of the pass). The model runs it with its
own attention implementation (flash-attention or SDPA), which the [`shared_prefix_attention`] wrapper calls twice per
layer and prompt: causal attention over the prefix, then the segments as a batch of queries over
`[prefix keys, own keys]` with the causal diagonal aligned bottom-right. Nothing of size
`L x L` is built: flash-attention takes both calls as they are, SDPA the first as `is_causal` and the second with a
`(segment, prefix + segment)` mask. Sliding-window layers get the window the model passes for them, in positions.
"""

import functools
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint
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
    """Split rollouts into forwards: `chunks[c][g]` lists the rollouts of group `g` of forward `c`.

    With sharing, a group is one prompt with its rollouts (a prompt whose rollouts do not fit in `token_budget`
    tokens, [`shared_row_tokens`], is split over several groups, each with its own copy of the prompt), and a
    forward is one packed row of groups whose tokens add up to at most the budget. Without, a group is one rollout,
    and a forward batches them while their count times the widest prompt plus the longest completion fits.
    `token_budget` None: no limit. A group that alone exceeds the budget gets a forward of its own.
    """
    budget = token_budget or float("inf")
    if share_prefix:
        prompts: dict[Hashable, list[int]] = {}
        for rollout, key in enumerate(prompt_keys):
            prompts.setdefault(key, []).append(rollout)
        groups = []
        for rollouts in prompts.values():
            group: list[int] = []
            for rollout in rollouts:
                candidate = group + [rollout]
                lengths = [completion_lengths[r] for r in candidate]
                if group and shared_row_tokens(prompt_lengths[rollout], lengths) > budget:
                    groups.append(group)
                    candidate = [rollout]
                group = candidate
            groups.append(group)
    else:
        groups = [[rollout] for rollout in range(len(prompt_keys))]
    chunks: list[list[list[int]]] = []
    for group in groups:
        if chunks and chunk_tokens(chunks[-1] + [group], prompt_lengths, completion_lengths, share_prefix) <= budget:
            chunks[-1].append(group)
        else:
            chunks.append([group])
    return chunks


def one_prompt_budget(
    prompt_keys: Sequence[Hashable],
    prompt_lengths: Sequence[int],
    completion_lengths: Sequence[int],
    share_prefix: bool,
) -> int:
    """Tokens of the largest forward that holds one prompt with all its rollouts: the budget when none is set, so
    that memory follows one prompt, not the whole optimizer window."""
    prompts: dict[Hashable, list[int]] = {}
    for rollout, key in enumerate(prompt_keys):
        prompts.setdefault(key, []).append(rollout)
    forwards = [[rollouts] if share_prefix else [[r] for r in rollouts] for rollouts in prompts.values()]
    return max((chunk_tokens(f, prompt_lengths, completion_lengths, share_prefix) for f in forwards), default=1)


@contextmanager
def checkpointed_forward(module: torch.nn.Module) -> Iterator[None]:
    """While open, `module`'s forward runs under non-reentrant activation checkpointing: its activations are
    recomputed during the backward instead of kept.

    The long pass puts the model's backbone here, not the whole forward: TRL's fused LM head then keeps its saved
    weight the parameter itself (a recomputed one would be a detached copy, without the attributes ZeRO-3's gather
    of the head reads in its backward), and the head saves only the scored positions' hidden states.
    """
    had_own_forward = "forward" in module.__dict__
    original = module.forward
    module.forward = functools.partial(checkpoint, original, use_reentrant=False)
    try:
        yield
    finally:
        if had_own_forward:
            module.forward = original
        else:
            del module.forward


@contextmanager
def without_layer_checkpointing(model: torch.nn.Module) -> Iterator[None]:
    """While open, the model's layers run without their gradient checkpointing (transformers' per-layer flags), and
    keep their activations for the backward; the flags are restored after."""
    checkpointed = [module for module in model.modules() if getattr(module, "gradient_checkpointing", False)]
    for module in checkpointed:
        module.gradient_checkpointing = False
    try:
        yield
    finally:
        for module in checkpointed:
            module.gradient_checkpointing = True


def chunk_tokens(
    chunk: list[list[int]], prompt_lengths: Sequence[int], completion_lengths: Sequence[int], share_prefix: bool
) -> int:
    """Tokens one forward of [`plan_long_pass`] holds: its packed row of groups, or its padded batch of rollouts
    (padded to the longest completion of all, as [`plan_long_pass`] plans them)."""
    if share_prefix:
        return sum(
            shared_row_tokens(prompt_lengths[group[0]], [completion_lengths[r] for r in group]) for group in chunk
        )
    return len(chunk) * (max(prompt_lengths[group[0]] for group in chunk) + max(completion_lengths, default=0))


@dataclass
class PrefixGroup:
    """One prompt in a packed row: its prefix `prompt[:-1]` at row positions `start .. start + prefix_length - 1`,
    then its segments; `segment_index[j, i]` is the row position of token `i` of segment `j` (a padded segment
    repeats its last position) and `valid_index` lists the real tokens of the flattened `(segments x longest)` grid,
    in row order."""

    start: int
    prefix_length: int
    segment_index: torch.Tensor  # (segments, longest segment), long
    valid_index: torch.Tensor  # (group length - prefix length,), long


@dataclass
class SharedPrefixLayout:
    """The groups of a packed row, in row order. Masks built for the row are kept, so each shape is built once per
    row rather than once per layer; `attention_calls` counts the attention layers that computed the row from it."""

    groups: list[PrefixGroup]
    masks: dict = field(default_factory=dict, repr=False)
    attention_calls: int = 0


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
    groups: Sequence[tuple[torch.Tensor, Sequence[tuple[int, torch.Tensor]]]],
    device: torch.device | str | None = None,
) -> SharedPrefixRow:
    """Pack `(prompt_ids, [(rollout, completion_ids), ...])` groups (unpadded 1D ids) into one row, built on
    `device` (default: the first prompt's). Each group's positions start at 0, as in its naive sequences."""
    device = groups[0][0].device if device is None else torch.device(device)
    pieces, labels, positions, layout_groups = [], [], [], []
    rollouts, tokens, scored_positions = [], [], []
    start = 0
    for prompt_ids, completions in groups:
        prompt_ids = prompt_ids.to(device)
        prefix_length = len(prompt_ids) - 1
        pieces.append(prompt_ids[:-1])
        labels.append(prompt_ids.new_full((prefix_length,), -100))
        positions.append(torch.arange(prefix_length))
        segment_starts, segment_lengths = [], []
        cursor = start + prefix_length
        for rollout, completion in completions:
            completion = completion.to(device)
            pieces.append(torch.cat([prompt_ids[-1:], completion]))
            labels.append(torch.cat([completion.new_full((1,), -100), completion]))
            positions.append(torch.arange(prefix_length, prefix_length + 1 + len(completion)))
            rollouts += [rollout] * len(completion)
            tokens += range(len(completion))
            scored_positions += range(cursor + 1, cursor + 1 + len(completion))
            segment_starts.append(cursor)
            segment_lengths.append(1 + len(completion))
            cursor += 1 + len(completion)
        offsets = torch.arange(max(segment_lengths))
        lengths = torch.tensor(segment_lengths).unsqueeze(-1)
        segment_index = torch.tensor(segment_starts).unsqueeze(-1) + torch.minimum(offsets, lengths - 1)
        valid_index = (offsets < lengths).flatten().nonzero().squeeze(-1)
        layout_groups.append(PrefixGroup(start, prefix_length, segment_index.to(device), valid_index.to(device)))
        start = cursor
    return SharedPrefixRow(
        input_ids=torch.cat(pieces).unsqueeze(0),
        position_ids=torch.cat(positions).unsqueeze(0).to(device),
        labels=torch.cat(labels).long().unsqueeze(0),
        layout=SharedPrefixLayout(layout_groups),
        rollout=torch.tensor(rollouts, dtype=torch.long),
        token=torch.tensor(tokens, dtype=torch.long),
        position=torch.tensor(scored_positions, dtype=torch.long, device=device),
    )


def shared_row_log_probs(
    model: torch.nn.Module, packed: SharedPrefixRow, attention_layers: int, **model_kwargs
) -> torch.Tensor:
    """Next-token log-probs `(1, L)` of a packed row, through TRL's fused LM head (no `[L x vocab]` logits).

    The model gets a prepared 4D placeholder mask, which its mask builders return as is: the attention computes the
    row from its layout, so no `L x L` mask (or packed-sequence detection) is made for it. An attention layer that
    does not go through transformers' registered attention function never sees the layout and would attend over the
    placeholder, without the row's causal structure: a model with such a layer is refused before its log-probs are
    used (`attention_layers`: how many layers the model has).
    """
    log_probs = model(
        input_ids=packed.input_ids,
        attention_mask=packed.input_ids.new_ones((1, 1, 1, 1), dtype=torch.bool),
        position_ids=packed.position_ids,
        labels=packed.labels,
        fused_lm_head=True,
        **model_kwargs,
        **{SHARED_PREFIX_KWARG: packed.layout},
    ).log_probs
    if packed.layout.attention_calls != attention_layers:
        raise RuntimeError(
            f"share_long_prefix: {packed.layout.attention_calls} of the model's {attention_layers} attention layers "
            "computed the packed long-context row from its layout; the others bypass transformers' registered "
            "attention function and would attend without the row's causal structure. Set share_long_prefix: false "
            "for this model."
        )
    return log_probs


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
    return torch.cat(outputs, dim=1), None


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
        layout.attention_calls += 1
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
