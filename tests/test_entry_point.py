"""The training entry point, its recipes, and the vLLM server launcher."""

import glob
import json
import os
import time

import pytest
import yaml
from transformers import AutoModelForCausalLM

from depo_trl import ARMS, arm_for
from depo_trl.model_utils import load_tokenizer
from depo_trl.scripts.depo import main
from depo_trl.scripts.recipe import parse_recipe
from depo_trl.toy.world import build_toy_tokenizer, generate_rows

from .helpers import WARM_START, largest_difference, launch, saved_weights, step_logs


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "**", "*.yaml"), recursive=True))
TINY_RECIPE = os.path.join(ROOT, "recipes", "tiny", "depo.yaml")


def test_there_is_a_recipe_per_run_of_the_paper():
    names = {os.path.relpath(path, os.path.join(ROOT, "recipes")) for path in RECIPES}
    for algorithm in ("grpo", "dapo", "gspo"):
        for arm in ("depo", "short", "long", "short-long"):
            assert f"qwen2.5-7b-instruct/{arm}-{algorithm}.yaml" in names
    assert {"qwen2.5-7b-instruct/depo-iw-dapo.yaml", "qwen2.5-7b-instruct/depo-iw-gspo.yaml"} <= names
    for model in ("qwen2.5-3b-instruct", "llama-3.2-3b-instruct", "llama-3.1-8b-instruct"):
        assert {f"{model}/{arm}-grpo.yaml" for arm in ("depo", "short", "long", "short-long")} <= names
    assert {f"tiny/{arm}.yaml" for arm in ARMS} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: os.path.relpath(path, ROOT))
def test_every_recipe_parses_without_unknown_keys(path):
    # GPU recipes ask for bf16, which transformers refuses on a CPU-only machine unless told to use the CPU.
    script_args, training_args, model_args, recipe_path = parse_recipe(["--config", path, "--use_cpu", "true"])
    assert recipe_path == path
    # Named <arm>-<algorithm>.yaml (tiny: <arm>.yaml) after the arm its settings make
    arm = arm_for(training_args.rollout_context, training_args.distillation)
    name = os.path.basename(path).removesuffix(".yaml")
    assert arm is not None and name in {arm.name, *(f"{arm.name}-{a}" for a in ("grpo", "dapo", "gspo"))}
    assert model_args.model_name_or_path and script_args.dataset_name
    assert script_args.reward_funcs == ["em"]
    with open(path) as handle:
        keys = set(yaml.safe_load(handle))
    assert "output_dir" in keys


@pytest.mark.parametrize("path", [p for p in RECIPES if "/tiny/" not in p], ids=lambda p: os.path.relpath(p, ROOT))
def test_each_model_reads_data_built_with_its_own_tokenizer(path):
    # Budgets are counted with the model's tokenizer, so each model's recipes have their own data folder
    text = open(path).read()
    recipe = yaml.safe_load(text)
    folder = os.path.basename(os.path.dirname(path))
    assert recipe["dataset_name"] == f"data/{folder}/musique_depo"
    assert f"--tokenizer {recipe['model_name_or_path']} --output-dir data/{folder}/musique_depo" in text


def test_unknown_recipe_keys_are_rejected(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model_name_or_path: x\ndataset_name: y\nuse_cpu: true\ndistilation: kd\n")
    with pytest.raises(ValueError, match="distilation"):
        parse_recipe(["--config", str(recipe)])


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


def test_shipped_tiny_assets_match_their_generator():
    with open(os.path.join(ROOT, "recipes", "tiny", "assets", "toy_world.jsonl")) as handle:
        shipped = [json.loads(line) for line in handle]
    assert shipped == json.loads(json.dumps(generate_rows(len(shipped), seed=0)))


@pytest.mark.parametrize("path", [p for p in RECIPES if "/tiny/" in p], ids=lambda p: os.path.relpath(p, ROOT))
def test_tiny_recipes_train_the_warm_start_on_its_own_vocabulary(path):
    # A random model earns no exact-match reward, so nothing would train; the warm start answers most questions
    recipe = yaml.safe_load(open(path))
    assert recipe["model_name_or_path"] == "depo_trl/toy/shipped_warm_start"
    tokenizer = load_tokenizer(os.path.join(ROOT, recipe["model_name_or_path"]))
    assert tokenizer.get_vocab() == build_toy_tokenizer().get_vocab()
