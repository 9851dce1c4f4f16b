"""`depo-train`'s command line as a person reads it: `--help` (the usage with `--config`, DePO's own settings),
`--help-all` (every setting, grouped), the message without arguments, and recipes that train without transformers'
deprecation warning about `gradient_checkpointing`."""

import dataclasses
import glob
import os
import subprocess
import sys
import warnings

import pytest
from trl import GRPOConfig

from depo_trl.config import DePOConfig
from depo_trl.scripts.recipe import DePOScriptArguments, format_help, make_parser, parse_recipe

from ..helpers import ROOT, run_environment


RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "**", "*.yaml"), recursive=True))
DEPO_TRAIN = os.path.join(os.path.dirname(sys.executable), "depo-train")


def depo_train(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DEPO_TRAIN, *arguments], cwd=ROOT, capture_output=True, text=True, timeout=300, env=run_environment()
    )


def options(text: str) -> set[str]:
    """The settings a help text lists, each at the start of its entry."""
    return {line.split()[0] for line in text.splitlines() if line.startswith("  --")}


def test_help_starts_with_the_usage_and_lists_depos_own_settings():
    result = depo_train("--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("usage: depo-train --config RECIPE [--setting value ...]\n")
    assert len(text.splitlines()) < 200
    own = {f.name for f in dataclasses.fields(DePOConfig)} - {f.name for f in dataclasses.fields(GRPOConfig)}
    script = {f.name for f in dataclasses.fields(DePOScriptArguments)}
    assert options(text) == {"--config", "--help-all", *(f"--{name}" for name in own | script)}
    assert "depo-train --config recipes/tiny/depo.yaml" in text and "depo-train --help-all" in text
    assert "Weight lambda of the long-context term" in text  # each setting with its help


def test_help_all_lists_every_setting_grouped_by_the_class_that_defines_it():
    text = format_help(full=True)
    # Each setting once, by its name (a setting that defaults to True also takes --no_<setting>, not listed)
    settings = {f"--{action.dest}" for action in make_parser()._actions if action.dest != "help"}
    assert options(text) - {"--config", "--help-all"} == settings
    titles = [line for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert titles == [
        "recipe:",
        "data and reward (DePOScriptArguments):",
        "DePO (DePOConfig; every GRPOConfig setting applies too):",
        "GRPO (TRL's GRPOConfig):",
        "training (transformers' TrainingArguments, with TRL's defaults):",
        "model (TRL's ModelConfig):",
        "Examples:",
    ]


def test_without_arguments_it_says_a_recipe_is_needed():
    result = depo_train()
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        "depo-train: error: --config: no recipe given; pass one, e.g. `depo-train --config recipes/tiny/depo.yaml` "
        "(the toy model, seconds on a CPU), or see `depo-train --help`.\n"
    )


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: os.path.relpath(path, ROOT))
def test_recipes_checkpoint_layers_without_a_deprecation_warning(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, training_args, _, _ = parse_recipe(["--config", path, "--use_cpu", "true"])
    assert not [warning for warning in caught if "gradient_checkpointing" in str(warning.message)]
    assert training_args.activation_checkpointing and training_args.gradient_checkpointing  # TRL reads the old name


def test_the_old_setting_name_still_works_with_transformers_warning():
    with pytest.warns(FutureWarning, match="`gradient_checkpointing` is deprecated"):
        args = DePOConfig(output_dir="run", use_cpu=True, bf16=False, gradient_checkpointing=False)
    assert args.activation_checkpointing is False and args.gradient_checkpointing is False
    args = DePOConfig(output_dir="run", use_cpu=True, bf16=False, activation_checkpointing=False)
    assert args.activation_checkpointing is False and args.gradient_checkpointing is False
