"""The long-context pass at bounded cost: shared long prompts and forwards give the naive pass's gradients."""

import functools
import random

import pytest
import torch
from datasets import Dataset
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from depo_trl.distillation import PassPlan
from depo_trl.distillation.long_pass import (
    SHARED_PREFIX_KWARG,
    pack_row,
    packed_row_tokens,
    runner,
    uses_layer_checkpointing,
)
from depo_trl.distillation.long_pass.attention import causal_band_mask, shared_prefix_attention
from depo_trl.distillation.long_pass.checkpointing import without_layer_checkpointing
from depo_trl.distillation.long_pass.plan import forward_tokens, one_prompt_forward_tokens, plan_forwards
from depo_trl.losses import distillation_mask
from depo_trl.model_utils import load_tokenizer
from depo_trl.models.tiny import build_tiny_qwen2

from .helpers import accumulated_gradients, enable_layer_checkpointing, generation_batch, make_rows, make_trainer


KEYS = ["a", "b", "a", "a", "c", "b"]
PROMPT_LENGTHS = [10, 20, 10, 10, 5, 20]
COMPLETION_LENGTHS = [3, 4, 2, 5, 1, 6]


def test_plan_by_hand():
    plan = functools.partial(plan_forwards, KEYS, PROMPT_LENGTHS, COMPLETION_LENGTHS)
    assert plan(None, share_prefix=False) == [[[0], [1], [2], [3], [4], [5]]]
    # Shared: a forward is one packed row of prompt groups, here all three
    assert plan(None, share_prefix=True) == [[[0, 2, 3], [1, 5], [4]]]
    # Shared, 18 tokens: prompt a takes rollouts 0 and 2 (10 + 3 + 2 + 1 = 16), then 3 alone (15); each of b's
    # rollouts alone is over the budget (24, 26) and gets its own forward; c's (6) does not fit beside b's
    assert plan(18, share_prefix=True) == [[[0, 2]], [[3]], [[1]], [[5]], [[4]]]
    # Shared, 40 tokens: a's group (10 + 10 + 2 = 22), then b's (20 + 10 + 1 = 31) with c's (6) in the next row
    assert plan(40, share_prefix=True) == [[[0, 2, 3]], [[1, 5], [4]]]
    # Naive, 40 tokens: rows are padded to the widest prompt plus the longest completion (6)
    assert plan(40, share_prefix=False) == [[[0]], [[1]], [[2], [3]], [[4]], [[5]]]
    assert packed_row_tokens(10, [3, 2]) == 16


def test_one_prompt_forward_tokens_for_devices_without_a_memory_reading():
    # Shared rows: a = 10 + (3 + 2 + 5) + 2 = 22, b = 20 + (4 + 6) + 1 = 31, c = 5 + 1 = 6; the largest is b's
    assert one_prompt_forward_tokens(KEYS, PROMPT_LENGTHS, COMPLETION_LENGTHS, share_prefix=True) == 31
    plan = plan_forwards(KEYS, PROMPT_LENGTHS, COMPLETION_LENGTHS, 31, share_prefix=True)
    assert plan == [[[0, 2, 3]], [[1, 5]], [[4]]]  # one prompt per forward, not the whole window in one
    # Padded batches of one prompt's rollouts, to the longest completion (6): a = 3 x 16, b = 2 x 26, c = 1 x 26
    assert one_prompt_forward_tokens(KEYS, PROMPT_LENGTHS, COMPLETION_LENGTHS, share_prefix=False) == 52


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("budget", [12, 30, 64, 200])
def test_plan_respects_the_token_budget_and_keeps_every_rollout_once(share_prefix, budget):
    rng = random.Random(budget)
    keys = [rng.choice("abcdef") for _ in range(40)]
    prompt_length = {key: rng.randint(5, 40) for key in "abcdef"}
    prompts = [prompt_length[key] for key in keys]
    completions = [rng.randint(0, 12) for _ in keys]
    forwards = plan_forwards(keys, prompts, completions, budget, share_prefix)
    assert sorted(r for forward in forwards for row in forward for r in row) == list(range(len(keys)))
    width = max(completions)
    for forward in forwards:
        if share_prefix:  # one forward, one packed row of groups, each of one prompt
            assert all(len({keys[r] for r in group}) == 1 for group in forward)
            cost = sum(packed_row_tokens(prompts[group[0]], [completions[r] for r in group]) for group in forward)
            alone = packed_row_tokens(prompts[forward[0][0]], [completions[forward[0][0]]])
        else:
            assert all(len(row) == 1 for row in forward)
            cost = len(forward) * (max(prompts[row[0]] for row in forward) + width)
            alone = prompts[forward[0][0]] + width
        assert cost == forward_tokens(forward, prompts, completions, share_prefix)
        assert cost <= budget or (len(forward) == 1 and len(forward[0]) == 1 and alone > budget)


def test_shared_row_by_hand():
    first = (torch.tensor([7, 8, 9]), [(0, torch.tensor([1, 2])), (3, torch.tensor([5]))])
    second = (torch.tensor([6, 4]), [(1, torch.tensor([8]))])
    row = pack_row([first, second])
    # [7, 8 | 9, 1, 2 | 9, 5 || 6 | 4, 8]: the last prompt token opens each segment, whose positions continue its
    # prompt's prefix; the second prompt's positions start again at 0
    assert row.input_ids.tolist() == [[7, 8, 9, 1, 2, 9, 5, 6, 4, 8]]
    assert row.position_ids.tolist() == [[0, 1, 2, 3, 4, 2, 3, 0, 1, 2]]
    assert row.labels.tolist() == [[-100, -100, -100, 1, 2, -100, 5, -100, -100, 8]]
    first_group, second_group = row.layout.groups
    assert (first_group.start, first_group.prefix_length) == (0, 2)
    assert first_group.segment_index.tolist() == [[2, 3, 4], [5, 6, 6]]
    assert first_group.valid_index.tolist() == [0, 1, 2, 3, 4]  # of the flattened (2 x 3) grid: not the padding
    assert (second_group.start, second_group.prefix_length) == (7, 1)
    assert second_group.segment_index.tolist() == [[8, 9]]
    scored = list(zip(row.rollout.tolist(), row.token.tolist(), row.position.tolist()))
    assert scored == [(0, 0, 3), (0, 1, 4), (3, 0, 6), (1, 0, 9)]


def test_shared_row_is_built_on_the_device_of_its_inputs():
    """Completions live on the accelerator in training: the row is packed there, with no host tensor mixed in
    (the meta device stands in for a GPU)."""
    prompt = torch.arange(100, 109, device="meta")
    row = pack_row([(prompt, [(0, torch.arange(4, device="meta")), (1, torch.arange(2, device="meta"))])])
    for tensor in (row.input_ids, row.position_ids, row.labels, row.position, row.layout.groups[0].segment_index):
        assert tensor.device.type == "meta"
    assert row.input_ids.shape == (1, 8 + 5 + 3)
    assert row.rollout.device.type == "cpu" and row.token.device.type == "cpu"  # bookkeeping stays on the host


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


def uneven_dataset() -> Dataset:
    """Long prompts of different lengths (left padding in the naive pass)."""
    rows = make_rows(num_rows=4, num_distractors=3) + make_rows(num_rows=4, num_distractors=9, seed=1)
    return Dataset.from_list([rows[i] for i in (0, 4, 1, 5, 2, 6, 3, 7)])


def shorten_completions(batch, lengths):
    """Completions of different lengths (right padding), as if some had stopped early."""
    batch["completion_mask"] = batch["completion_mask"].clone()
    for row, length in enumerate(lengths):
        batch["completion_mask"][row, length:] = 0
    term = batch["distillation"][0]
    term.rollouts.completion_mask = term.rollouts.loss_mask = batch["completion_mask"]
    counted = batch["completion_mask"]
    if term.name == "kd":
        counted = distillation_mask(counted, term.rewards, term.threshold)
    term.tokens_in_batch = counted.sum().float()
    batch["num_items_in_batch"] = batch["completion_mask"].sum()


# A share of the free memory too small for anything: the long pass recomputes every forward but the last
NO_MEMORY = {"distillation_memory_fraction": 1e-12}


@pytest.mark.parametrize(("distillation", "level"), [("kd", "token"), ("iw", "token"), ("iw", "sequence")])
@pytest.mark.parametrize(
    "variant",
    [
        {"share_long_prefix": True},
        {"share_long_prefix": False, "distillation_forward_tokens": 200, **NO_MEMORY},
        {"share_long_prefix": True, "distillation_forward_tokens": 60},
        {"share_long_prefix": True, "distillation_forward_tokens": 60, **NO_MEMORY},
        {"share_long_prefix": True, "layer_checkpointing": True},
        {"share_long_prefix": True, "layer_checkpointing": True, "plan": "held"},
        {"share_long_prefix": True, "distillation_forward_tokens": 60, "layer_checkpointing": True, "plan": "held"},
        {"share_long_prefix": True, "distillation_forward_tokens": 60, "layer_checkpointing": True, **NO_MEMORY},
    ],
    ids=[
        "shared",
        "naive-recomputed",
        "shared+split-held",
        "shared+split-recomputed",
        "shared+checkpointing-off",
        "shared+checkpointing-held",
        "shared+split+checkpointing-held",
        "shared+split+checkpointing-recomputed",
    ],
)
def test_shared_and_split_long_pass_match_the_naive_gradient(
    tiny_model_dir, tmp_path, monkeypatch, distillation, level, variant
):
    """Prompt-side padding (two long-prompt lengths) and completion-side padding (completions cut short); forwards
    held for the backward or recomputed in it; the model's layers checkpointed as `Trainer.train()` does it."""
    dataset = uneven_dataset()
    common = {"distillation": distillation, "importance_sampling_level": level, "per_device_train_batch_size": 8}
    naive = make_trainer(tiny_model_dir, dataset, tmp_path / "naive", share_long_prefix=False, **common)
    batch = generation_batch(naive, dataset, num_prompts=2)
    shorten_completions(batch, [6, 3, 6, 2, 5, 6, 1, 4])
    assert len({len(ids) for ids in batch["distillation"][0].rollouts.long_prompt_ids}) == 2
    reference = accumulated_gradients(naive, [batch])

    settings = dict(variant)
    layer_checkpointing = settings.pop("layer_checkpointing", False)
    if settings.pop("plan", None) == "held":  # held under the layer checkpoints (memory to spare would turn them off)
        monkeypatch.setattr(runner, "plan_pass", lambda *args: PassPlan.HELD)
    other = make_trainer(tiny_model_dir, dataset, tmp_path / "other", **common, **settings)
    other.model.train()
    if layer_checkpointing:
        enable_layer_checkpointing(other.model)
    gradients = accumulated_gradients(other, [dict(batch)])
    assert reference.keys() == gradients.keys()
    # float32: the packed and split passes sum the same terms in another order
    for name, grad in reference.items():
        torch.testing.assert_close(gradients[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_layer_checkpointing_is_turned_off_for_the_pass_and_restored_after_it_even_on_error():
    config = Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config)
    model.activation_checkpointing_enable(every_n_layers=2)  # as `activation_checkpointing_kwargs` asks train() to
    flags = [layer.gradient_checkpointing for layer in model.model.layers]
    assert flags == [True, False, True, False]
    # Only some layers keep just their input: the memory model must count the model as not checkpointed
    assert not uses_layer_checkpointing(model)
    with pytest.raises(RuntimeError, match="out of memory"):
        with without_layer_checkpointing(model):
            assert not any(layer.gradient_checkpointing for layer in model.model.layers)
            raise RuntimeError("out of memory")
    assert [layer.gradient_checkpointing for layer in model.model.layers] == flags
    model.activation_checkpointing_enable()
    assert uses_layer_checkpointing(model)
    with without_layer_checkpointing(model):
        assert not uses_layer_checkpointing(model)
    assert uses_layer_checkpointing(model) and model.model.gradient_checkpointing


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
