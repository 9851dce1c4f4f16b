"""DeepSpeed ZeRO-2 and ZeRO-3 for real: two CPU processes (gloo) through `accelerate launch` and the entry point.

Under plain SGD without gradient clipping the parameters after a few steps are a linear function of the summed
gradients, so a wrong gradient scale (a forward counted twice, a missing all-reduce, a recomputed forward whose
gathered weights are stale) shows up in them; Adam would normalise it away.
"""

import shutil

import pytest

from ..helpers import WARM_START, largest_difference, launch, saved_weights, step_logs


# The tiny recipe (the toy world's warm start, which earns reward) with a long pass in several forwards per window:
# a prompt with its 8 rollouts is about 250 tokens, so 200 tokens split each prompt's rollouts over two forwards, and
# a memory share too small to hold them makes every forward but the last recomputed in the backward, where ZeRO-3
# gathers the parameters again (through the model's layer checkpoints, which train() turns on).
SGD_WITHOUT_CLIPPING = [
    "--optim", "sgd", "--max_grad_norm", "0", "--learning_rate", "1e-2", "--lr_scheduler_type", "constant",
    "--max_steps", "3", "--max_long_prompt_length", "150", "--distillation_forward_tokens", "200",
    "--distillation_memory_fraction", "1e-12",
]  # fmt: skip


def train(tmp_path, distillation: str, backend: str, *extra: str):
    output_dir = tmp_path / f"{backend}-{distillation}"
    recipe = "recipes/tiny/depo.yaml" if distillation == "kd" else "recipes/tiny/depo-iw.yaml"
    arguments = ["--config", recipe, "--output_dir", str(output_dir), *SGD_WITHOUT_CLIPPING, *extra]
    result = launch(arguments, backend=backend)
    assert result.returncode == 0, result.stderr[-4000:]
    return output_dir


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """The reference: the same settings on plain DDP, once per distillation variant."""
    folder = tmp_path_factory.mktemp("ddp")
    return {distillation: train(folder, distillation, "ddp", "--save_strategy", "no") for distillation in ("kd", "iw")}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["zero2", "zero3"])
@pytest.mark.parametrize("distillation", ["kd", "iw"])
def test_zero_trains_exactly_like_ddp(tmp_path, ddp_runs, backend, distillation):
    run = train(tmp_path, distillation, backend, "--save_strategy", "no")
    reference = saved_weights(ddp_runs[distillation])
    moved = largest_difference(reference, saved_weights(WARM_START))
    assert moved > 1e-3, "the parameters did not move, so the comparison checks nothing"
    assert largest_difference(saved_weights(run), reference) < 1e-6
    logs = step_logs(run)
    assert [log["loss"] for log in logs] == pytest.approx([log["loss"] for log in step_logs(ddp_runs[distillation])])
    if distillation == "kd":
        assert all(log["depo/kd_tokens"] > 0 for log in logs)


@pytest.mark.slow
def test_zero3_resumed_from_a_checkpoint_ends_where_an_uninterrupted_run_ends(tmp_path):
    uninterrupted = train(tmp_path, "kd", "zero3", "--save_strategy", "steps", "--save_steps", "1")
    # The run as if killed after its second checkpoint: only checkpoint-2 is left, and the same command runs again
    resumed = tmp_path / "resumed"
    (resumed / "checkpoint-2").parent.mkdir()
    shutil.copytree(uninterrupted / "checkpoint-2", resumed / "checkpoint-2")
    arguments = ["--config", "recipes/tiny/depo.yaml", "--output_dir", str(resumed), *SGD_WITHOUT_CLIPPING]
    result = launch([*arguments, "--save_strategy", "steps", "--save_steps", "1"], backend="zero3")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Resuming from" in result.stdout + result.stderr
    assert largest_difference(saved_weights(resumed), saved_weights(uninterrupted)) == 0.0
