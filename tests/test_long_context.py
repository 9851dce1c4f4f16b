"""The long-context pass at bounded cost: shared long prompts and chunks give the naive pass's gradients."""

import pytest
import torch
from datasets import Dataset

from depo_trl.long_context import pack_rows, plan_long_pass
from depo_trl.losses import distillation_mask

from .conftest import make_rows
from .test_trainer import accumulated_gradients, generation_batch, make_trainer


def test_plan_groups_rollouts_by_prompt_and_bounds_chunks():
    keys = ["a", "b", "a", "a", "c", "b"]
    assert plan_long_pass(keys, None, share_prefix=False) == [[[0], [1], [2], [3], [4], [5]]]
    assert plan_long_pass(keys, None, share_prefix=True) == [[[0, 2, 3], [1, 5], [4]]]
    assert plan_long_pass(keys, 2, share_prefix=True) == [[[0, 2]], [[3]], [[1, 5]], [[4]]]
    assert plan_long_pass(keys, 3, share_prefix=True) == [[[0, 2, 3]], [[1, 5], [4]]]
    assert plan_long_pass(keys, 4, share_prefix=False) == [[[0], [1], [2], [3]], [[4], [5]]]


def test_packed_rows_by_hand():
    packed_input = [(torch.tensor([7, 8, 9]), [(0, torch.tensor([1, 2])), (3, torch.tensor([5]))])]
    packed = pack_rows(packed_input, 0, mask_dtype=torch.bool)
    # [7, 8 | 9, 1, 2 | 9, 5]: the last prompt token opens each segment
    assert packed.input_ids.tolist() == [[7, 8, 9, 1, 2, 9, 5]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 2, 3]]
    assert packed.labels.tolist() == [[-100, -100, -100, 1, 2, -100, 5]]
    allowed = packed.attention_mask[0, 0].int().tolist()
    assert allowed[4] == [1, 1, 1, 1, 1, 0, 0]  # token 2 of rollout 0: prompt + own segment
    assert allowed[6] == [1, 1, 0, 0, 0, 1, 1]  # token 5 of rollout 3: prompt prefix + its own segment only
    assert list(zip(packed.rollout.tolist(), packed.token.tolist(), packed.position.tolist())) == [
        (0, 0, 3),
        (0, 1, 4),
        (3, 0, 6),
    ]
    # With a window of 2 positions, sliding layers keep keys fewer than 2 positions behind: token 5 (position 3) sees
    # the repeated prompt token (position 2) and itself, not the prefix at positions 0 and 1.
    windows = {"full_attention": None, "sliding_attention": 2}
    sliding = pack_rows(packed_input, 0, windows, mask_dtype=torch.bool).attention_mask
    assert torch.equal(sliding["full_attention"], packed.attention_mask)
    assert sliding["sliding_attention"][0, 0].int().tolist()[6] == [0, 0, 0, 0, 0, 1, 1]
    assert sliding["sliding_attention"][0, 0].int().tolist()[4] == [0, 0, 0, 1, 1, 0, 0]


def uneven_dataset() -> Dataset:
    """Long prompts of different lengths (left padding in the naive pass)."""
    rows = make_rows(num_rows=4, num_distractors=3) + make_rows(num_rows=4, num_distractors=9, seed=1)
    return Dataset.from_list([rows[i] for i in (0, 4, 1, 5, 2, 6, 3, 7)])


def shorten_completions(trainer, batch, lengths):
    """Completions of different lengths (right padding), as if some had stopped early."""
    batch["completion_mask"] = batch["completion_mask"].clone()
    for row, length in enumerate(lengths):
        batch["completion_mask"][row, length:] = 0
    state = batch["long_context"][0]
    state.completion_mask = state.loss_mask = batch["completion_mask"]
    if trainer.args.distillation == "kd":
        state.distilled_mask = distillation_mask(batch["completion_mask"], batch["rewards"])
    else:
        state.distilled_mask = batch["completion_mask"]
    state.tokens_in_batch = state.distilled_mask.sum().float()
    batch["num_items_in_batch"] = batch["completion_mask"].sum()


@pytest.mark.parametrize(("distillation", "level"), [("kd", "token"), ("iw", "token"), ("iw", "sequence")])
@pytest.mark.parametrize(
    "variant",
    [
        {"share_long_prefix": True},
        {"share_long_prefix": False, "distillation_micro_batch_size": 2},
        {"share_long_prefix": True, "distillation_micro_batch_size": 3},
        {"share_long_prefix": True, "gradient_checkpointing": True},
    ],
    ids=["shared", "chunked", "shared+chunked", "shared+checkpointing"],
)
def test_shared_and_chunked_long_pass_match_the_naive_gradient(tiny_model_dir, tmp_path, distillation, level, variant):
    dataset = uneven_dataset()
    common = {"distillation": distillation, "importance_sampling_level": level, "per_device_train_batch_size": 8}
    naive = make_trainer(tiny_model_dir, dataset, tmp_path / "naive", share_long_prefix=False, **common)
    batch = generation_batch(naive, dataset, num_prompts=2)
    shorten_completions(naive, batch, [6, 3, 6, 2, 5, 6, 1, 4])
    state = batch["long_context"][0]
    assert len({len(ids) for ids in state.long_prompt_ids}) == 2
    reference = accumulated_gradients(naive, [batch])

    other = make_trainer(tiny_model_dir, dataset, tmp_path / "other", **common, **variant)
    other.model.train()
    gradients = accumulated_gradients(other, [dict(batch)])
    assert reference.keys() == gradients.keys()
    # float32: the packed and chunked passes sum the same terms in another order
    for name, grad in reference.items():
        torch.testing.assert_close(gradients[name], grad, rtol=1e-4, atol=1e-6, msg=name)
