"""Shared-prefix attention (`depo_trl/distillation/long_pass/attention.py`): on a packed row it computes what
attention over the naive sequences computes, and builds no mask as long as the row."""

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from depo_trl.distillation.long_pass import SHARED_PREFIX_KWARG, pack_row
from depo_trl.distillation.long_pass.attention import causal_band_mask, shared_prefix_attention
from depo_trl.model_utils import load_tokenizer
from depo_trl.models.tiny import build_tiny_qwen2

from ...helpers import accumulated_gradients, generation_batch, make_trainer, uneven_dataset


def reference_attention(query, key, value, allowed):
    """Softmax attention with a dense boolean mask, written out: the definition the shared pass must reproduce."""
    scores = query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5
    return (scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ value).transpose(1, 2)


def packed_row_mask(row, window):
    """The naive pass's visibility, written per token pair: same segment (or the prefix) and causal in positions."""
    length = row.input_ids.shape[1]
    prompt, segment = torch.zeros(length, dtype=torch.long), torch.zeros(length, dtype=torch.long)
    for group in row.layout.groups:
        prompt[group.start :] = group.start
        for index in group.segment_index:
            segment[index] = index[0]  # named by its first position (0: a prefix); padding repeats its own last
    positions = row.position_ids[0]
    allowed = torch.zeros(length, length, dtype=torch.bool)
    for q in range(length):
        for k in range(q + 1):
            visible = prompt[k] == prompt[q] and (segment[k] == 0 or segment[k] == segment[q])
            in_window = window is None or positions[q] - positions[k] < window
            allowed[q, k] = visible and in_window
    return allowed


class Module(torch.nn.Module):
    is_causal = True


def bottom_right_flash(module, query, key, value, attention_mask, sliding_window=None, **kwargs):
    """Stands in for flash-attention on a CPU: causal aligned bottom-right, window as an argument, no mask."""
    assert attention_mask is None
    offset = key.shape[2] - query.shape[2]
    return reference_attention(
        query, key, value, causal_band_mask(query.shape[2], key.shape[2], offset, sliding_window, "cpu")
    ), None


@pytest.mark.parametrize("window", [None, 3, 7])
@pytest.mark.parametrize("implementation", ["sdpa", "flash"])
def test_shared_prefix_attention_equals_attention_over_the_naive_sequences(window, implementation):
    torch.manual_seed(0)
    groups = [
        (torch.arange(100, 109), [(0, torch.arange(5)), (1, torch.arange(2)), (2, torch.arange(4))]),
        (torch.arange(50, 56), [(3, torch.arange(3)), (4, torch.arange(6))]),
    ]
    row = pack_row(groups)
    length = row.input_ids.shape[1]
    query, key, value = (torch.randn(1, 2, length, 8) for _ in range(3))
    if implementation == "sdpa":
        original, flash = ALL_ATTENTION_FUNCTIONS["sdpa"], False
    else:
        original, flash = bottom_right_flash, True
    attention = shared_prefix_attention(original, flash)
    output, _ = attention(
        Module(), query, key, value, None, sliding_window=window, **{SHARED_PREFIX_KWARG: row.layout}
    )
    expected = reference_attention(query, key, value, packed_row_mask(row, window))
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    # Without a layout the call is the original's, untouched
    plain, _ = attention(Module(), query, key, value, None)
    torch.testing.assert_close(plain, original(Module(), query, key, value, None)[0])


def test_the_default_long_pass_builds_no_mask_as_long_as_the_row(tiny_model_dir, tmp_path, monkeypatch):
    """SDPA sees the prefix as `is_causal` (no mask) and the segments with a `(segment, prefix + segment)` mask: no
    square mask, so nothing of size L x L, is built for a packed row."""
    dataset = uneven_dataset()
    trainer = make_trainer(tiny_model_dir, dataset, tmp_path, distillation="iw", per_device_train_batch_size=8)
    assert trainer.model.config._attn_implementation == "sdpa" and trainer.long_pass.share_prefix
    batch = generation_batch(trainer, dataset, num_prompts=2)
    calls, in_long_pass = [], []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(query, key, value, attn_mask=None, **kwargs):
        if in_long_pass:
            calls.append((query.shape[-2], key.shape[-2], None if attn_mask is None else tuple(attn_mask.shape[-2:])))
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    run = trainer.long_pass.run

    def recording_long_pass(*args, **kwargs):
        in_long_pass.append(True)
        try:
            return run(*args, **kwargs)
        finally:
            in_long_pass.clear()

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    monkeypatch.setattr(trainer.long_pass, "run", recording_long_pass)
    accumulated_gradients(trainer, [batch])
    prefix_calls = [call for call in calls if call[2] is None]
    segment_calls = [call for call in calls if call[2] is not None]
    assert prefix_calls and all(queries == keys for queries, keys, _ in prefix_calls)
    assert segment_calls and all(mask == (queries, keys) and queries < keys for queries, keys, mask in segment_calls)
    longest_row = max(len(ids) for ids in batch["distillation"][0].rollouts.long_prompt_ids)
    assert all(queries < longest_row // 4 for queries, _, _ in segment_calls)


def test_sliding_window_layers_on_sdpa_share_one_band_mask_per_row(tiny_model_dir, tmp_path, monkeypatch):
    """SDPA applies a window only through a mask: the prefix's band mask is built once per packed row and shared by
    every sliding layer, and the model builds no mask of its own for the row."""
    tokenizer = load_tokenizer(tiny_model_dir)
    model = build_tiny_qwen2(tokenizer, hidden_size=32, num_hidden_layers=3)
    config = model.config
    config.use_sliding_window, config.sliding_window, config.max_window_layers = True, 4, 0
    config.layer_types = ["sliding_attention"] * 3
    model = type(model)(config)
    model.config._attn_implementation = "sdpa"
    dataset = uneven_dataset()
    trainer = make_trainer(
        tiny_model_dir, dataset, tmp_path, model=model, distillation="iw", per_device_train_batch_size=8
    )
    batch = generation_batch(trainer, dataset, num_prompts=2)
    square_masks = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(query, key, value, attn_mask=None, **kwargs):
        if attn_mask is not None and attn_mask.shape[-2] == attn_mask.shape[-1] and attn_mask.shape[-1] > 1:
            square_masks.append((query.shape[-2], attn_mask))
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    run = trainer.long_pass.run

    def recording_long_pass(*args, **kwargs):
        square_masks.clear()
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
        try:
            return run(*args, **kwargs)
        finally:
            monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa)

    monkeypatch.setattr(trainer.long_pass, "run", recording_long_pass)
    accumulated_gradients(trainer, [batch])
    prefix_lengths = {len(ids) - 1 for ids in batch["distillation"][0].rollouts.long_prompt_ids}
    assert {queries for queries, _ in square_masks} == prefix_lengths  # only the prefixes', none as long as a row
    assert len(square_masks) == 3 * len(prefix_lengths)  # three sliding layers, one row per prompt
    assert len({id(mask) for _, mask in square_masks}) == len(prefix_lengths)  # built once per row
