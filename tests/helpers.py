"""Helpers the test files share: launching the entry point on several processes, and reading what a run saved."""

import json
import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINT = os.path.join(ROOT, "depo_trl", "scripts", "depo.py")
WARM_START = os.path.join(ROOT, "depo_trl", "toy", "shipped_warm_start")

# `accelerate launch` options per backend. `--multi_gpu` on a machine without CUDA is torchrun with gloo (`--cpu`
# alone would start one process); DeepSpeed detects the CPU accelerator and falls back to gloo by itself.
BACKENDS = {
    "ddp": ["--multi_gpu"],
    "zero2": ["--use_deepspeed", "--zero_stage", "2"],
    "zero3": ["--use_deepspeed", "--zero_stage", "3", "--zero3_init_flag", "true", "--zero3_save_16bit_model", "true"],
}


def free_port() -> int:
    """A TCP port nothing listens on right now, on the loopback interface."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_environment(**extra: str) -> dict[str, str]:
    """The environment of a launched run: offline, no W&B, one thread per process (two processes share the cores),
    and this repository importable (reward functions given by dotted path live in `tests`)."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
        **extra,
    }


def launch(
    arguments: list[str], backend: str = "ddp", processes: int = 2, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`accelerate launch` the training entry point with `arguments` on `processes` CPU processes. A hang (one
    process skipping a collective the other makes) shows up as a timeout."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *BACKENDS[backend], "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), ENTRY_POINT, *arguments,
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=run_environment())


def saved_weights(folder) -> dict[str, torch.Tensor]:
    """The parameters a run saved (`model.safetensors`), in float32. A tied output layer is left out: DeepSpeed's
    ZeRO-2 save writes it beside the embedding it shares, transformers' save does not."""
    weights = load_file(os.path.join(folder, "model.safetensors"))
    if "lm_head.weight" in weights and torch.equal(weights["lm_head.weight"], weights["model.embed_tokens.weight"]):
        del weights["lm_head.weight"]
    return {name: tensor.float() for name, tensor in weights.items()}


def largest_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two state dicts with the same names."""
    assert first.keys() == second.keys()
    return max((first[name] - second[name]).abs().max().item() for name in first)


def step_logs(folder) -> list[dict]:
    """The per-step training logs (`loss` and the DePO metrics) of a run's `trainer_state.json`."""
    with open(os.path.join(folder, "trainer_state.json")) as handle:
        return [log for log in json.load(handle)["log_history"] if "loss" in log]


def alternating_reward(completions, **kwargs) -> list[float]:
    """1, 0, 1, 0, ...: every group has correct and wrong rollouts, so advantages and distilled rollouts are both
    present whatever the model says."""
    return [float(index % 2 == 0) for index in range(len(completions))]
