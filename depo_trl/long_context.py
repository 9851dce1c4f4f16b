"""Planning and packing of the long-context pass (pure tensor code, no trainer state).

Rollouts of the same prompt share its long context. Packed, one long prompt serves several completions in one
sequence: `[prompt[:-1], prompt[-1], c_1, prompt[-1], c_2, ...]`, where each `prompt[-1], c_j` segment sees the prompt
and itself only (a 4D attention mask) and restarts its positions where the prompt ends. The prompt is computed once,
and the log-probabilities are those of the naive `[prompt, c_j]` sequences (the repeated last prompt token makes each
segment's first completion token predicted from the prompt, as in the naive pass). Sliding-window layers see the
same window as in the naive pass: it is measured in positions, which the packed rows keep.
"""

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig


def layer_attention_windows(config: PretrainedConfig) -> dict[str, int | None] | None:
    """The attention window of each layer type of a model (None: full causal attention), keyed like transformers'
    per-layer-type masks; None when a layer type is one the packed pass cannot reproduce (e.g. chunked attention).

    Models without `layer_types` (Mistral, Mixtral, Phi-3, ...) apply `sliding_window`, if set, to every layer.
    """
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


def plan_long_pass(
    prompt_keys: Sequence[Hashable], max_rollouts_per_chunk: int | None, share_prefix: bool
) -> list[list[list[int]]]:
    """Split rollouts into chunks of packed rows: `chunks[c][r]` lists the rollouts of row `r` of chunk `c`.

    Without sharing every rollout is its own row. With sharing, rollouts with the same prompt key share a row, split so
    that no chunk holds more than `max_rollouts_per_chunk` rollouts (None: one chunk).
    """
    limit = max_rollouts_per_chunk or len(prompt_keys) or 1
    if share_prefix:
        groups: dict[Hashable, list[int]] = {}
        for rollout, key in enumerate(prompt_keys):
            groups.setdefault(key, []).append(rollout)
        rows = [group[start : start + limit] for group in groups.values() for start in range(0, len(group), limit)]
    else:
        rows = [[rollout] for rollout in range(len(prompt_keys))]
    chunks: list[list[list[int]]] = []
    size = limit
    for row in rows:
        if size + len(row) > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(row)
        size += len(row)
    return chunks


@dataclass
class PackedRows:
    """Model inputs for packed rows, and where each scored token's log-prob lands: for the k-th scored token,
    `log_probs[row[k], position[k] - 1]` is the log-prob of completion token `token[k]` of rollout `rollout[k]`."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | dict[str, torch.Tensor]
    labels: torch.Tensor
    rollout: torch.Tensor
    token: torch.Tensor
    row: torch.Tensor
    position: torch.Tensor


def _causal_band(size: int, window: int | None) -> torch.Tensor:
    """`(size, size)` boolean: causal attention, limited to keys fewer than `window` positions behind (None: all)."""
    allowed = torch.ones(size, size, dtype=torch.bool).tril()
    if window is not None:
        allowed &= ~torch.ones(size, size, dtype=torch.bool).tril(-window)
    return allowed


def pack_rows(
    rows: Sequence[tuple[torch.Tensor, Sequence[tuple[int, torch.Tensor]]]],
    pad_token_id: int,
    windows: Mapping[str, int | None] | None = None,
    mask_dtype: torch.dtype = torch.float32,
) -> PackedRows:
    """Pack `(prompt_ids, [(rollout, completion_ids), ...])` rows (unpadded 1D tensors) into a padded batch.

    The attention mask is `(R, 1, L, L)`: boolean (True where attention is allowed) when `mask_dtype` is `torch.bool`,
    else additive (0 where allowed, the dtype's minimum elsewhere). Padding positions attend to themselves only, so
    no softmax row is empty. `windows` (from [`layer_attention_windows`]; default: full attention only) gives one mask
    per layer type, a sliding window keeping keys fewer than `window` positions behind the query; with one layer type
    the mask is a tensor, with several a dict keyed by layer type.
    """
    windows = dict(windows or {"full_attention": None})
    sequences, positions, labels, index = [], [], [], []
    allowed: dict[str, list[torch.Tensor]] = {layer_type: [] for layer_type in windows}
    for row_number, (prompt_ids, completions) in enumerate(rows):
        prefix = prompt_ids[:-1]
        length = len(prefix) + sum(1 + len(completion) for _, completion in completions)
        row_allowed = {layer_type: torch.zeros(length, length, dtype=torch.bool) for layer_type in windows}
        for layer_type, window in windows.items():
            row_allowed[layer_type][: len(prefix), : len(prefix)] = _causal_band(len(prefix), window)
        pieces, piece_positions = [prefix], [torch.arange(len(prefix))]
        row_labels = torch.full((length,), -100, dtype=torch.long)
        start = len(prefix)
        for rollout, completion in completions:
            segment = torch.cat([prompt_ids[-1:], completion])
            end = start + len(segment)
            segment_positions = torch.arange(len(prefix), len(prefix) + len(segment))
            for layer_type, window in windows.items():
                # The segment sees the prompt prefix (within the window) and itself causally
                sees_prefix = True
                if window is not None:
                    sees_prefix = torch.arange(len(prefix)) > segment_positions.unsqueeze(-1) - window
                row_allowed[layer_type][start:end, : len(prefix)] = sees_prefix
                row_allowed[layer_type][start:end, start:end] = _causal_band(len(segment), window)
            row_labels[start + 1 : end] = completion
            pieces.append(segment)
            piece_positions.append(segment_positions)
            index += [(rollout, token, row_number, start + 1 + token) for token in range(len(completion))]
            start = end
        sequences.append(torch.cat(pieces))
        positions.append(torch.cat(piece_positions))
        labels.append(row_labels)
        for layer_type in windows:
            allowed[layer_type].append(row_allowed[layer_type])
    width = max(len(sequence) for sequence in sequences)
    batch = len(rows)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((batch, width), dtype=torch.long)
    padded_labels = torch.full((batch, width), -100, dtype=torch.long)
    for row_number, (sequence, position, row_labels) in enumerate(zip(sequences, positions, labels)):
        size = len(sequence)
        input_ids[row_number, :size] = sequence
        position_ids[row_number, :size] = position
        padded_labels[row_number, :size] = row_labels
    masks = {}
    for layer_type, row_masks in allowed.items():
        mask = torch.eye(width, dtype=torch.bool).repeat(batch, 1, 1)
        for row_number, row_mask in enumerate(row_masks):
            mask[row_number, : len(row_mask), : len(row_mask)] = row_mask
        if mask_dtype != torch.bool:
            mask = torch.zeros(mask.shape, dtype=mask_dtype).masked_fill(~mask, torch.finfo(mask_dtype).min)
        masks[layer_type] = mask.unsqueeze(1)
    mask = next(iter(masks.values())) if len(masks) == 1 else masks
    rollout, token, row, position = (torch.tensor(column, dtype=torch.long) for column in zip(*index or [(0,) * 4]))
    if not index:  # only empty completions: nothing is scored
        rollout, token, row, position = (column[:0] for column in (rollout, token, row, position))
    return PackedRows(input_ids, position_ids, mask, padded_labels, rollout, token, row, position)
