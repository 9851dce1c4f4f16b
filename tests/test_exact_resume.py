"""A run killed with SIGKILL at a random point and started again with the same command ends with exactly the
parameters of a run that was never interrupted: one process and two, DePO and DePO-IW, a generation batch spanning
two optimizer steps (`steps_per_generation` 2, as every GSPO recipe spans several), evaluation during training.

Checkpoints sit at generation-batch boundaries (DePOConfig refuses a `save_steps` inside one: TRL would generate the
batch's rollouts again on resume), and the entry point resumes from the last complete one.
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from depo_trl import DePOConfig

from .helpers import BACKENDS, ENTRY_POINT, ROOT, free_port, run_environment, saved_weights


def command(output_dir, distillation: str, processes: int) -> list[str]:
    recipe = "recipes/tiny/depo.yaml" if distillation == "kd" else "recipes/tiny/depo-iw.yaml"
    arguments = [
        "--config", recipe, "--output_dir", str(output_dir), "--steps_per_generation", "2",
        "--gradient_accumulation_steps", "1", "--save_steps", "2", "--max_steps", "8",
        "--eval_strategy", "steps", "--eval_steps", "3", "--dataset_test_split", "train",
        "--per_device_eval_batch_size", "8",
    ]  # fmt: skip
    if processes == 1:
        return [sys.executable, ENTRY_POINT, *arguments]
    return [
        sys.executable, "-m", "accelerate.commands.launch", *BACKENDS["ddp"], "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), ENTRY_POINT, *arguments,
    ]  # fmt: skip


def run(arguments: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(arguments, cwd=ROOT, capture_output=True, text=True, timeout=600, env=run_environment())
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def kill_after_first_checkpoint(arguments: list[str], output_dir, seed: int) -> float:
    """Start the run, and SIGKILL it (every process of it) at a random moment after its first checkpoint is complete;
    return when it was killed, in seconds after that checkpoint."""
    process = subprocess.Popen(
        arguments, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=run_environment(),
        start_new_session=True,
    )  # fmt: skip
    try:
        state = output_dir / "checkpoint-2" / "trainer_state.json"
        deadline = time.monotonic() + 300
        while not state.exists():
            assert process.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no first checkpoint in 300 s"
            time.sleep(0.05)
        delay = random.Random(seed).uniform(0.0, 2.0)
        time.sleep(delay)
        assert process.poll() is None, "the run finished before it could be killed"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    return delay


@pytest.mark.slow
@pytest.mark.parametrize(("processes", "distillation"), [(1, "kd"), (2, "iw")], ids=["1-process-kd", "2-processes-iw"])
def test_a_run_killed_at_a_random_point_resumes_to_the_uninterrupted_parameters(tmp_path, processes, distillation):
    uninterrupted = tmp_path / "uninterrupted"
    run(command(uninterrupted, distillation, processes))
    killed = tmp_path / "killed"
    arguments = command(killed, distillation, processes)
    delay = kill_after_first_checkpoint(arguments, killed, seed=processes)
    assert not (killed / "model.safetensors").exists()  # it did not get to the end
    resumed = run(arguments)
    assert "Resuming from" in resumed.stdout + resumed.stderr, delay
    reference = saved_weights(uninterrupted)
    for name, tensor in saved_weights(killed).items():
        assert torch.equal(tensor, reference[name]), (name, delay)


def test_a_checkpoint_inside_a_generation_batch_is_refused():
    with pytest.raises(ValueError, match="save_steps=3: a generation batch spans 2 optimizer steps"):
        DePOConfig(
            output_dir="unused", use_cpu=True, steps_per_generation=2, gradient_accumulation_steps=1, save_steps=3
        )
    # GSPO recipes: 16 micro-steps per generation, 2 per optimizer step
    with pytest.raises(ValueError, match="set save_steps to a multiple of 8"):
        DePOConfig(output_dir="unused", use_cpu=True, steps_per_generation=16, gradient_accumulation_steps=2)
    DePOConfig(
        output_dir="unused", use_cpu=True, steps_per_generation=16, gradient_accumulation_steps=2, save_steps=24
    )
