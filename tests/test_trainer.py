"""DePOTrainer on a tiny Qwen2 model: every configuration trains, and the gradient means what docs/design.md says."""

import copy
import logging

import pytest
import torch
from datasets import Dataset
from trl import GRPOTrainer
from trl.trainer.utils import pad, shuffle_sequence_dict, split_tensor_dict

from depo_trl import ARMS
from depo_trl.losses import conditional_kd_loss, kd_token_weights
from depo_trl.model_utils import load_tokenizer
from depo_trl.rollout_context import mixed_rollout_uses_long_prompt

from .helpers import NUM_GENERATIONS, accumulated_gradients, generation_batch, make_rows, make_trainer


# The metrics each term logs besides TRL's, as the README's table lists them
DEPO_METRICS = {
    "none": set(),
    "kd": {"depo/kd_loss", "depo/kd_fraction", "depo/kd_tokens", "depo/logp_gap", "depo/long_prompt_tokens",
           "depo/long_pass_seconds"},
    "iw": {"depo/iw_loss", "depo/iw_tokens", "depo/iw_clip_ratio", "depo/logp_gap", "depo/long_prompt_tokens",
           "depo/long_pass_seconds"},
}  # fmt: skip


@pytest.mark.parametrize(("rollout_context", "distillation"), [tuple(a.settings.values()) for a in ARMS.values()])
def test_every_configuration_trains_and_logs_its_metrics(
    tiny_model_dir, tiny_dataset, tmp_path, rollout_context, distillation
):
    trainer = make_trainer(
        tiny_model_dir, tiny_dataset, tmp_path, rollout_context=rollout_context, distillation=distillation
    )
    trainer.train()
    step_logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(step_logs) == 2
    for log in step_logs:
        assert log["reward"] == pytest.approx(0.5)
        assert {key for key in log if key.startswith("depo/")} == DEPO_METRICS[distillation]
        if distillation == "kd":
            assert log["depo/kd_fraction"] == 0.5
        if distillation != "none":
            assert log["depo/long_prompt_tokens"] > 0


@pytest.mark.parametrize(
    ("distillation", "loss_type", "level"),
    [("kd", "dapo", "token"), ("kd", "grpo", "token"), ("iw", "dapo", "token"), ("iw", "grpo", "sequence")],
)
def test_gradient_is_the_same_for_batch_8_ga_1_and_batch_4_ga_2(
    tiny_model_dir, tiny_dataset, tmp_path, distillation, loss_type, level
):
    common = {"distillation": distillation, "loss_type": loss_type, "importance_sampling_level": level}
    one_step = make_trainer(tiny_model_dir, tiny_dataset, tmp_path / "a", per_device_train_batch_size=8, **common)
    two_steps = make_trainer(
        tiny_model_dir,
        tiny_dataset,
        tmp_path / "b",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        **common,
    )
    batch = generation_batch(one_step, tiny_dataset, num_prompts=2)
    assert (batch["advantages"] > 0).any() and (batch["advantages"] < 0).any()

    torch.manual_seed(1)  # scatter the prompts' rollouts over the two micro-batches, as TRL does
    micro_batches = split_tensor_dict(shuffle_sequence_dict(batch), 2)
    reference = accumulated_gradients(one_step, [batch])
    two_steps.model.train()
    split = accumulated_gradients(two_steps, micro_batches)
    assert reference.keys() == split.keys()
    for name, grad in reference.items():
        torch.testing.assert_close(split[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("distillation", ["kd", "iw"])
def test_identical_short_and_long_prompts_give_no_gap_and_no_clipping(tiny_model_dir, tmp_path, distillation):
    dataset = Dataset.from_list([{**row, "long_prompt": row["prompt"]} for row in make_rows()])
    trainer = make_trainer(tiny_model_dir, dataset, tmp_path, distillation=distillation)
    trainer.train()
    for log in (log for log in trainer.state.log_history if "loss" in log):
        assert abs(log["depo/logp_gap"]) < 1e-5
        if distillation == "iw":
            assert log["depo/iw_clip_ratio"] == 0.0


@pytest.mark.parametrize(
    ("distillation", "constant_reward", "should_change"),
    [("kd", 1.0, True), ("kd", 0.0, False), ("iw", 1.0, False), ("none", 1.0, False)],
)
def test_constant_reward_moves_parameters_only_through_distillation(
    tiny_model_dir, tiny_dataset, tmp_path, distillation, constant_reward, should_change
):
    def constant(completions, **kwargs):
        return [constant_reward] * len(completions)

    trainer = make_trainer(
        tiny_model_dir, tiny_dataset, tmp_path, reward=constant, distillation=distillation, beta=0.0, weight_decay=0.0
    )
    before = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    trainer.train()
    changed = any(not torch.equal(before[name], param) for name, param in trainer.model.named_parameters())
    assert changed == should_change


def test_long_prompt_is_rendered_with_the_chat_template(tiny_model_dir, tiny_dataset, tmp_path):
    trainer = make_trainer(tiny_model_dir, tiny_dataset, tmp_path)
    batch = generation_batch(trainer, tiny_dataset, num_prompts=1)
    tokenizer = trainer.processing_class
    text = tokenizer.apply_chat_template(tiny_dataset[0]["long_prompt"], tokenize=False, add_generation_prompt=True)
    expected = tokenizer(text, add_special_tokens=False)["input_ids"]
    term = batch["distillation"][0]
    assert all(other is term for other in batch["distillation"])
    for ids in term.rollouts.long_prompt_ids:
        assert ids.tolist() == list(expected)
    assert tokenizer.decode(expected).startswith("<|im_start|> user")
    assert term.rewards.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert term.tokens_in_batch.item() == batch["completion_mask"][0::2].sum().item()


def test_each_long_prompt_is_tokenized_once_and_shared_by_its_rollouts(tiny_model_dir, tiny_dataset, tmp_path):
    trainer = make_trainer(tiny_model_dir, tiny_dataset, tmp_path)
    tokenized = []
    tokenize = trainer._tokenize_prompts

    def recording(prompts):
        tokenized.append(len(prompts))
        return tokenize(prompts)

    trainer._tokenize_prompts = recording
    trainer.model.train()
    # A copy per rollout, as TRL's dataloader hands out rows: equal prompts, not the same objects
    rows = [copy.deepcopy(row) for row in tiny_dataset.select(range(2)) for _ in range(NUM_GENERATIONS)]
    batch = trainer._generate_and_score_completions(rows)
    rollouts = batch["distillation"][0].rollouts
    assert tokenized == [8, 2]  # TRL's short prompts, one per rollout; the two long prompts once each
    tokenizer = trainer.processing_class
    for index, ids in enumerate(rollouts.long_prompt_ids):
        row = tiny_dataset[index // NUM_GENERATIONS]
        text = tokenizer.apply_chat_template(row["long_prompt"], tokenize=False, add_generation_prompt=True)
        assert ids.tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len({id(ids) for ids in rollouts.long_prompt_ids}) == 2
    assert len(set(rollouts.prompt_keys)) == 2


def test_missing_long_prompt_column_is_a_clear_error(tiny_model_dir, tiny_dataset, tmp_path):
    short_only = tiny_dataset.remove_columns("long_prompt")
    with pytest.raises(ValueError, match="no `long_prompt` column"):
        make_trainer(tiny_model_dir, short_only, tmp_path, distillation="kd")
    with pytest.raises(ValueError, match="no `long_prompt` column"):
        make_trainer(tiny_model_dir, short_only, tmp_path, rollout_context="mixed", distillation="none")
    make_trainer(tiny_model_dir, short_only, tmp_path, distillation="none")  # the 'Short' baseline needs none


def test_overlong_rows_are_dropped_with_one_warning(tiny_model_dir, tmp_path, caplog):
    rows = make_rows(num_rows=4, num_distractors=2) + make_rows(num_rows=4, num_distractors=12, seed=1)
    dataset = Dataset.from_list(rows)
    tokenizer = load_tokenizer(tiny_model_dir)
    texts = [
        tokenizer.apply_chat_template(row["long_prompt"], tokenize=False, add_generation_prompt=True) for row in rows
    ]
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    limit = max(lengths[:4])
    assert min(lengths[4:]) > limit
    with caplog.at_level(logging.WARNING, logger="depo_trl"):
        trainer = make_trainer(tiny_model_dir, dataset, tmp_path, max_long_prompt_length=limit)
    assert len(trainer.train_dataset) == 4
    assert trainer.train_dataset["id"] == [row["id"] for row in rows[:4]]
    warnings = [record.message for record in caplog.records if "max_long_prompt_length" in record.message]
    assert warnings == [f"Dropped 4 of 8 train rows whose long prompt exceeds max_long_prompt_length={limit} tokens."]
    with pytest.raises(ValueError, match="every train row has a longer long prompt"):
        make_trainer(tiny_model_dir, dataset, tmp_path, max_long_prompt_length=min(lengths) - 1)


def test_mixed_coin_flip_is_a_pure_function_with_probability_one_half():
    assert mixed_rollout_uses_long_prompt("row-1", 0, 5) == mixed_rollout_uses_long_prompt("row-1", 0, 5)
    flips = [mixed_rollout_uses_long_prompt(f"row-{index}", 0, 0) for index in range(2000)]
    assert 0.45 < sum(flips) / len(flips) < 0.55
    other_seed = [mixed_rollout_uses_long_prompt(f"row-{index}", 1, 0) for index in range(2000)]
    assert flips != other_seed


@pytest.mark.parametrize("rollout_context", ["long", "mixed"])
def test_rollouts_come_from_the_configured_context(tiny_model_dir, tiny_dataset, tmp_path, rollout_context):
    seen = []

    def recording_reward(prompts, completions, **kwargs):
        seen.append([prompt[-1]["content"] for prompt in prompts])
        return [0.0] * len(completions)

    short_texts = {row["prompt"][-1]["content"] for row in tiny_dataset}
    long_texts = {row["long_prompt"][-1]["content"] for row in tiny_dataset}
    trainer = make_trainer(
        tiny_model_dir,
        tiny_dataset,
        tmp_path,
        reward=recording_reward,
        rollout_context=rollout_context,
        distillation="none",
        max_steps=8,
    )
    trainer.train()
    kinds = []
    for prompts in seen:
        assert len(set(prompts)) == 1  # one group per step here: all rollouts share a prompt
        kinds.append("long" if prompts[0] in long_texts else "short" if prompts[0] in short_texts else "?")
    if rollout_context == "long":
        assert set(kinds) == {"long"}
    else:
        assert set(kinds) == {"long", "short"}


def test_completion_logs_keep_the_short_prompt_when_rollouts_use_the_long_one(tiny_model_dir, tiny_dataset, tmp_path):
    trainer = make_trainer(tiny_model_dir, tiny_dataset, tmp_path, rollout_context="long", distillation="none")
    generation_batch(trainer, tiny_dataset, num_prompts=1)
    short_prompts = [tiny_dataset[0]["prompt"]] * NUM_GENERATIONS
    assert list(trainer._logs["prompt"]) == short_prompts
    assert list(trainer._logs["extra"]["rollout_context"]) == ["long"] * len(short_prompts)


def test_logged_kd_loss_is_conditional_kd_loss_on_the_same_tensors(tiny_model_dir, tiny_dataset, tmp_path):
    trainer = make_trainer(tiny_model_dir, tiny_dataset, tmp_path, per_device_train_batch_size=8)
    batch = generation_batch(trainer, tiny_dataset, num_prompts=2)
    accumulated_gradients(trainer, [batch])
    logged = trainer._metrics["train"]["depo/kd_loss"][-1]

    # The same rollouts scored independently: plain [prompt, completion] sequences through TRL's log-prob helper
    def completion_logps(prompts: list[torch.Tensor]) -> torch.Tensor:
        prompt_ids = pad(prompts, padding_value=trainer.processing_class.pad_token_id, padding_side="left")
        prompt_mask = pad([torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left")
        input_ids = torch.cat([prompt_ids, batch["completion_ids"]], dim=1)
        attention_mask = torch.cat([prompt_mask, batch["completion_mask"]], dim=1)
        with torch.no_grad():
            logps, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(
                trainer, trainer.model, input_ids, attention_mask, batch["completion_ids"].size(1)
            )
        return logps

    term = batch["distillation"][0]
    short = completion_logps([ids[mask.bool()] for ids, mask in zip(batch["prompt_ids"], batch["prompt_mask"])])
    long = completion_logps(term.rollouts.long_prompt_ids)
    weights = kd_token_weights(batch["completion_mask"], term.rewards, 1.0, term.tokens_in_batch)
    assert logged != 0.0
    assert logged == pytest.approx(conditional_kd_loss(long, short, weights).item(), rel=1e-4, abs=1e-6)
