import pytest

from depo_trl import ARMS, DePOConfig


def config(**kwargs):
    return DePOConfig(output_dir="unused", report_to="none", use_cpu=True, **kwargs)


@pytest.mark.parametrize(("rollout_context", "distillation"), [tuple(a.settings.values()) for a in ARMS.values()])
def test_valid_combinations(rollout_context, distillation):
    args = config(rollout_context=rollout_context, distillation=distillation)
    assert args.uses_long_prompt == (distillation != "none" or rollout_context != "short")


@pytest.mark.parametrize(("rollout_context", "distillation"), [("long", "kd"), ("mixed", "iw"), ("medium", "kd")])
def test_invalid_combinations_list_the_valid_ones(rollout_context, distillation):
    with pytest.raises(ValueError, match="valid combinations are") as error:
        config(rollout_context=rollout_context, distillation=distillation)
    assert "rollout_context='short', distillation='iw' (DePO-IW)" in str(error.value)


def test_other_bad_values():
    with pytest.raises(ValueError, match="distillation_coef"):
        config(distillation_coef=-1.0)
    with pytest.raises(ValueError, match="loss_type"):
        config(distillation="iw", loss_type="cispo")
    with pytest.raises(ValueError, match="max_long_prompt_length"):
        config(max_long_prompt_length=0)
    with pytest.raises(ValueError, match="distillation_forward_tokens=100 cannot hold one long prompt"):
        config(distillation_forward_tokens=100, max_long_prompt_length=90, max_completion_length=20)
    with pytest.raises(ValueError, match="must divide the other"):
        config(gradient_accumulation_steps=2, steps_per_generation=3)
    # No long pass: any split, with checkpoints at generation-batch boundaries (every 3 optimizer steps here)
    config(gradient_accumulation_steps=2, steps_per_generation=3, distillation="none", save_steps=3)


def test_defaults_are_depo():
    args = config()
    assert (args.rollout_context, args.distillation, args.distillation_coef) == ("short", "kd", 1.0)
    assert args.distillation_reward_threshold == 1.0


def test_the_forward_size_is_the_memory_model_s_unless_set():
    # No config-time formula: the long pass sizes its forwards from the memory free when it runs
    assert config(max_long_prompt_length=15360, num_generations=8).distillation_forward_tokens is None
    assert config(distillation_forward_tokens=4096).distillation_forward_tokens == 4096
    with pytest.raises(ValueError, match="distillation_memory_fraction must be in"):
        config(distillation_memory_fraction=0.0)
