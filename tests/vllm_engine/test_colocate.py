"""DePO with vLLM colocated in the training process, on a CPU: TRL builds the engine, the weights reach it through
vLLM's reload_weights from the parameters in memory, and after a training step the engine scores a fixed completion
with the trained weights."""

import json
import os
import subprocess
import sys

import pytest

from ..helpers import ROOT, run_environment
from .test_server_mode import TRAINING_ARGUMENTS, VLLM_ENVIRONMENT, recipe_for


pytest.importorskip("vllm", reason="vLLM runs in its own environment: make test-vllm")


def mean_gap(first: list[float], second: list[float]) -> float:
    return sum(abs(a - b) for a, b in zip(first, second, strict=True)) / len(first)


@pytest.mark.slow
def test_colocated_engine_trains_and_takes_the_trained_weights(smollm2_dir, smollm2_data, tmp_path):
    recipe = recipe_for(smollm2_dir, smollm2_data, tmp_path)
    result_path = tmp_path / "result.json"
    command = [
        sys.executable, os.path.join(ROOT, "tests", "vllm_engine", "colocated_run.py"), str(result_path),
        "--config", recipe, "--output_dir", str(tmp_path / "run"), "--use_vllm", "true", "--vllm_mode", "colocate",
        *TRAINING_ARGUMENTS,
    ]  # fmt: skip
    process = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=run_environment(**VLLM_ENVIRONMENT)
    )
    assert process.returncode == 0, process.stderr[-4000:]
    result = json.loads(result_path.read_text())

    assert len(result["logs"]) == 2
    for log in result["logs"]:  # the rollouts came from the engine: TRL measured its sampler against the trainer
        assert "sampling/importance_sampling_ratio/mean" in log and log["depo/kd_tokens"] > 0
    # The colocated engine runs in bfloat16 (vLLM's CPU default for a float32 checkpoint): it is compared with the
    # checkpoints' own bfloat16 scores, and its gap to them on the original weights (the kernels' differences) is the
    # tolerance; the training step moved the scores several times further
    kernels = mean_gap(result["served_original"], result["original_bf16"])
    assert mean_gap(result["served_trained"], result["trained_bf16"]) < 2 * kernels
    assert mean_gap(result["trained"], result["original"]) > 4 * kernels
    assert mean_gap(result["served_trained"], result["original_bf16"]) > 4 * kernels
