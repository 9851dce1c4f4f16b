"""Two CPU processes (torchrun with gloo): uneven work per process must neither hang nor desynchronise the model."""

import json
import os
import subprocess
import sys
import time

import pytest

from ..helpers import free_port, run_environment
from ..helpers import launch as launch_entry_point


def launch(model_dir, output_dir, scenario: str, *options: str) -> subprocess.CompletedProcess:
    script = os.path.join(os.path.dirname(__file__), "distributed_depo_run.py")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), script, model_dir, scenario, str(output_dir), *options,
    ]  # fmt: skip
    # `--multi_gpu` on a machine without CUDA starts torchrun with the gloo backend (`--cpu` would start one process).
    # A hang (a process skipping a collective the other makes) shows up as a timeout here.
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=run_environment())


def rank_results(output_dir) -> list[dict]:
    return [json.load(open(output_dir / f"rank{rank}.json")) for rank in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("forward_tokens", [None, 70], ids=["one-forward", "forwards-differ-per-process"])
def test_two_processes_where_only_one_has_correct_rollouts_complete(tiny_model_dir, tmp_path, forward_tokens):
    options = [] if forward_tokens is None else ["--forward-tokens", str(forward_tokens)]
    result = launch(tiny_model_dir, tmp_path, "one-process-correct", *options)
    assert result.returncode == 0, result.stderr[-4000:]

    ranks = rank_results(tmp_path)
    per_step = list(zip(ranks[0]["correct_rollouts_per_step"], ranks[1]["correct_rollouts_per_step"]))
    assert len(per_step) == 3
    assert all(sorted(counts) == [0, 2] for counts in per_step), per_step
    step_logs = [log for log in ranks[0]["log_history"] if "loss" in log]
    assert [log["depo/kd_fraction"] for log in step_logs] == [0.5, 0.5, 0.5]
    assert all(log["depo/kd_tokens"] > 0 for log in step_logs)
    assert ranks[0]["parameters"] == ranks[1]["parameters"]


@pytest.mark.slow
@pytest.mark.parametrize("distillation", ["kd", "iw"])
def test_uneven_forward_counts_finish_with_identical_parameters(tiny_model_dir, tmp_path, distillation):
    # Shared prefix, 150 tokens per forward: process 0 plans 1 forward; process 1 plans 4 (IW) or none (KD)
    result = launch(
        tiny_model_dir, tmp_path, "uneven-forwards", "--distillation", distillation, "--forward-tokens", "150"
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = rank_results(tmp_path)
    assert ranks[0]["parameters"] == ranks[1]["parameters"]
    step_logs = [log for log in ranks[0]["log_history"] if "loss" in log]
    assert len(step_logs) == 3
    if distillation == "iw":
        assert all(0.0 <= log["depo/iw_clip_ratio"] <= 1.0 for log in step_logs)
    else:
        assert [log["depo/kd_fraction"] for log in step_logs] == [0.5, 0.5, 0.5]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("scenario", "message"),
    [("overlong-eval", "max_long_prompt_length=200"), ("bad-answer", "`answer` must be a non-empty string")],
)
def test_a_bad_input_on_one_process_stops_both_with_the_same_message(tiny_model_dir, tmp_path, scenario, message):
    result = launch(tiny_model_dir, tmp_path, scenario)
    assert result.returncode == 0, result.stderr[-4000:]
    errors = [rank["error"] for rank in rank_results(tmp_path)]
    assert errors[0] == errors[1]
    assert message in errors[0]


@pytest.mark.slow
def test_a_failure_on_one_process_ends_both_with_the_error_printed_once(tmp_path):
    # Through the entry point: the reward raises on process 1 at its second call, while process 0 goes on into
    # the step's collectives (TRL gathers every process's rewards)
    started = time.monotonic()
    result = launch_entry_point(
        ["--config", "recipes/tiny/depo.yaml", "--output_dir", str(tmp_path / "run"),
         "--reward_funcs", "tests.helpers.reward_failing_on_process_1"]
    )  # fmt: skip
    assert time.monotonic() - started < 120
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert output.count("RuntimeError: the reward service failed on process 1") == 1


@pytest.mark.slow
def test_an_out_of_memory_in_one_process_s_long_pass_ends_both(tiny_model_dir, tmp_path):
    started = time.monotonic()
    result = launch(tiny_model_dir, tmp_path, "oom-on-process-1")
    assert time.monotonic() - started < 120
    assert result.returncode != 0
    assert (result.stdout + result.stderr).count("torch.OutOfMemoryError: out of memory in the long pass") == 1
