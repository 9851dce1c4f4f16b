"""The prepared GPU check cannot rot: its CPU dry run (small sizes, the same steps and the same report) passes."""

import json
import os
import subprocess
import sys

import pytest

from ..helpers import ROOT, run_environment


@pytest.mark.slow
def test_the_gpu_check_runs_every_step_on_a_cpu(tmp_path):
    command = [
        sys.executable, os.path.join(ROOT, "gpu_check", "gpu_check.py"), "--device", "cpu", "--quick",
        "--output-dir", str(tmp_path), "--time-limit", "600",
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=run_environment(OMP_NUM_THREADS="2")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = report["steps"]
    assert list(steps) == [
        "long_pass_exactness", "depo_steps", "fsdp2_steps", "sequence_parallel_steps", "long_pass_scaling", "step_cost"
    ]  # fmt: skip
    assert all(step["status"] == "ok" for step in steps.values()), {n: s.get("error") for n, s in steps.items()}
    cases = steps["long_pass_exactness"]["result"]["cases"]
    assert all(case["passed"] for case in cases)
    assert {case["plan"] for case in cases} == {"held", "without_layer_checkpoints"}
    assert steps["depo_steps"]["result"]["largest_parameter_change"] > 0
    assert "Accelerate runs MULTI_CPU there" in steps["fsdp2_steps"]["result"]["refused_on_cpu"]
    split = steps["sequence_parallel_steps"]["result"]
    assert split["largest_difference"] < 1e-5 < 1e-3 < split["parameters_moved"]
    shared = [p for p in steps["long_pass_scaling"]["result"]["points"] if p["method"] == "shared"]
    assert shared and all(p["peak_mib"] >= 0 and p["predicted_mib"] > 0 for p in shared)
    assert steps["step_cost"]["result"]["depo_step_ratio"] > 0
    summary = (tmp_path / "gpu_check.md").read_text()
    assert summary.startswith("# GPU check:") and "## step_cost: ok" in summary


@pytest.mark.slow
def test_the_gpu_check_refuses_cuda_where_there_is_none(tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    command = [sys.executable, os.path.join(ROOT, "gpu_check", "gpu_check.py"), "--output-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=run_environment())
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("python gpu_check/gpu_check.py: error: --device cuda")
