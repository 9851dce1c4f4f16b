"""Reentrant layer checkpointing with the distillation term: refused where it cannot train, and trained where it can
(`depo_trl/distillation/long_pass/checkpointing.py`, `reentrant_checkpointing_problem`)."""

from types import SimpleNamespace

import pytest

from depo_trl.distillation.long_pass.checkpointing import reentrant_checkpointing_problem

from ...helpers import launch, saved_weights


def settings(use_reentrant=True, zero_stage=None, world_size=2, distillation="kd", **ddp):
    return SimpleNamespace(
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": use_reentrant},
        deepspeed_plugin=None if zero_stage is None else SimpleNamespace(zero_stage=zero_stage),
        world_size=world_size,
        distillation=distillation,
        ddp_find_unused_parameters=ddp.get("find_unused", False),
        ddp_static_graph=ddp.get("static_graph", False),
    )


@pytest.mark.parametrize(
    ("args", "peft", "refused"),
    [
        # Measured on two gloo processes: DeepSpeed refuses the second reduction of a gradient
        (settings(zero_stage=2), False, "ZeRO-2"),
        (settings(zero_stage=3), False, "ZeRO-3"),
        # TRL turns reentrant checkpointing on for PEFT with ZeRO-3, whatever the settings say
        (settings(use_reentrant=False, zero_stage=3), True, "where TRL turns it on"),
        # DDP refuses a parameter marked ready twice when it looks for unused ones, has a static graph, or trains PEFT
        (settings(find_unused=True), False, "DDP"),
        (settings(static_graph=True), False, "DDP"),
        (settings(), True, "DDP"),
        # What trains: plain DDP, one process, non-reentrant checkpointing, no distillation term
        (settings(), False, None),
        (settings(find_unused=True, world_size=1), False, None),
        (settings(use_reentrant=False, zero_stage=2), True, None),
        (settings(zero_stage=3, distillation="none"), False, None),
    ],
)
def test_reentrant_checkpointing_is_refused_where_it_cannot_train(args, peft, refused):
    problem = reentrant_checkpointing_problem(args, uses_peft=peft)
    assert (problem is None) == (refused is None)
    if refused:
        assert refused in problem and problem.startswith("gradient_checkpointing_kwargs: reentrant checkpointing")


REENTRANT = ["--gradient_checkpointing", "true", "--gradient_checkpointing_kwargs", '{"use_reentrant": true}']
SGD = ["--optim", "sgd", "--max_grad_norm", "0", "--learning_rate", "0.1", "--save_strategy", "no", "--max_steps", "2"]


@pytest.mark.slow
def test_plain_ddp_trains_with_reentrant_layer_checkpointing_like_without(tmp_path):
    # Four forwards of the long pass, all but the last recomputed in the backward, under the layers' reentrant
    # checkpoints; the same run without them moves the parameters alike
    split = ["--max_long_prompt_length", "150", "--distillation_forward_tokens", "200",
             "--distillation_memory_fraction", "1e-12"]  # fmt: skip
    runs = {}
    for name, checkpointing in (("reentrant", REENTRANT), ("plain", ["--gradient_checkpointing", "false"])):
        arguments = ["--config", "recipes/tiny/depo.yaml", "--output_dir", str(tmp_path / name), *SGD, *split]
        result = launch([*arguments, *checkpointing])
        assert result.returncode == 0, result.stderr[-3000:]
        assert "recomputed in the backward" in result.stderr
        runs[name] = saved_weights(tmp_path / name)
    for name, weights in runs["reentrant"].items():
        assert (weights - runs["plain"][name]).abs().max() < 1e-5, name


@pytest.mark.slow
def test_zero2_with_reentrant_checkpointing_stops_in_one_line_before_training(tmp_path):
    arguments = ["--config", "recipes/tiny/depo.yaml", "--output_dir", str(tmp_path / "run"), *SGD, *REENTRANT]
    result = launch(arguments, backend="zero2")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "depo-train: error:" in line]
    assert lines and "ZeRO-2" in lines[0] and "use_reentrant: false" in lines[0]
    assert "has already been reduced" not in result.stderr  # stopped before DeepSpeed saw a step
