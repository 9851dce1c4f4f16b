"""The prompt each rollout group is sampled from (`depo_trl/rollout_context.py`): the 'Short-Long' coin flip, and the
context the trainer's rollouts really come from."""

import pytest

from depo_trl.rollout_context import mixed_rollout_uses_long_prompt

from .helpers import make_trainer


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
