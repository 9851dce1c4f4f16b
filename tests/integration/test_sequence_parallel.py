"""Sequence parallelism for real: the shipped `accelerate_configs/zero3-sp.yaml` through `accelerate launch` and the
entry point, two CPU processes in one group, against the same config with groups of one (no split) on the same
global batch, under SGD without clipping (see test_deepspeed.py): DePO and DePO-IW, one forward per window and a
chunked pass recomputed in the backward, a process that distils nothing, and a resume."""

import json
import shutil

import pytest

from ..helpers import WARM_START, largest_difference, launch, saved_weights
from .test_deepspeed import SGD_WITHOUT_CLIPPING


# The tiny recipe's whole window in one forward, held; or in forwards of 200 tokens, all but the last recomputed
PLANS = {
    "one-forward": [a for a in SGD_WITHOUT_CLIPPING if a not in ("--distillation_memory_fraction", "1e-12")],
    "chunked": SGD_WITHOUT_CLIPPING,
}


def train(output_dir, size: int, distillation: str = "kd", plan: str = "one-forward", *extra: str):
    recipe = "recipes/tiny/depo.yaml" if distillation == "kd" else "recipes/tiny/depo-iw.yaml"
    arguments = ["--config", recipe, "--output_dir", str(output_dir), *PLANS[plan], *extra]
    result = launch(arguments, backend=f"zero3-sp{size}")
    assert result.returncode == 0, result.stderr[-4000:]
    split = "each split over a sequence-parallel group of 2 ranks" in result.stderr
    assert split == (size == 2), "the long pass did not run as the config says"
    return output_dir, result


@pytest.mark.slow
@pytest.mark.parametrize("plan", ["one-forward", "chunked"])
@pytest.mark.parametrize("distillation", ["kd", "iw"])
def test_a_group_of_two_trains_exactly_like_groups_of_one(tmp_path, distillation, plan):
    reference, _ = train(tmp_path / "sp1", 1, distillation, plan, "--save_strategy", "no")
    split, _ = train(tmp_path / "sp2", 2, distillation, plan, "--save_strategy", "no")
    moved = largest_difference(saved_weights(reference), saved_weights(WARM_START))
    assert moved > 1e-3, "nothing moved: the comparison checks nothing"
    assert largest_difference(saved_weights(split), saved_weights(reference)) < 1e-6


@pytest.mark.slow
def test_several_steps_per_generation_and_evaluation_during_training_split_alike(tmp_path):
    # Two optimizer windows per generation batch (as the GSPO recipes), and an evaluation after every second step,
    # whose batches are their own windows: every group splits them alike
    settings = ["--steps_per_generation", "2", "--gradient_accumulation_steps", "1", "--eval_strategy", "steps",
                "--eval_steps", "2", "--dataset_test_split", "train", "--per_device_eval_batch_size", "8",
                "--save_strategy", "no"]  # fmt: skip
    (reference, _), (split, result) = (
        train(tmp_path / f"sp{size}", size, "kd", "chunked", *settings) for size in (1, 2)
    )
    assert largest_difference(saved_weights(split), saved_weights(reference)) < 1e-6
    evaluations = [
        log for log in json.loads((split / "trainer_state.json").read_text())["log_history"] if "eval_loss" in log
    ]
    assert evaluations and all("eval_depo/kd_loss" in log for log in evaluations)


@pytest.mark.slow
def test_a_process_that_distils_nothing_still_splits_the_other_ones_rows(tmp_path):
    only_process_0 = ["--reward_funcs", "tests.helpers.alternating_reward_on_process_0", "--save_strategy", "no"]
    reference, _ = train(tmp_path / "sp1", 1, "kd", "chunked", *only_process_0)
    split, _ = train(tmp_path / "sp2", 2, "kd", "chunked", *only_process_0)
    assert largest_difference(saved_weights(reference), saved_weights(WARM_START)) > 1e-3
    assert largest_difference(saved_weights(split), saved_weights(reference)) < 1e-6


@pytest.mark.slow
def test_a_run_resumed_from_a_split_checkpoint_ends_where_the_uninterrupted_run_ends(tmp_path):
    saves = ["--save_strategy", "steps", "--save_steps", "1"]
    uninterrupted, _ = train(tmp_path / "uninterrupted", 2, "kd", "chunked", *saves)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(uninterrupted / "checkpoint-2", resumed / "checkpoint-2")  # as if killed after it
    _, result = train(resumed, 2, "kd", "chunked", *saves)
    assert f"Resuming from {resumed / 'checkpoint-2'}" in result.stdout + result.stderr
    assert largest_difference(saved_weights(resumed), saved_weights(uninterrupted)) == 0.0
