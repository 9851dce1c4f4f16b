"""The recipe a run is launched with: the entry point's script arguments, and the parser that reads a YAML recipe with
command-line overrides into them, `DePOConfig` and TRL's `ModelConfig`, reporting mistakes as one line."""

import dataclasses
import difflib
import re
import sys
from dataclasses import dataclass, field

import yaml
from trl import ModelConfig, ScriptArguments, TrlParser

from ..config import DePOConfig
from ..rewards import REWARD_FUNCTIONS
from ..user_errors import UsageError, require_file


@dataclass
class DePOScriptArguments(ScriptArguments):
    """Script arguments of the DePO entry point, on top of TRL's `ScriptArguments` (`dataset_name`, splits, ...).

    `dataset_name` is a Hub dataset id, a folder written by `python -m depo_trl.data.build` (or any
    `save_to_disk` output), or a `.jsonl` / `.json` / `.parquet` file.
    """

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
