"""FSDP2 for real on CPU processes: the shipped `accelerate_configs/fsdp2.yaml` below Accelerate's gate
(`fsdp2_cpu_run.py`), against DDP under SGD without clipping (see `test_deepspeed.py`), and resumed; and the
refusal of that config where Accelerate would silently run DDP."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from ..helpers import ROOT, WARM_START, free_port, largest_difference, launch, run_environment, saved_weights
from .test_deepspeed import SGD_WITHOUT_CLIPPING


FSDP2_RUN = os.path.join(ROOT, "tests", "integration", "fsdp2_cpu_run.py")


def train(output_dir, distillation: str, sharded: bool, *extra: str):
    recipe = "recipes/tiny/depo.yaml" if distillation == "kd" else "recipes/tiny/depo-iw.yaml"
    arguments = ["--config", recipe, "--output_dir", str(output_dir), *SGD_WITHOUT_CLIPPING, *extra]
    result = launch(arguments, script=FSDP2_RUN) if sharded else launch(arguments)
    assert result.returncode == 0, result.stderr[-4000:]
    (output_dir / "launch.log").write_text(result.stdout + result.stderr)
    if sharded:  # every parameter a DTensor on both processes: no silent fallback to DDP passes
        for rank in range(2):
            report = json.loads((output_dir / f"fsdp2_rank{rank}.json").read_text())
            assert report == {"sharded": True, "distributed_type": "DistributedType.FSDP"}
    return output_dir


@pytest.mark.slow
@pytest.mark.parametrize("distillation", ["kd", "iw"])
def test_fsdp2_trains_exactly_like_ddp(tmp_path, distillation):
    # Two forwards per prompt, all but the last recomputed in the backward, where FSDP2 gathers the layers again
    reference = saved_weights(train(tmp_path / "ddp", distillation, False, "--save_strategy", "no"))
    assert largest_difference(reference, saved_weights(WARM_START)) > 1e-3, "nothing moved: the check checks nothing"
    run = train(tmp_path / "fsdp2", distillation, True, "--save_strategy", "no")
    assert largest_difference(saved_weights(run), reference) < 1e-6


@pytest.mark.slow
def test_fsdp2_resumed_from_a_checkpoint_ends_where_an_uninterrupted_run_ends(tmp_path):
    # The recipes' AdamW: torch loads a full optimizer state into FSDP2 only for an optimizer with state (SGD: none)
    saves = ["--save_strategy", "steps", "--save_steps", "1", "--optim", "adamw_torch"]
    uninterrupted = train(tmp_path / "uninterrupted", "kd", True, *saves)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(uninterrupted / "checkpoint-2", resumed / "checkpoint-2")  # as if killed after it
    train(resumed, "kd", True, *saves)
    assert f"Resuming from {resumed / 'checkpoint-2'}" in (resumed / "launch.log").read_text()
    assert largest_difference(saved_weights(resumed), saved_weights(uninterrupted)) == 0.0


@pytest.mark.slow
def test_the_fsdp2_config_on_cpus_stops_in_one_line_instead_of_running_ddp(tmp_path):
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/fsdp2.yaml",
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()),
        "depo_trl/scripts/depo.py", "--config", "recipes/tiny/depo.yaml", "--output_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=run_environment())
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("depo-train: error:")]
    assert errors and "FSDP config on CPUs: Accelerate runs MULTI_CPU there" in errors[0]
    assert not (tmp_path / "run").exists()
