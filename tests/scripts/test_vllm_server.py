"""`python -m depo_trl.scripts.vllm_server` and the make targets that launch on GPUs: the command and environment the
server runs with (dry runs, and the exec stopped short), where it listens, and one line when vLLM is missing."""

import importlib.util
import os
import shlex
import subprocess

import pytest
import yaml

from depo_trl.scripts import vllm_server

from ..helpers import ROOT


GPU_RECIPE = os.path.join(ROOT, "recipes", "qwen2.5-7b-instruct", "depo-grpo.yaml")


def recipe_with_weight_sync(tmp_path, weight_sync: str) -> str:
    with open(GPU_RECIPE) as handle:
        recipe = yaml.safe_load(handle)
    recipe["vllm_weight_sync"] = weight_sync
    path = tmp_path / f"{weight_sync}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def launched(monkeypatch, argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment `main` hands to `os.execve`, with vLLM taken as installed."""
    calls = []
    monkeypatch.setattr(vllm_server, "require_vllm", lambda: None)
    monkeypatch.setattr(
        vllm_server.os, "execve", lambda path, command, environment: calls.append((command, environment))
    )
    vllm_server.main(argv)
    [(command, environment)] = calls
    return command, environment


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.mark.parametrize("weight_sync", ["trl", "reload"])
@pytest.mark.parametrize("host", [None, "10.1.2.3"])
def test_the_server_runs_in_dev_mode_on_the_host_it_is_given(monkeypatch, capsys, tmp_path, weight_sync, host):
    recipe = recipe_with_weight_sync(tmp_path, weight_sync)
    argv = ["--config", recipe, "--port", "8011", *(["--host", host] if host else [])]
    command, environment = launched(monkeypatch, argv)
    # Both weight routes go through endpoints of vLLM's dev mode (see DEV_MODE_ENVIRONMENT's comment)
    assert environment["VLLM_SERVER_DEV_MODE"] == "1"
    assert option(command, "--host") == (host or "127.0.0.1")  # loopback unless told: trainers on this node only
    assert option(command, "--port") == "8011"
    # The same server takes either route: TRL's NCCL transfer and the reload method of depo_trl.vllm_worker
    assert option(command, "--weight-transfer-config") == '{"backend": "nccl"}'
    assert option(command, "--worker-extension-cls") == "depo_trl.vllm_worker.WeightReloadExtension"
    printed = capsys.readouterr().out.strip()
    assert printed == f"Starting: VLLM_SERVER_DEV_MODE=1 {shlex.join(['vllm', *command[command.index('serve') :]])}"

    vllm_server.main([*argv, "--dry-run"])
    assert capsys.readouterr().out.strip() == printed.removeprefix("Starting: ")


def test_without_vllm_the_server_stops_in_one_line_naming_the_install_target(monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    monkeypatch.setattr(vllm_server.os, "execve", lambda *args: pytest.fail("started without vLLM"))
    with pytest.raises(SystemExit) as stop:
        vllm_server.main(["--config", GPU_RECIPE])
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # not even the `Starting:` line
    [line] = captured.err.splitlines()
    assert line.startswith("python -m depo_trl.scripts.vllm_server: error: vllm: not installed in ")
    assert "`make install-gpu`" in line


def venv_has_vllm() -> bool:
    python = os.path.join(ROOT, ".venv", "bin", "python")
    check = [python, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"]
    return os.path.exists(python) and subprocess.run(check).returncode == 0


@pytest.mark.parametrize("target", ["vllm-serve", "train-with-server", "train"])
def test_make_targets_without_vllm_stop_in_one_line_naming_install_gpu(target):
    if venv_has_vllm():
        pytest.skip("this .venv has vLLM: the target would launch")
    result = subprocess.run(["make", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert result.stdout == ""  # nothing ran
    [line] = result.stderr.splitlines()
    assert f"*** {target}: vLLM is not installed in .venv" in line and "run `make install-gpu` first" in line


def test_make_install_gpu_on_a_machine_without_nvidia_driver_stops_in_one_line():
    if subprocess.run(["sh", "-c", "command -v nvidia-smi"], capture_output=True).returncode == 0:
        pytest.skip("this machine has an NVIDIA driver: the target would install")
    result = subprocess.run(["make", "install-gpu"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert "*** install-gpu: no NVIDIA driver here" in line and "`make vllm-env`" in line


def test_the_server_is_sized_for_short_prompts(capsys):
    vllm_server.main(["--config", GPU_RECIPE, "--dry-run"])
    command = shlex.split(capsys.readouterr().out)
    assert command[:4] == ["VLLM_SERVER_DEV_MODE=1", "vllm", "serve", "Qwen/Qwen2.5-7B-Instruct"]
    # DePO samples from the short prompts only: the recipe's short budget plus its completion length
    assert option(command, "--max-model-len") == "2560" and "--enable-prefix-caching" in command
    assert "--hf-overrides" not in command  # the model as it is published


def test_the_server_samples_with_the_rope_scaling_the_recipe_trains_with(capsys):
    recipe = os.path.join(ROOT, "recipes", "qwen2.5-7b-instruct", "depo-grpo-128k.yaml")
    vllm_server.main(["--config", recipe, "--dry-run"])
    command = shlex.split(capsys.readouterr().out)
    overrides = yaml.safe_load(option(command, "--hf-overrides"))
    assert overrides == yaml.safe_load(open(recipe))["model_init_kwargs"]
    assert overrides["rope_parameters"]["rope_type"] == "yarn" and option(command, "--max-model-len") == "2560"
