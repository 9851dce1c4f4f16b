"""The long pass as the trainer runs it (`depo_trl/distillation/long_pass/runner.py`): shared long prompts and
forwards split, held or recomputed give the naive pass's gradients, and each forward runs the backbone as the memory
plan says."""

import logging

import pytest
import torch
from datasets import Dataset

from depo_trl.distillation import PassPlan
from depo_trl.distillation.long_pass import runner
from depo_trl.losses import distillation_mask

from ...helpers import (
    accumulated_gradients,
    enable_layer_checkpointing,
    generation_batch,
    make_rows,
    make_trainer,
    uneven_dataset,
)


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


@pytest.mark.parametrize(("forward_tokens", "memory_fraction", "forwards", "recomputed"), [
    (None, 0.8, 1, False), (120, 0.8, 2, False), (120, 1e-12, 2, True), (70, 1e-12, 6, True),
])  # fmt: skip
def test_the_long_pass_plans_as_the_memory_model_says(
    tiny_model_dir, tmp_path, caplog, forward_tokens, memory_fraction, forwards, recomputed
):
    """Two prompts with 4 rollouts each (packed rows of 74 and 110 tokens); 70 tokens split their rollouts over six
    forwards, each with its own copy of its prompt."""
    rows = make_rows(num_rows=2, num_distractors=3) + make_rows(num_rows=2, num_distractors=9, seed=1)
    dataset = Dataset.from_list([rows[0], rows[3]])
    trainer = make_trainer(
        tiny_model_dir, dataset, tmp_path, distillation="iw", per_device_train_batch_size=8,
        distillation_forward_tokens=forward_tokens, distillation_memory_fraction=memory_fraction,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="depo_trl"):
        accumulated_gradients(trainer, [generation_batch(trainer, dataset, num_prompts=2)])
    [message] = [record.message for record in caplog.records if record.message.startswith("Long pass:")]
    assert f"{forwards} forward" in message and ("recomputed" in message) == recomputed


def record_long_pass_mlp_calls(trainer) -> list[int]:
    """Lengths of the packed rows (batch 1) one layer's MLP computes: a forward, a layer recomputation or a forward
    recomputation of the long pass each run it once; the proxy's micro-batches have several rows. (The forward itself
    is wrapped: module hooks do not fire when transformers' checkpointing recomputes a layer.)"""
    seen = []
    mlp = trainer.model.model.layers[0].mlp
    forward = mlp.forward

    def recording(hidden_states, *args, **kwargs):
        if hidden_states.shape[0] == 1:
            seen.append(hidden_states.shape[1])
        return forward(hidden_states, *args, **kwargs)

    mlp.forward = recording
    return seen


@pytest.mark.parametrize(
    ("settings", "calls_per_forward"),
    [
        # Memory to spare: the window is held without the layers' checkpoints, each backbone runs once
        ({"gradient_checkpointing": True}, [1, 1]),
        ({"gradient_checkpointing": False}, [1, 1]),
        # Held under the layer checkpoints (where only the layers' inputs fit): a forward and each layer's
        # recomputation
        ({"gradient_checkpointing": True, "plan": PassPlan.HELD}, [2, 2]),
        # Forwards that do not fit are recomputed, all but the last: under checkpointing, its layers once more
        ({"gradient_checkpointing": True, "distillation_memory_fraction": 1e-12}, [3, 2]),
        ({"gradient_checkpointing": False, "distillation_memory_fraction": 1e-12}, [2, 1]),
    ],
    ids=["checkpointing-fits", "fits", "checkpointing-held", "checkpointing-recomputed", "recomputed"],
)
def test_backbone_runs_of_each_forward_in_a_training_step(
    tiny_model_dir, tmp_path, monkeypatch, settings, calls_per_forward
):
    # Two prompts per step, a forward each (distillation_forward_tokens fits one prompt with its rollouts); train()
    # turns the recipes' gradient checkpointing on
    dataset = make_rows(num_rows=2, num_distractors=3) + make_rows(num_rows=2, num_distractors=9, seed=1)
    settings = dict(settings)
    if "plan" in settings:
        plan = settings.pop("plan")
        monkeypatch.setattr(runner, "plan_pass", lambda *args: plan)
    trainer = make_trainer(
        tiny_model_dir,
        Dataset.from_list([dataset[0], dataset[3]]),
        tmp_path,
        distillation="iw",
        per_device_train_batch_size=8,
        max_steps=1,
        shuffle_dataset=False,
        distillation_forward_tokens=120,
        **settings,
    )
    seen = record_long_pass_mlp_calls(trainer)
    trainer.train()
    rows = sorted(set(seen), key=seen.index)  # the forwards, in the order they ran
    assert len(rows) == 2
    assert [seen.count(length) for length in rows] == calls_per_forward
