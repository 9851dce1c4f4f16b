"""The long-context term's own home: the memory model that sizes the pass, what each backbone really runs under the
recipes' gradient checkpointing, the rollouts DePO-IW leaves out, and the refusal of a model the packed row would
silently get wrong."""

import logging

import pytest
import torch
from datasets import Dataset
from transformers import Qwen2Config

from depo_trl.distillation import (
    DISTILLATIONS,
    Distillation,
    LongPassMemory,
    PassPlan,
    forward_size,
    holds,
    plan_pass,
)
from depo_trl.distillation.long_pass import SHARED_PREFIX_KWARG, runner

from .helpers import accumulated_gradients, generation_batch, make_rows, make_trainer


MEMORY = LongPassMemory(held=10.0, working=30.0)


def test_the_whole_window_is_one_forward_when_it_fits_alone():
    assert forward_size(MEMORY, window_tokens=100, largest_group=40, smallest_forward=20, available_bytes=4000) == 100


def test_forwards_shrink_to_fit_beside_what_every_forward_holds():
    # 100 tokens x 40 bytes do not fit in 3000; held parts 100 x 10 leave 2000 for one forward's 30 per token
    assert forward_size(MEMORY, 100, largest_group=40, smallest_forward=20, available_bytes=3000) == 66
    assert holds(MEMORY, held_tokens=100, tokens_per_forward=66, available_bytes=3000)


def test_forwards_that_would_split_a_prompt_are_sized_to_be_recomputed():
    # Beside the held parts only 66 tokens fit, less than a prompt with its rollouts (70): a split prompt would be held
    # once per piece, so the forward is what fits alone (3000 / 40 = 75), to be recomputed
    assert forward_size(MEMORY, 100, largest_group=70, smallest_forward=20, available_bytes=3000) == 75
    # Nothing fits: the smallest forward still runs
    assert forward_size(MEMORY, 100, largest_group=70, smallest_forward=20, available_bytes=0) == 20


PLAIN, CHECKPOINTED = LongPassMemory(held=20.0, working=10.0), LongPassMemory(held=5.0, working=20.0)


@pytest.mark.parametrize(
    ("available", "forwards", "checkpointing_model", "plain_model"),
    [
        # 100 x 20 + 50 x 10 fit: no layer checkpoints needed
        (3000, 2, PassPlan.WITHOUT_LAYER_CHECKPOINTS, PassPlan.WITHOUT_LAYER_CHECKPOINTS),
        # Only the checkpointed layers' inputs fit (100 x 5 + 50 x 20); a model without them recomputes
        (2000, 2, PassPlan.HELD, PassPlan.RECOMPUTED),
        (1000, 2, PassPlan.RECOMPUTED, PassPlan.RECOMPUTED),
        # A single forward is the last: never recomputed, and run as the model is configured
        (1000, 1, PassPlan.HELD, PassPlan.HELD),
    ],
)
def test_the_pass_runs_the_cheapest_way_that_fits(available, forwards, checkpointing_model, plain_model):
    assert plan_pass(PLAIN, CHECKPOINTED, 100, 50, forwards, available) == checkpointing_model
    assert plan_pass(PLAIN, None, 100, 50, forwards, available) == plain_model


def test_the_lm_head_gradient_is_set_aside_before_any_token():
    # The fused head's float32 weight gradient (and its gathered copy) takes 1000 bytes whatever the forward's length
    memory = LongPassMemory(held=10.0, working=30.0, fixed=1000.0)
    assert forward_size(memory, 100, largest_group=40, smallest_forward=20, available_bytes=5000) == 100
    assert forward_size(memory, 100, largest_group=40, smallest_forward=20, available_bytes=4000) == 66
    assert holds(memory, held_tokens=100, tokens_per_forward=66, available_bytes=4000)
    assert not holds(memory, held_tokens=100, tokens_per_forward=66, available_bytes=3000)


def test_holding_counts_every_copy_of_a_split_prompt():
    assert holds(MEMORY, held_tokens=100, tokens_per_forward=20, available_bytes=1600)
    assert not holds(MEMORY, held_tokens=140, tokens_per_forward=20, available_bytes=1600)


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


def test_memory_model_of_qwen_7b_with_checkpointing():
    config = Qwen2Config(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
        vocab_size=152064,
    )  # fmt: skip
    memory = LongPassMemory.of_model(
        config, dtype_bytes=2, layer_checkpointing=True, rollouts_per_prompt=8, keys_repeated_per_head=False
    )
    # Held: each layer's input, the final norm's input and output and the head's input, exactly from the shapes
    assert memory.held == 28 * 3584 * 2 + 3 * 3584 * 2
    # One packed row of the recipes (15360 + 8 x 1001 tokens) keeps 4.8 GiB of layer inputs for the backward
    assert 4.7 < 23368 * memory.held / 2**30 < 4.9
    without = LongPassMemory.of_model(
        config, 2, layer_checkpointing=False, rollouts_per_prompt=8, keys_repeated_per_head=False
    )
    assert without.held > 20 * memory.held  # every layer's activations: why the recipes checkpoint
    # The LM head's float32 weight gradient beside its bf16 copy gathered under ZeRO-3, whatever the tokens, and its
    # logits tile of 4096 tokens x 32768 vocabulary entries (256 MiB)
    assert memory.fixed == without.fixed == 152064 * 3584 * (4 + 2)
    assert memory.working_bytes(23368) - 23368 * memory.working == 4096 * 32768 * 2
    frozen_head = LongPassMemory.of_model(
        config, 2, layer_checkpointing=True, rollouts_per_prompt=8, keys_repeated_per_head=False, trainable_head=False
    )
    assert frozen_head.fixed == 0


def test_every_variant_is_a_registered_distillation():
    assert set(DISTILLATIONS) == {"kd", "iw"}
    assert all(issubclass(term, Distillation) and DISTILLATIONS[term.name] is term for term in DISTILLATIONS.values())


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
        # Held under the layer checkpoints (where only the layers' inputs fit): a forward and each layer's recomputation
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


def test_iw_leaves_zero_advantage_rollouts_out_of_the_pass_without_changing_the_gradient(
    tiny_model_dir, tmp_path, monkeypatch
):
    def first_group_all_correct(completions, **kwargs):
        return [1.0] * 4 + [float(index % 2 == 0) for index in range(len(completions) - 4)]

    dataset = Dataset.from_list(make_rows())
    trainer = make_trainer(
        tiny_model_dir,
        dataset,
        tmp_path,
        reward=first_group_all_correct,
        distillation="iw",
        per_device_train_batch_size=8,
    )
    batch = generation_batch(trainer, dataset, num_prompts=2)
    assert torch.equal(batch["advantages"][:4], torch.zeros(4)) and (batch["advantages"][4:] != 0).all()
    passed = []
    run = trainer.long_pass.run
    monkeypatch.setattr(
        trainer.long_pass,
        "run",
        lambda model, rollouts, rows, loss: passed.append(rows) or run(model, rollouts, rows, loss),
    )
    skipping = accumulated_gradients(trainer, [dict(batch)])
    assert passed[-1].tolist() == [4, 5, 6, 7]

    term = batch["distillation"][0]
    monkeypatch.setattr(term, "enters_pass", lambda rows, weights: (weights > 0).any(-1))  # every rollout
    everything = accumulated_gradients(trainer, [dict(batch)])
    assert passed[-1].tolist() == list(range(8))
    for name, gradient in everything.items():
        torch.testing.assert_close(skipping[name], gradient, rtol=1e-5, atol=1e-7, msg=name)


def test_a_model_whose_attention_ignores_the_packed_layout_is_refused(tiny_model_dir, tiny_dataset, tmp_path):
    trainer = make_trainer(tiny_model_dir, tiny_dataset, tmp_path, per_device_train_batch_size=8)
    attention = trainer.model.model.layers[1].self_attn
    forward = attention.forward

    def own_attention(*args, **kwargs):  # as a model with its own attention code: the layout never reaches it
        kwargs.pop(SHARED_PREFIX_KWARG, None)
        return forward(*args, **kwargs)

    attention.forward = own_attention
    batch = generation_batch(trainer, tiny_dataset, num_prompts=2)
    with pytest.raises(RuntimeError, match="1 of the model's 2 attention layers computed the packed"):
        accumulated_gradients(trainer, [batch])
