"""Packed rows: the rollouts of one long prompt in one sequence, so the prompt is computed once.

`[prompt[:-1], prompt[-1], c_1, prompt[-1], c_2, ...]`: the prefix `prompt[:-1]` is computed once, and each segment
`prompt[-1], c_j` attends to the prefix and causally to itself, its positions continuing where the prefix ends, so its
log-probabilities are those of the naive `[prompt, c_j]` sequence (the repeated last prompt token makes each segment's
first completion token predicted from the prompt, as in the naive pass). Several groups (a prompt with its segments)
can share one row, each with its positions from 0. The row's layout travels to every attention layer as the
[`SHARED_PREFIX_KWARG`] keyword, where `attention.py` computes it.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from transformers import PretrainedConfig


if TYPE_CHECKING:
    from .sequence_parallel import SequenceParallelGroup


# Keyword argument that carries a row's layout from the model call down to every attention layer
SHARED_PREFIX_KWARG = "shared_prefix_layout"


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
    row rather than once per layer; `attention_calls` counts the attention layers that computed the row from it.
    `ulysses`: set when this rank holds a shard of the row, the sequence-parallel exchange around its attention
    (`sequence_parallel.UlyssesAttention`)."""

    groups: list[PrefixGroup]
    masks: dict = field(default_factory=dict, repr=False)
    attention_calls: int = 0
    ulysses: Callable | None = field(default=None, repr=False)


@dataclass
class PackedRow:
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


def pack_row(
    groups: Sequence[tuple[torch.Tensor, Sequence[tuple[int, torch.Tensor]]]],
    device: torch.device | str | None = None,
) -> PackedRow:
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
    return PackedRow(
        input_ids=torch.cat(pieces).unsqueeze(0),
        position_ids=torch.cat(positions).unsqueeze(0).to(device),
        labels=torch.cat(labels).long().unsqueeze(0),
        layout=SharedPrefixLayout(layout_groups),
        rollout=torch.tensor(rollouts, dtype=torch.long),
        token=torch.tensor(tokens, dtype=torch.long),
        position=torch.tensor(scored_positions, dtype=torch.long, device=device),
    )


def self_attention_layers(config: PretrainedConfig) -> int:
    """The layers of a text-only forward that attend over the row itself: every decoder layer but cross-attention ones
    (Mllama's, which a forward without images skips)."""
    text = config.get_text_config()
    return text.num_hidden_layers - len(getattr(text, "cross_attention_layers", None) or [])


def packed_row_log_probs(
    model: torch.nn.Module,
    packed: PackedRow,
    attention_layers: int,
    sequence_parallel: "SequenceParallelGroup | None" = None,
    **model_kwargs,
) -> torch.Tensor:
    """Next-token log-probs `(1, L)` of a packed row, through TRL's fused LM head (no `[L x vocab]` logits): the
    log-prob at position `p` is that of the token at `p + 1`.

    With `sequence_parallel`, this rank computes its shard of the row (whose layout carries the group's exchange) and
    the group's shards are gathered, differentiably, into the row's (padded to a multiple of the group's size). The
    labels are shifted before the row is cut, so a shard's last position is scored against the next shard's first
    token.

    The model gets a prepared 4D placeholder mask, which its mask builders return as is: the attention computes the
    row from its layout, so no `L x L` mask (or packed-sequence detection) is made for it. An attention layer that
    does not go through transformers' registered attention function never sees the layout and would attend over the
    placeholder, without the row's causal structure: a model with such a layer is refused before its log-probs are
    used (`attention_layers`: how many layers attend over the row, [`self_attention_layers`]).
    """
    shift_labels = torch.nn.functional.pad(packed.labels[:, 1:], (0, 1), value=-100).to(packed.input_ids.device)
    inputs = {"input_ids": packed.input_ids, "position_ids": packed.position_ids, "shift_labels": shift_labels}
    if sequence_parallel is not None:
        pad_with = {"input_ids": 0, "position_ids": 0, "shift_labels": -100}
        inputs = {name: sequence_parallel.shard(tensor, pad_with[name]) for name, tensor in inputs.items()}
    log_probs = model(
        **inputs,
        attention_mask=packed.input_ids.new_ones((1, 1, 1, 1), dtype=torch.bool),
        fused_lm_head=True,
        **model_kwargs,
        **{SHARED_PREFIX_KWARG: packed.layout},
    ).log_probs
    if sequence_parallel is not None:
        log_probs = sequence_parallel.gather_sequence(log_probs)
    if packed.layout.attention_calls != attention_layers:
        raise RuntimeError(
            f"share_long_prefix: {packed.layout.attention_calls} of the model's {attention_layers} attention layers "
            "computed the packed long-context row from its layout; the others bypass transformers' registered "
            "attention function and would attend without the row's causal structure. Set share_long_prefix: false "
            "for this model."
        )
    return log_probs
