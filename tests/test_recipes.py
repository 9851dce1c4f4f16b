"""The recipes (`recipes/`): one per run of the paper, each parses into the settings of the arm it is named after,
reads data built with its model's tokenizer; the tiny ones train the toy world's warm start."""

import glob
import os
import re

import pytest
import yaml

from depo_trl import ARMS, arm_for
from depo_trl.model_utils import load_tokenizer
from depo_trl.scripts.recipe import parse_recipe
from depo_trl.toy.world import build_toy_tokenizer

from .helpers import ROOT


RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "**", "*.yaml"), recursive=True))
# The paper's algorithms by the settings that make them in TRL: (loss_type, importance_sampling_level)
ALGORITHMS = {"grpo": ("grpo", "token"), "dapo": ("dapo", "token"), "gspo": ("grpo", "sequence")}


def test_there_is_a_recipe_per_run_of_the_paper():
    names = {os.path.relpath(path, os.path.join(ROOT, "recipes")) for path in RECIPES}
    for algorithm in ("grpo", "dapo", "gspo"):
        for arm in ("depo", "short", "long", "short-long"):
            assert f"qwen2.5-7b-instruct/{arm}-{algorithm}.yaml" in names
    assert {"qwen2.5-7b-instruct/depo-iw-dapo.yaml", "qwen2.5-7b-instruct/depo-iw-gspo.yaml"} <= names
    for model in ("qwen2.5-3b-instruct", "llama-3.2-3b-instruct", "llama-3.1-8b-instruct"):
        assert {f"{model}/{arm}-grpo.yaml" for arm in ("depo", "short", "long", "short-long")} <= names
    assert {f"tiny/{arm}.yaml" for arm in ARMS} <= names


def long_context(path: str) -> tuple[str, str | None]:
    """A recipe's name without its long-context suffix (`depo-grpo-128k` -> `depo-grpo`), and the suffix."""
    name = os.path.basename(path).removesuffix(".yaml")
    match = re.fullmatch(r"(.+)-(\d+k)", name)
    return (match[1], match[2]) if match else (name, None)


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: os.path.relpath(path, ROOT))
def test_every_recipe_parses_without_unknown_keys(path):
    # GPU recipes ask for bf16, which transformers refuses on a CPU-only machine unless told to use the CPU.
    script_args, training_args, model_args, recipe_path = parse_recipe(["--config", path, "--use_cpu", "true"])
    assert recipe_path == path
    # Named <arm>-<algorithm>[-<long context>].yaml (tiny: <arm>.yaml) after the arm its settings make
    arm = arm_for(training_args.rollout_context, training_args.distillation)
    name, _ = long_context(path)
    assert arm is not None and name in {arm.name, *(f"{arm.name}-{a}" for a in ALGORITHMS)}
    # ... and after the algorithm its settings make
    algorithm = name.removeprefix(arm.name).removeprefix("-")
    if algorithm:
        settings = (training_args.loss_type, training_args.importance_sampling_level)
        assert settings == ALGORITHMS[algorithm], (algorithm, settings)
    assert model_args.model_name_or_path and script_args.dataset_name
    assert script_args.reward_funcs == ["em"]
    with open(path) as handle:
        keys = set(yaml.safe_load(handle))
    assert "output_dir" in keys


@pytest.mark.parametrize("path", [p for p in RECIPES if "/tiny/" not in p], ids=lambda p: os.path.relpath(p, ROOT))
def test_each_model_reads_data_built_with_its_own_tokenizer(path):
    # Budgets are counted with the model's tokenizer, so each model's recipes have their own data folder, and a recipe
    # for longer contexts its own data built with its long budget
    text = open(path).read()
    recipe = yaml.safe_load(text)
    folder = os.path.basename(os.path.dirname(path))
    _, context = long_context(path)
    data = f"data/{folder}/musique_depo" + (f"_{context}" if context else "")
    assert recipe["dataset_name"] == data
    assert f"--tokenizer {recipe['model_name_or_path']}" in text and f"--output-dir {data}" in text
    if context:  # the long budget and the prompt limit within the positions the model's RoPE covers
        budget = recipe["max_long_prompt_length"]
        assert f"--long-budget {budget}" in text
        positions = recipe["model_init_kwargs"]["max_position_embeddings"]
        assert budget + recipe["max_completion_length"] <= positions and positions >= int(context[:-1]) * 1024


def test_unknown_recipe_keys_are_rejected(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model_name_or_path: x\ndataset_name: y\nuse_cpu: true\ndistilation: kd\n")
    with pytest.raises(ValueError, match="distilation"):
        parse_recipe(["--config", str(recipe)])


@pytest.mark.parametrize("path", [p for p in RECIPES if "/tiny/" in p], ids=lambda p: os.path.relpath(p, ROOT))
def test_tiny_recipes_train_the_warm_start_on_its_own_vocabulary(path):
    # A random model earns no exact-match reward, so nothing would train; the warm start answers most questions
    recipe = yaml.safe_load(open(path))
    assert recipe["model_name_or_path"] == "depo_trl/toy/shipped_warm_start"
    tokenizer = load_tokenizer(os.path.join(ROOT, recipe["model_name_or_path"]))
    assert tokenizer.get_vocab() == build_toy_tokenizer().get_vocab()
