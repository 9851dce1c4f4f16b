"""DePOTrainer on a tiny Qwen2 model: every configuration trains, and the gradient means what docs/design.md says."""

import pytest
import torch
from datasets import Dataset
from trl.trainer.utils import shuffle_sequence_dict, split_tensor_dict

from depo_trl import ARMS

from .helpers import NUM_GENERATIONS, accumulated_gradients, generation_batch, make_rows, make_trainer


# The metrics each term logs besides TRL's, as docs/trainer.md's table lists them
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
    before = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    trainer.train()
    unchanged = [name for name, param in trainer.model.named_parameters() if torch.equal(before[name], param)]
    assert unchanged == []  # every parameter trained
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


def test_completion_logs_keep_the_short_prompt_when_rollouts_use_the_long_one(tiny_model_dir, tiny_dataset, tmp_path):
    trainer = make_trainer(tiny_model_dir, tiny_dataset, tmp_path, rollout_context="long", distillation="none")
    generation_batch(trainer, tiny_dataset, num_prompts=1)
    short_prompts = [tiny_dataset[0]["prompt"]] * NUM_GENERATIONS
    assert list(trainer._logs["prompt"]) == short_prompts
    assert list(trainer._logs["extra"]["rollout_context"]) == ["long"] * len(short_prompts)
