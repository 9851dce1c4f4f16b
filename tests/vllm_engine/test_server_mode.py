"""DePO with vLLM generation in server mode, on a CPU: the server started by the project's launcher and the trainer
by `depo-train`, both with the options docs/vllm-on-cpu.md gives; the weights reach the server through vLLM's
reload_weights.

Rollouts, their log-probabilities and TRL's importance-sampling correction come from the real engine, and after a
training step the server scores a fixed completion with the trained weights.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import psutil
import pytest
import requests
import yaml

from ..helpers import ROOT, free_port, run_environment, step_logs
from .scoring import hf_log_probs, reference_sequence


pytest.importorskip("vllm", reason="vLLM runs in its own environment: make test-vllm")

RECIPE = os.path.join(ROOT, "recipes", "smollm2-135m-instruct", "depo.yaml")
# vLLM's CPU build reserves this much memory (GiB) for its KV cache (its default is sized for real serving); the
# engine and the trainer take turns, so each may use every core
VLLM_ENVIRONMENT = {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": str(os.cpu_count())}
# Two short steps of SmolLM2 with a checkpoint after each; half of each group rewarded whatever the model says, so
# both terms have something to train
TRAINING_ARGUMENTS = [
    "--reward_funcs", "tests.helpers.alternating_reward",
    "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1", "--learning_rate", "1e-4",
    "--per_device_train_batch_size", "4", "--num_generations", "2", "--max_completion_length", "16",
    "--max_long_prompt_length", "768", "--distillation_forward_tokens", "900",
]  # fmt: skip


def recipe_for(model_dir: str, data_dir: str, folder) -> str:
    """The shipped SmolLM2 recipe, pointed at the model and data the tests built."""
    with open(RECIPE) as handle:
        recipe = yaml.safe_load(handle)
    recipe.update(model_name_or_path=model_dir, dataset_name=data_dir)
    path = os.path.join(folder, "recipe.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(recipe, handle)
    return path


def port_is_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def vllm_server(recipe: str, port: int, log_path):
    """`python -m depo_trl.scripts.vllm_server` on a loopback port, until it answers `/health`; stopped by its process
    group when the block ends, whether the test passed or not."""
    command = [
        sys.executable, "-m", "depo_trl.scripts.vllm_server", "--config", recipe,
        "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
    ]  # fmt: skip
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=run_environment(**VLLM_ENVIRONMENT),
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not port_is_open(port) or requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code != 200:
            assert server.poll() is None, f"the server exited: {open(log_path).read()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer in 300 s: {open(log_path).read()[-3000:]}"
            time.sleep(2)
        yield server
    finally:
        group = [p for p in psutil.process_iter(["pid"]) if _group_of(p.info["pid"]) == server.pid]
        os.killpg(server.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(group, timeout=30)
        for process in alive:
            process.kill()
        server.wait(timeout=30)


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def served_log_probs(port: int, sequence: list[int], prompt_length: int) -> list[float]:
    """The server's log-probabilities of `sequence[prompt_length:]` given what precedes each token."""
    from trl.generation.vllm_client import VLLMClient

    client = VLLMClient(base_url=f"http://127.0.0.1:{port}", connection_timeout=30)
    result = client.get_sequence_logprobs([sequence], [prompt_length], top_logprobs=1)
    return [token[0] for token in result["actual_logprobs"][0]]


@pytest.mark.slow
def test_server_mode_trains_through_the_real_engine_and_serves_the_trained_weights(
    smollm2_dir, smollm2_data, tmp_path
):
    recipe = recipe_for(smollm2_dir, smollm2_data, tmp_path)
    port = free_port()
    run = tmp_path / "run"
    sequence, prompt_length = reference_sequence(smollm2_dir)
    with vllm_server(recipe, port, tmp_path / "server.log") as server:
        before = served_log_probs(port, sequence, prompt_length)
        command = [
            os.path.join(os.path.dirname(sys.executable), "depo-train"), "--config", recipe, "--output_dir", str(run),
            "--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_host", "127.0.0.1",
            "--vllm_server_port", str(port),
            *TRAINING_ARGUMENTS,
        ]  # fmt: skip
        result = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=run_environment(**VLLM_ENVIRONMENT)
        )
        assert result.returncode == 0, result.stderr[-4000:]
        after = served_log_probs(port, sequence, prompt_length)
        server_pid = server.pid
    assert not port_is_open(port) and not psutil.pid_exists(server_pid)

    # Each sync's weights were removed once the server had reloaded them: nothing of them is left for a push
    assert not [path for path in run.rglob("*") if "vllm_weights" in path.name]

    logs = step_logs(run)
    assert len(logs) == 2
    for log in logs:  # the rollouts came from vLLM: TRL measured its sampler against the trainer
        assert "sampling/importance_sampling_ratio/mean" in log and log["depo/kd_tokens"] > 0
    # The server generated step 2's rollouts with the weights after step 1, which checkpoint-1 holds
    trained = hf_log_probs(run / "checkpoint-1", sequence, prompt_length)
    original = hf_log_probs(smollm2_dir, sequence, prompt_length)
    assert max(abs(a - b) for a, b in zip(before, original)) < 1e-3  # float32 on both sides
    assert max(abs(a - b) for a, b in zip(after, trained)) < 1e-3
    assert max(abs(a - b) for a, b in zip(trained, original)) > 1e-2


@pytest.mark.slow
def test_the_documented_server_and_trainer_run_as_written(tmp_path):
    """docs/vllm-on-cpu.md's server and trainer, each command as written, in a copy of the repository (it writes
    models/, data/ and runs/), the server in the background as a second shell would hold it."""
    from ..docs.blocks import repository_copy, run_as_written, shell_blocks, user_environment

    [block] = [block for block in shell_blocks() if block.document == "docs/vllm-on-cpu.md" and block.needs == {"cpu"}]
    [*prepare, serve, train] = block.commands()
    assert " -m depo_trl.scripts.vllm_server " in serve and train.startswith(".venv-vllm/bin/depo-train ")
    assert not port_is_open(8000), "the documented port 8000 is taken on this machine"
    copy = repository_copy(tmp_path / "repository")
    for command in prepare:  # the model's conversion and the data's build
        result = run_as_written(command, copy)
        assert result.returncode == 0, (command, result.stderr[-3000:])
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            ["bash", "-c", serve], cwd=copy, stdout=log, stderr=subprocess.STDOUT, env=user_environment(),
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not port_is_open(8000) or requests.get("http://127.0.0.1:8000/health", timeout=5).status_code != 200:
            assert server.poll() is None, f"the server exited: {log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer in 300 s: {log_path.read_text()[-3000:]}"
            time.sleep(2)
        result = run_as_written(train, copy, timeout=1200)
        assert result.returncode == 0, result.stderr[-4000:]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    logs = step_logs(os.path.join(copy, "runs", "smollm2-135m-instruct", "depo"))
    assert len(logs) == 2 and all("sampling/importance_sampling_ratio/mean" in log for log in logs)
