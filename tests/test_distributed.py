import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("micro_batch_size", [None, 1], ids=["one-chunk", "chunks-differ-per-process"])
def test_two_processes_where_only_one_has_correct_rollouts_complete(tiny_model_dir, tmp_path, micro_batch_size):
    script = os.path.join(os.path.dirname(__file__), "distributed_depo_run.py")
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29517",
        script,
        tiny_model_dir,
        str(tmp_path),
        *([] if micro_batch_size is None else [str(micro_batch_size)]),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    # `--multi_gpu` on a machine without CUDA starts torchrun with the gloo backend (`--cpu` would start one process).
    # A hang (a process skipping the long-context forward) shows up as a timeout here.
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-4000:]

    ranks = [json.load(open(tmp_path / f"rank{rank}.json")) for rank in (0, 1)]
    per_step = list(zip(ranks[0]["correct_rollouts_per_step"], ranks[1]["correct_rollouts_per_step"]))
    assert len(per_step) == 3
    assert all(sorted(counts) == [0, 2] for counts in per_step), per_step
    step_logs = [log for log in ranks[0]["log_history"] if "loss" in log]
    assert [log["depo/kd_fraction"] for log in step_logs] == [0.5, 0.5, 0.5]
    assert all(log["depo/kd_tokens"] > 0 for log in step_logs)
