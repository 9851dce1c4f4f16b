"""Pushing a run to the Hub, without a network: the files an upload of a run sends and leaves out, the model card it
carries, and the one-line errors of a push that cannot work, before training starts."""

import inspect
import os
import subprocess
import sys
from types import SimpleNamespace

import huggingface_hub
import pytest
import wandb
from huggingface_hub.errors import HfHubHTTPError
from transformers import Trainer

from depo_trl.hub import IGNORE_PATTERNS, check_push, upload_plan
from depo_trl.model_card import PAPER
from depo_trl.scripts.depo import main as train_main
from depo_trl.scripts.recipe import parse_recipe
from depo_trl.user_errors import UsageError

from .helpers import ROOT, run_environment


TINY_RECIPE = os.path.join(ROOT, "recipes", "tiny", "depo.yaml")
# What `save_model`, `save_state` and the model card leave in the output_dir of a tiny run
MODEL_FILES = [
    "README.md",
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "trainer_state.json",
    "training_args.bin",
]
IDENTITY = {"name": "you", "orgs": [{"name": "depo-lab"}], "auth": {"accessToken": {"role": "write"}}}


def write_files(folder, names: list[str]) -> None:
    for name in names:
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        with open(os.path.join(folder, name), "w") as handle:
            handle.write("{}")


def test_an_upload_leaves_out_what_trainer_push_to_hub_leaves_out():
    # The run's own push (`push_to_hub`) goes through Trainer.push_to_hub; a push after the fact must send the same
    source = inspect.getsource(Trainer.push_to_hub)
    assert 'ignore_patterns=["_*", f"{PREFIX_CHECKPOINT_DIR}-*"]' in source
    assert {"_*", "checkpoint-*"} <= set(IGNORE_PATTERNS)


def test_upload_plan_sends_the_model_and_leaves_out_checkpoints_weight_syncs_and_caches(tmp_path):
    left_out = [
        ".cache/huggingface/download/model.safetensors.metadata",
        "_vllm_weights/model.safetensors",
        "checkpoint-2/model.safetensors",
        "checkpoint-2/optimizer.pt",
        "vllm_weights/model.safetensors",
    ]
    sent = [*MODEL_FILES, "completions/completions_00002.parquet"]
    write_files(tmp_path, sent + left_out)
    assert upload_plan(str(tmp_path)) == (sorted(sent), sorted(left_out))


@pytest.fixture
def online(monkeypatch):
    """The Hub switched on, a token, and `whoami` answered by `identity` (a dict, or an exception to raise)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: CI exports HF_HUB_OFFLINE=1 before Python starts
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_token")

    def answer(identity):
        def whoami(self, token=None):
            if isinstance(identity, BaseException):
                raise identity
            return identity

        monkeypatch.setattr(huggingface_hub.HfApi, "whoami", whoami)

    return answer


def test_a_push_that_can_work_passes_the_checks(online):
    online(IDENTITY)
    assert check_push("--hub-model-id you/tiny", "you/tiny") == "you"
    assert check_push("--hub-model-id depo-lab/tiny", "depo-lab/tiny") == "you"
    assert check_push("--hub-model-id tiny", "tiny") == "you"


def http_error(status: int, message: str) -> HfHubHTTPError:
    return HfHubHTTPError(message, response=SimpleNamespace(status_code=status, headers={}, request=None))


@pytest.mark.parametrize(
    ("identity", "message"),
    [
        (
            ConnectionError("[Errno -2] Name or service not known"),
            "x: the Hub (https://huggingface.co) does not answer ([Errno -2] Name or service not known); check the "
            "network, or push later.",
        ),
        (
            http_error(401, "Invalid user token."),
            "x: the Hub refuses the token (Invalid user token.); log in again with `hf auth login --force` or set "
            "HF_TOKEN to a valid token.",
        ),
        (
            {"name": "you", "auth": {"accessToken": {"role": "read"}}},
            "x: the token of you is read-only; create one with write access at https://huggingface.co/settings/tokens "
            "and log in with it (`hf auth login --force`).",
        ),
        (
            IDENTITY,
            "x: you cannot create repositories under someone (the token's namespaces: you, depo-lab); use one of "
            "them, e.g. you/tiny.",
        ),
    ],
)
def test_a_push_that_cannot_work_stops_in_one_line(online, identity, message):
    online(identity)
    with pytest.raises(UsageError) as caught:
        check_push("x", "someone/tiny", instead="push later")
    assert str(caught.value) == message


def test_a_push_without_a_token_says_how_to_log_in(online, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(UsageError, match=r"^x: no Hugging Face token; log in with `hf auth login` or set HF_TOKEN"):
        check_push("x", "you/tiny")


def test_a_push_while_offline_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        UsageError, match=r"^x: the Hub is switched off here \(HF_HUB_OFFLINE=1\); unset HF_HUB_OFFLINE"
    ):
        check_push("x", "you/tiny")


def test_depo_train_with_push_to_hub_offline_stops_before_training(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "depo-train"), "--config", TINY_RECIPE,
         "--output_dir", str(run_dir), "--push_to_hub", "true", "--hub_model_id", "you/tiny-depo"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=run_environment(HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == (
        "depo-train: error: push_to_hub true (hub_model_id you/tiny-depo): the Hub is switched off here "
        "(HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE where the Hub is reachable, or set push_to_hub false and push the "
        f"run once it has finished: python -m depo_trl.scripts.push --run-dir {run_dir} --hub-model-id you/tiny-depo."
    )
    assert not run_dir.exists()


@pytest.mark.parametrize("token", [None, "hf_token"])
def test_depo_train_with_push_to_hub_and_no_login_or_no_hub_stops_before_training(
    online, monkeypatch, tmp_path, token
):
    online(ConnectionError("[Errno -2] Name or service not known"))  # as `whoami` fails here, without a network
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: token)
    arguments = ["--config", TINY_RECIPE, "--output_dir", str(tmp_path / "run"), "--push_to_hub", "true"]
    with pytest.raises(UsageError) as caught:
        train_main(*parse_recipe(arguments))
    expected = "no Hugging Face token; log in with `hf auth login`" if token is None else "the Hub (https://"
    assert str(caught.value).startswith(f"push_to_hub true: {expected}")
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished run of the tiny recipe (`depo-train --config recipes/tiny/depo.yaml`), with two checkpoints and
    the vLLM weight-sync folders of server-mode runs (`_vllm_weights`, and `vllm_weights` of older runs)."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    trainer = train_main(*parse_recipe(["--config", TINY_RECIPE, "--output_dir", str(run_dir), "--max_steps", "2",
                                        "--save_steps", "1"]))  # fmt: skip
    write_files(run_dir, ["_vllm_weights/model.safetensors", "vllm_weights/model.safetensors"])
    return trainer


def test_a_finished_tiny_run_uploads_its_model_tokenizer_and_card_only(tiny_run):
    sent, left_out = upload_plan(tiny_run.args.output_dir)
    assert sent == MODEL_FILES
    assert {name.split("/")[0] for name in left_out} == {
        "_vllm_weights", "checkpoint-1", "checkpoint-2", "vllm_weights"
    }  # fmt: skip
    assert "checkpoint-2/optimizer.pt" in left_out


def test_the_model_card_cites_the_paper_and_carries_the_settings_and_the_recipe(tiny_run, monkeypatch):
    card_path = os.path.join(tiny_run.args.output_dir, "README.md")
    with open(card_path) as handle:
        card = handle.read()
    assert PAPER["title"] == (
        "Decomposing Policy Optimization into Proxy Objective and Knowledge Distillation for Long-Context Reasoning"
    )
    assert f"This model was trained with DePO, from *{PAPER['title']}*" in card
    assert "| setting | value |" in card and "| `distillation` | `kd` |" in card and "| `loss_type` | `dapo` |" in card
    with open(TINY_RECIPE) as handle:
        assert f"### Recipe\n\n```yaml\n{handle.read().rstrip()}\n```" in card
    assert "# Model Card for run\n" in card  # the output_dir's name, as Trainer.push_to_hub names it
    assert "huggingface.co/datasets/recipes" not in card  # a local data file is no Hub dataset to link
    assert "wandb" not in card.lower()  # no W&B run here; with one (report_to: [wandb], online), TRL links it
    monkeypatch.setattr(wandb, "run", SimpleNamespace(url="https://wandb.ai/you/depo/runs/abc"))
    tiny_run.create_model_card(model_name="run")
    with open(card_path) as handle:
        trl_part = handle.read().split("## DePO")[0]
    assert 'alt="Visualize in Weights & Biases"' in trl_part and "(https://wandb.ai/you/depo/runs/abc)" in trl_part
