"""The training entry point (`depo_trl/scripts/depo.py`): a bad configuration fails fast with what to do, and the
tiny recipe trains on two processes, saves and resumes."""

import json
import os
import time

import pytest
from transformers import AutoModelForCausalLM

from depo_trl.model_utils import load_tokenizer
from depo_trl.scripts.depo import main
from depo_trl.scripts.recipe import parse_recipe

from ..helpers import ROOT, WARM_START, largest_difference, launch, saved_weights, step_logs


TINY_RECIPE = os.path.join(ROOT, "recipes", "tiny", "depo.yaml")


def tiny_args(tmp_path, *overrides):
    return parse_recipe(["--config", TINY_RECIPE, "--output_dir", str(tmp_path / "run"), *overrides])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--reward_funcs", "exact_match"], "reward_funcs 'exact_match': unknown reward function"),
        (["--dataset_name", "./data/missing_depo"], "no such file or folder; build it"),
        (["--dataset_name", "data/missing.jsonl"], "no such file or folder; build it"),
        (["--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_port", "9"], "no vLLM server answers"),
    ],
)
def test_bad_configuration_fails_fast_with_what_to_do(tmp_path, overrides, message):
    start = time.monotonic()
    with pytest.raises(ValueError, match=message):
        main(*tiny_args(tmp_path, *overrides))
    assert time.monotonic() - start < 30


def launch_tiny(tmp_path, *overrides):
    result = launch(["--config", TINY_RECIPE, "--output_dir", str(tmp_path / "run"), *overrides])
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_tiny_recipe_trains_on_two_processes_saves_and_resumes(tmp_path):
    launch_tiny(tmp_path)
    run = tmp_path / "run"
    model = AutoModelForCausalLM.from_pretrained(run)
    tokenizer = load_tokenizer(str(run))
    assert model.config.vocab_size == len(tokenizer)
    assert largest_difference(saved_weights(run), saved_weights(WARM_START)) > 1e-4
    state = json.loads((run / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    logs = step_logs(run)
    assert all({"depo/kd_loss", "depo/kd_fraction", "depo/kd_tokens", "depo/logp_gap"} <= set(log) for log in logs)
    # The distillation term ran: rollouts passed the exact-match threshold and were scored under the long prompt
    assert all(log["depo/kd_tokens"] > 0 and log["depo/kd_fraction"] > 0 for log in logs)
    assert any(log["depo/logp_gap"] != 0 for log in logs)
    card = (run / "README.md").read_text()
    assert "- depo" in card and "## DePO" in card and "distillation: kd" in card

    output = launch_tiny(tmp_path, "--max_steps", "6")
    assert "Resuming from" in output and "checkpoint-4" in output
    state = json.loads((run / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert [log["step"] for log in state["log_history"] if "loss" in log] == [1, 2, 3, 4, 5, 6]
