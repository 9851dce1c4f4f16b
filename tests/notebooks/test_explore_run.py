"""`notebooks/explore_run.ipynb` as Jupyter runs it: in the notebook's own folder, with its default run (`runs/demo`
of the repository), in a copy of the repository's layout so that a user's own `runs/demo` is never touched; its
one-line messages when there is no run or no logged step yet; and `make notebook`, which opens it."""

import functools
import os
import shutil
import subprocess

import pytest
from transformers import TrainerState

from depo_trl.scripts.depo import main as train_main
from depo_trl.scripts.recipe import parse_recipe
from depo_trl.toy import demo
from depo_trl.toy.training import ToySettings

from ..helpers import ROOT


nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
NOTEBOOK = os.path.join(ROOT, "notebooks", "explore_run.ipynb")


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """A folder laid out like the repository, holding the notebook; the notebook's default run is `runs/demo` in it."""
    os.makedirs(tmp_path / "notebooks")
    shutil.copy(NOTEBOOK, tmp_path / "notebooks")
    monkeypatch.delenv("DEPO_RUN_DIR", raising=False)
    return tmp_path


def execute(root) -> tuple[list[dict], dict | None]:
    """Runs every cell as Jupyter's "Run All" does, in `root/notebooks` (Jupyter's working directory for a notebook),
    stopping at the first error; returns the outputs of the cells that ran and that error's output, if any."""
    notebook = nbformat.read(os.path.join(root, "notebooks", "explore_run.ipynb"), as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(root / "notebooks")}}
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError:
        pass
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    errors = [output for output in outputs if output["output_type"] == "error"]
    return outputs, errors[0] if errors else None


def printed(outputs: list[dict]) -> str:
    return "".join(output.get("text", "") for output in outputs if output["output_type"] == "stream")


def test_notebook_says_in_one_line_that_there_is_no_run(layout):
    _, error = execute(layout)
    assert error is not None and len(error["traceback"]) == 1  # one line, no traceback
    line = error["traceback"][0]
    assert line.startswith(f"No run at {layout / 'runs' / 'demo'}: run `make demo`") and "set RUN_DIR" in line


def test_notebook_says_in_one_line_that_the_run_has_no_logged_step_yet(layout):
    # What a 3-step demo run saves: its state at the end, whose history holds only the training summary
    os.makedirs(layout / "runs" / "demo" / "depo")
    summary = {"step": 3, "epoch": 0.01, "train_loss": 0.9, "train_runtime": 4.2}
    TrainerState(global_step=3, logging_steps=10, log_history=[summary]).save_to_json(
        str(layout / "runs" / "demo" / "depo" / "trainer_state.json")
    )
    outputs, error = execute(layout)
    assert error is None
    lines = [line for line in printed(outputs).splitlines() if line.startswith("No logged step")]
    assert lines == [
        f"No logged step in {layout / 'runs' / 'demo' / 'depo' / 'trainer_state.json'} yet: the run logs every 10 "
        "steps (logging_steps) and has done 3; let it train longer (make demo runs 300 steps), or lower logging_steps."
    ]


@pytest.mark.slow
def test_notebook_runs_on_the_demo_run_where_make_demo_writes_it(layout, monkeypatch, capsys):
    # `make demo` with fewer steps and smaller batches, written where the notebook's default looks
    monkeypatch.setattr(demo, "ToySettings", functools.partial(ToySettings, eval_rows=16, prompts_per_step=2))
    demo.main(["--run-dir", str(layout / "runs" / "demo"), "--steps", "10"])
    assert "depo, 10 steps (" in capsys.readouterr().out  # within its time cap
    outputs, error = execute(layout)
    assert error is None, error
    text = printed(outputs)
    assert f"Run directory: {layout / 'runs' / 'demo'}\n" in text
    assert "trainer_state.json: 1 logged steps" in text and "completions_00010.parquet" in text
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) == 2  # the metrics over steps, and EM before/after


@pytest.mark.slow
def test_notebook_runs_on_a_training_output_dir_given_by_path(layout, monkeypatch, tmp_path):
    run_dir = tmp_path / "run"
    train_main(*parse_recipe([
        "--config", os.path.join(ROOT, "recipes", "tiny", "depo.yaml"), "--output_dir", str(run_dir),
        "--model_name_or_path", os.path.join(ROOT, "depo_trl", "toy", "shipped_warm_start"),
        "--dataset_name", os.path.join(ROOT, "recipes", "tiny", "assets", "toy_world.jsonl"),
        "--log_completions", "true", "--max_steps", "2",
    ]))  # fmt: skip
    monkeypatch.setenv("DEPO_RUN_DIR", str(run_dir))
    outputs, error = execute(layout)
    assert error is None, error
    text = printed(outputs)
    assert "logged steps" in text and "completions_" in text


def test_make_notebook_installs_jupyter_and_opens_the_notebook():
    commands = subprocess.run(
        ["make", "-n", "-B", "notebook"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert '.venv/bin/python -m pip install --quiet -e ".[notebook]"' in commands
    assert commands[-1].startswith(".venv/bin/jupyter lab --ServerApp.root_dir=")
    assert commands[-1].endswith(" notebooks/explore_run.ipynb")
