"""The recipe a run is launched with: the entry point's script arguments, and the parser that reads a YAML recipe with
command-line overrides into them, `DePOConfig` and TRL's `ModelConfig`, reporting mistakes as one line.

`depo-train --help` shows the usage and DePO's own settings; `depo-train --help-all` every setting, grouped by the
class that defines it."""

import argparse
import copy
import dataclasses
import difflib
import re
import shutil
import sys
import textwrap
from dataclasses import dataclass, field

import yaml
from transformers import TrainingArguments
from trl import GRPOConfig, ModelConfig, ScriptArguments, TrlParser

from ..config import DePOConfig
from ..rewards import REWARD_FUNCTIONS
from ..user_errors import UsageError, require_file


@dataclass
class DePOScriptArguments(ScriptArguments):
    """Script arguments of the DePO entry point, on top of TRL's `ScriptArguments` (`dataset_name`, splits, ...).

    `dataset_name` is a Hub dataset id, a folder written by `python -m depo_trl.data.build` (or any
    `save_to_disk` output), or a `.jsonl` / `.json` / `.parquet` file.
    """

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "The training data: a Hub dataset id, a folder written by python -m depo_trl.data.build (or any "
            "save_to_disk output), or a .jsonl / .json / .parquet file, with prompt, long_prompt and answer columns."
        },
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["em"],
        metadata={
            "help": f"Reward functions: {sorted(REWARD_FUNCTIONS)} or a dotted import path "
            "('my_lib.rewards.custom_reward'). Their weighted sum is the reward the distillation threshold applies to."
        },
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "Optional system message prepended to both the short and the long prompt."}
    )


class RecipeParser(TrlParser):
    """TrlParser whose mistakes (an unknown key, a bad value, a missing recipe) are one-line [`UsageError`]s."""

    def error(self, message: str):
        raise UsageError(f"{message} (see depo-train --help)")


def make_parser() -> TrlParser:
    return RecipeParser((DePOScriptArguments, DePOConfig, ModelConfig), prog="depo-train")


USAGE = "depo-train --config RECIPE [--setting value ...]"
EXAMPLE = "depo-train --config recipes/tiny/depo.yaml"
_DESCRIPTION = (
    "Trains DePO, or one of the paper's baselines, with the settings of a YAML recipe "
    "(recipes/<model>/<arm>-<algorithm>.yaml; recipes/tiny/*.yaml train a toy model on a CPU in seconds). Any setting "
    "can also be given on the command line, where it wins over the recipe."
)
_EXAMPLES = [
    f"{EXAMPLE} --output_dir runs/tiny/try --max_steps 8",
    "accelerate launch --config_file accelerate_configs/zero3.yaml depo_trl/scripts/depo.py \\\n"
    "    --config recipes/qwen2.5-7b-instruct/depo-grpo.yaml",
]
_RECIPE_OPTIONS = [
    ("--config RECIPE", "The YAML recipe, e.g. recipes/tiny/depo.yaml."),
    ("-h, --help", "This help: the data and reward settings, and DePO's own."),
    ("--help-all", "Every setting: also TRL's GRPOConfig, transformers' TrainingArguments and TRL's ModelConfig."),
]


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _setting_groups(full: bool) -> list[tuple[str, set[str]]]:
    """(title, setting names) of each group of settings `--help` shows; `full`: every group of `--help-all`."""
    groups = [
        ("data and reward (DePOScriptArguments)", _field_names(DePOScriptArguments)),
        (
            "DePO (DePOConfig; every GRPOConfig setting applies too)",
            _field_names(DePOConfig) - _field_names(GRPOConfig),
        ),
    ]
    if full:
        groups += [
            ("GRPO (TRL's GRPOConfig)", _field_names(GRPOConfig) - _field_names(TrainingArguments)),
            ("training (transformers' TrainingArguments, with TRL's defaults)", _field_names(TrainingArguments)),
            ("model (TRL's ModelConfig)", _field_names(ModelConfig)),
        ]
    return groups


def _shown(action: argparse.Action) -> argparse.Action:
    """The setting as the help lists it: its underscore spelling only (the parser also takes --dashed-names), and
    its default when it has one."""
    shown = copy.copy(action)
    shown.option_strings = action.option_strings[:1]
    if action.default is not None:
        shown.help = f"{action.help or ''} (default: %(default)s)".lstrip()
    return shown


def format_help(full: bool = False) -> str:
    """`depo-train --help` (`full`: `--help-all`): the usage, what the command does, then the settings by group, each
    with the parser's help and default."""
    width = shutil.get_terminal_size().columns - 2
    formatter = argparse.RawDescriptionHelpFormatter("depo-train", width=width)
    formatter.add_usage(USAGE, [], [])
    formatter.add_text(textwrap.fill(_DESCRIPTION, width))
    formatter.start_section("recipe")
    formatter.add_arguments(
        [argparse.Action([name], dest=name, nargs=0, help=description) for name, description in _RECIPE_OPTIONS]
    )
    formatter.end_section()
    first_action = {}
    for action in make_parser()._actions:  # argparse lists its actions nowhere else
        first_action.setdefault(action.dest, action)  # not the --no_<setting> of a setting that defaults to True
    for title, names in _setting_groups(full):
        formatter.start_section(title)
        formatter.add_arguments([_shown(action) for dest, action in first_action.items() if dest in names])
        formatter.end_section()
    hint = "" if full else "\nEvery other setting (TRL's, transformers'): depo-train --help-all"
    formatter.add_text("Examples:\n" + "\n".join(f"  {example}" for example in _EXAMPLES) + hint)
    return formatter.format_help()


def _known_settings() -> list[str]:
    return [f.name for cls in (DePOScriptArguments, DePOConfig, ModelConfig) for f in dataclasses.fields(cls)]


def _unknown_keys_message(error: ValueError, recipe_path: str | None) -> str | None:
    """'recipe X: unknown setting distilation (did you mean distillation?)' for TrlParser's unknown-key errors."""
    pattern = r"(Unknown arguments from config file|Some specified arguments are not used by the .*?): (\[.*\])"
    match = re.match(pattern, str(error))
    if not match:
        return None
    keys = [item.lstrip("-") for item in re.findall(r"'(--[^']+)'", match.group(2))]
    known = _known_settings()
    described = []
    for key in keys:
        close = difflib.get_close_matches(key, known, n=1)
        described.append(f"{key} (did you mean {close[0]}?)" if close else key)
    where = f"recipe {recipe_path}" if match.group(1).startswith("Unknown arguments from config") else "command line"
    return f"{where}: unknown setting {', '.join(described)}; see depo-train --help for every setting."


def parse_recipe(
    argv: list[str] | None = None,
) -> tuple[DePOScriptArguments, DePOConfig, ModelConfig, str | None]:
    """Parse `--config RECIPE.yaml` plus command-line overrides; unknown keys and bad values are [`UsageError`]s."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        raise UsageError(
            f"--config: no recipe given; pass one, e.g. `{EXAMPLE}` (the toy model, seconds on a CPU), or see "
            "`depo-train --help`."
        )
    if {"-h", "--help", "--help-all"} & set(argv):
        print(format_help(full="--help-all" in argv), end="")
        raise SystemExit(0)
    recipe_path = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None
    if recipe_path is not None:
        require_file("--config", recipe_path, "pass a recipe YAML such as recipes/tiny/depo.yaml")
    try:
        script_args, training_args, model_args = make_parser().parse_args_and_config(args=argv)
    except UsageError:
        raise
    except yaml.YAMLError as error:
        raise UsageError(f"--config {recipe_path}: not valid YAML ({' '.join(str(error).split())}).") from None
    except ValueError as error:  # TRL's parser, and the configs' own checks, report bad settings this way
        message = _unknown_keys_message(error, recipe_path)
        raise UsageError(message or f"recipe {recipe_path or '(command line)'}: {error}") from None
    return script_args, training_args, model_args, recipe_path
