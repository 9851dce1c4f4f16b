"""`python -m depo_trl.scripts.push`: the dry run and the offline push as a user types them, and the push itself
with the Hub's API stood in for (no network here): what it uploads, the model card naming the repository, one-line
errors."""

import os
import subprocess
import sys
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub import RepoUrl
from trl.trainer.utils import generate_model_card

from depo_trl.hub import IGNORE_PATTERNS
from depo_trl.model_card import PAPER, card_for_repo
from depo_trl.scripts import push

from ..helpers import ROOT, run_environment


MODEL_FILES = ["README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
LEFT_OUT = ["_vllm_weights/model.safetensors", "checkpoint-2/model.safetensors", "checkpoint-2/optimizer.pt"]


def trl_card() -> str:
    """The model card TRL writes for a run trained without `push_to_hub` (no repository id yet)."""
    card = generate_model_card(
        base_model=None, model_name=None, hub_model_id=None, dataset_name=None, tags=["depo"], wandb_url=None,
        trackio_url=None, trainer_name="DePO", paper_title=PAPER["title"],
    )  # fmt: skip
    return str(card)


@pytest.fixture
def run_dir(tmp_path):
    """The output_dir of a finished run: its model files (one of 1 KiB), a checkpoint and the vLLM weight sync."""
    for name in MODEL_FILES + LEFT_OUT:
        os.makedirs(os.path.dirname(tmp_path / "run" / name), exist_ok=True)
        (tmp_path / "run" / name).write_text("x" * 1024 if name == "model.safetensors" else "{}")
    (tmp_path / "run" / "README.md").write_text(trl_card())
    return tmp_path / "run"


def run_push(*arguments: str, **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "depo_trl.scripts.push", *arguments], cwd=ROOT, capture_output=True, text=True,
        timeout=300, env=run_environment(**environment),
    )  # fmt: skip


def test_dry_run_lists_what_a_push_sends_and_leaves_out(run_dir):
    result = run_push("--run-dir", str(run_dir), "--hub-model-id", "you/tiny-depo", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{run_dir} -> https://huggingface.co/you/tiny-depo: 5 files, ")
    assert [line.split()[0] for line in lines[1:6]] == MODEL_FILES
    assert lines[6:] == [
        "left out:",
        "  _vllm_weights/ (1 file: names starting with _, such as the vLLM weight sync's _vllm_weights)",
        "  checkpoint-2/ (2 files: checkpoints, with their optimizer states)",
        "Dry run: nothing was sent (a push checks the login first: hf auth login, or HF_TOKEN).",
    ]


def test_push_while_offline_stops_in_one_line(run_dir):
    result = run_push("--run-dir", str(run_dir), "--hub-model-id", "you/tiny-depo", HF_HUB_OFFLINE="1")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        "python -m depo_trl.scripts.push: error: --hub-model-id you/tiny-depo: the Hub is switched off here "
        "(HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE where the Hub is reachable.\n"
    )


@pytest.fixture
def hub(monkeypatch):
    """The Hub's API stood in for: logged in as `you`, recording the repositories created and the uploads."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: CI exports HF_HUB_OFFLINE=1 before Python starts
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_token")
    calls = SimpleNamespace(created=[], uploads=[])

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        calls.created.append((repo_id, private))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kwargs):
        calls.uploads.append(kwargs)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/0123")

    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda self, token=None: {"name": "you", "orgs": []})
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


def test_push_uploads_the_run_with_a_card_naming_the_repository(hub, run_dir, capsys):
    push.main(["--run-dir", str(run_dir), "--hub-model-id", "tiny-depo", "--private"])
    assert hub.created == [("you/tiny-depo", True)]
    [upload] = hub.uploads
    assert upload["repo_id"] == "you/tiny-depo" and upload["folder_path"] == str(run_dir)
    assert upload["ignore_patterns"] == list(IGNORE_PATTERNS)
    card = (run_dir / "README.md").read_text()
    assert card == card_for_repo(trl_card(), "you/tiny-depo")
    assert "# Model Card for tiny-depo\n" in card and 'pipeline("text-generation", model="you/tiny-depo"' in card
    assert capsys.readouterr().out.endswith(
        "Pushed to https://huggingface.co/you/tiny-depo (https://huggingface.co/you/tiny-depo/commit/0123).\n"
    )


def test_an_upload_that_fails_says_so_in_one_line(hub, run_dir, monkeypatch, capsys):
    def refuse(self, **kwargs):
        raise OSError("403 Forbidden: you cannot write to you/tiny-depo")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", refuse)
    with pytest.raises(SystemExit) as caught:
        push.main(["--run-dir", str(run_dir), "--hub-model-id", "you/tiny-depo"])
    assert caught.value.code == 2
    assert capsys.readouterr().err == (
        f"{push.PROG}: error: --hub-model-id you/tiny-depo: the upload failed (403 Forbidden: you cannot write to "
        "you/tiny-depo); run the command again.\n"
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--run-dir", "runs/missing"],
            "--run-dir runs/missing: no such folder; pass the output_dir of a finished run.",
        ),
        (["--run-dir", "recipes"], "--run-dir recipes: no saved model (config.json or adapter_config.json); pass the"),
        (["--run-dir", "RUN", "--hub-model-id", "you/tiny depo"], "--hub-model-id you/tiny depo: not a repository id"),
    ],
)
def test_a_mistake_in_the_arguments_is_one_line(run_dir, capsys, monkeypatch, arguments, message):
    monkeypatch.chdir(ROOT)
    arguments = [str(run_dir) if argument == "RUN" else argument for argument in arguments]
    if "--hub-model-id" not in arguments:
        arguments += ["--hub-model-id", "you/tiny-depo"]
    with pytest.raises(SystemExit) as caught:
        push.main([*arguments, "--dry-run"])
    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"{push.PROG}: error: {message}") and error.count("\n") == 1
