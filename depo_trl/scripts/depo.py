"""DePO training entry point.

    accelerate launch --config_file accelerate_configs/zero3.yaml depo_trl/scripts/depo.py --config recipes/<recipe>.yaml
    depo-train --config recipes/tiny/depo.yaml          # console script, single process

Every `DePOConfig` / `GRPOConfig` / `TrainingArguments` field and every `ModelConfig` field (dtype, attention
implementation, LoRA) can be set in the recipe or on the command line (the command line wins). The run resumes from
the last complete checkpoint in `output_dir` (one whose save was interrupted is skipped, with a warning), saves the
model and tokenizer, writes a model card, and pushes to the Hub when `push_to_hub` is set.
"""

import dataclasses
import difflib
import importlib
import json
import os
import re
import struct
import sys
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

import yaml
from datasets import DatasetDict, load_dataset, load_from_disk
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config

from depo_trl.config import DePOConfig
from depo_trl.data.columns import missing_column_problem
from depo_trl.model_utils import load_tokenizer
from depo_trl.rewards import REWARD_FUNCTIONS, answer_column_problem, reads_answer_column
from depo_trl.trainer import DePOTrainer
from depo_trl.user_errors import (
    UsageError,
    check_dataset_source,
    check_model_source,
    hub_failure,
    reports_usage_errors,
    require_file,
    require_folder,
)


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


def resolve_reward_funcs(names: list[str]) -> list[Callable]:
    """Reward callables for `names`: built-in `em` / `f1`, or dotted import paths."""
    funcs = []
    for name in names:
        if name in REWARD_FUNCTIONS:
            funcs.append(REWARD_FUNCTIONS[name])
            continue
        module_path, _, attribute = name.rpartition(".")
        try:
            funcs.append(getattr(importlib.import_module(module_path), attribute))
        except (ImportError, AttributeError, ValueError):
            raise UsageError(
                f"reward_funcs {name!r}: unknown reward function; use one of {sorted(REWARD_FUNCTIONS)} or an "
                "importable dotted path such as 'my_lib.rewards.custom_reward'."
            ) from None
    if not funcs:
        raise UsageError("reward_funcs []: no reward function; set at least one, e.g. `reward_funcs: [em]`.")
    return funcs


_DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_BUILD_THE_DATA = "build it with `python -m depo_trl.data.build ...`, or pass a Hub dataset id you can reach"


def load_depo_dataset(name: str, config: str | None = None, streaming: bool = False) -> DatasetDict:
    """A DatasetDict from a local builder output / data file, or from the Hub. Paths that look local are never looked
    up on the Hub; what cannot be loaded is a [`UsageError`] naming `dataset_name`."""
    check_dataset_source("dataset_name", name, _BUILD_THE_DATA)
    if os.path.isdir(name):
        try:
            dataset = load_from_disk(name)
        except FileNotFoundError:
            raise UsageError(
                f"dataset_name {name}: a folder, but not a saved dataset (no dataset_dict.json or dataset_info.json); "
                f"{_BUILD_THE_DATA}."
            ) from None
        return dataset if isinstance(dataset, DatasetDict) else DatasetDict({"train": dataset})
    if os.path.isfile(name):
        extension = os.path.splitext(name)[1]
        if extension not in _DATA_FILE_BUILDERS:
            raise UsageError(
                f"dataset_name {name}: a {extension or 'extensionless'} file; pass a builder output folder or a "
                f"{'/'.join(_DATA_FILE_BUILDERS)} file."
            )
        if os.path.getsize(name) == 0:
            raise UsageError(f"dataset_name {name}: the file is empty; {_BUILD_THE_DATA}.")
        return load_dataset(_DATA_FILE_BUILDERS[extension], data_files=name, streaming=streaming)
    try:
        return load_dataset(name, config, streaming=streaming)
    except Exception as error:  # the Hub client raises many types; all mean the same thing to the user
        raise hub_failure("dataset_name", name, error, _BUILD_THE_DATA) from None


def add_system_prompt(dataset: DatasetDict, system_prompt: str) -> DatasetDict:
    system = [{"role": "system", "content": system_prompt}]

    def prepend(row):
        updated = {"prompt": system + row["prompt"]}
        if "long_prompt" in row:
            updated["long_prompt"] = system + row["long_prompt"]
        return updated

    return dataset.map(prepend)


def check_vllm_server(training_args: DePOConfig) -> None:
    """Fail fast when server-mode vLLM is asked for but nothing answers at the configured address."""
    if not (training_args.use_vllm and training_args.vllm_mode == "server"):
        return
    import requests

    base_url = training_args.vllm_server_base_url or (
        f"http://{training_args.vllm_server_host}:{training_args.vllm_server_port}"
    )
    try:
        response = requests.get(f"{base_url.rstrip('/')}/health", timeout=5)
        healthy = response.status_code == 200
    except requests.exceptions.RequestException:
        healthy = False
    if not healthy:
        raise UsageError(
            f"vllm_server_port {training_args.vllm_server_port}: no vLLM server answers at {base_url}/health "
            "(use_vllm with vllm_mode='server'). Start it first on "
            "GPUs the training does not use, e.g. `make vllm-serve RECIPE=<recipe> VLLM_GPUS=0`, and wait for "
            "'Application startup complete'; or set vllm_server_host/vllm_server_port (or vllm_server_base_url)."
        )


# transformers' Trainer writes a checkpoint in place, file after file (weights, optimizer, scheduler, RNG states, then
# trainer_state.json; under DeepSpeed its shards, then `latest`), with no temporary folder and no rename, so a process
# killed while it saves leaves a checkpoint-<step> folder that `get_last_checkpoint` still picks.
_CHECKPOINT_FOLDER = re.compile(r"^checkpoint-(\d+)$")
_TORCH_SAVE_SUFFIXES = (".pt", ".pth", ".bin")  # torch.save writes a zip archive, whose directory is at its end


def _is_weights_file(name: str) -> bool:
    """Model (or adapter) weights in any layout the Trainer saves: safetensors, torch, DeepSpeed, FSDP."""
    return (
        name.endswith((".safetensors", "model_states.pt", ".distcp"))
        or (name.startswith(("pytorch_model", "adapter_model")) and name.endswith(".bin"))
        or name.startswith("pytorch_model_fsdp")
    )


def _trainer_state_problem(folder: str) -> str | None:
    path = os.path.join(folder, "trainer_state.json")
    if not os.path.isfile(path):
        return "no trainer_state.json"
    try:
        with open(path, encoding="utf-8") as handle:
            step = json.load(handle).get("global_step")
    except (ValueError, AttributeError):  # truncated or garbled JSON, or JSON that is not an object
        return "trainer_state.json is not valid JSON"
    named = _CHECKPOINT_FOLDER.match(os.path.basename(os.path.normpath(folder)))
    if named and step != int(named[1]):
        return f"trainer_state.json says global_step {step}, not {named[1]}"
    return None


def _safetensors_problem(path: str, name: str) -> str | None:
    """Whether the file is as long as its header says (8 bytes of header length, the JSON header, the tensors)."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        header_length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else None
        if header_length is None or 8 + header_length > size:
            return f"{name} is truncated ({size} bytes, less than its header)"
        try:
            header = json.loads(handle.read(header_length))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return f"{name} has an unreadable header"
    expected = 8 + header_length + end
    return None if size == expected else f"{name} is truncated ({size} of {expected} bytes)"


def _torch_save_problem(path: str, name: str) -> str | None:
    try:
        with zipfile.ZipFile(path):
            return None
    except (zipfile.BadZipFile, OSError):
        return f"{name} is truncated (no zip directory at its end)"


def _index_problems(folder: str, name: str) -> list[str]:
    """The shards a weights index names that are not there."""
    try:
        with open(os.path.join(folder, name), encoding="utf-8") as handle:
            shards = set(json.load(handle)["weight_map"].values())
    except (ValueError, KeyError, TypeError, AttributeError):
        return [f"{name} is not valid JSON"]
    directory = os.path.dirname(os.path.join(folder, name))
    return [
        f"{shard} (named by {name}) is missing"
        for shard in sorted(shards)
        if not os.path.isfile(os.path.join(directory, shard))
    ]


def _deepspeed_problem(folder: str, files: list[str]) -> str | None:
    if not any(name.startswith("global_step") for name in files) and "latest" not in files:
        return None
    if "latest" not in files:
        return "no DeepSpeed `latest` file (it is written last)"
    with open(os.path.join(folder, "latest"), encoding="utf-8") as handle:
        tag = handle.read().strip()
    return None if os.path.isdir(os.path.join(folder, tag)) else f"DeepSpeed's `latest` names {tag}, which is missing"


def checkpoint_problems(folder: str) -> list[str]:
    """What makes `folder` an incomplete checkpoint; empty when it is complete.

    Complete: a parseable trainer_state.json whose global_step matches the folder's name, model weights, every
    safetensors file as long as its header says, every shard its index names present, DeepSpeed's `latest` naming an
    existing folder, and every torch.save file (optimizer, scheduler, RNG states, DeepSpeed shards) ending with its zip
    directory. Only headers and directories are read: checking a 7B model's checkpoint loads none of its tensors.
    """
    files = sorted(
        os.path.relpath(os.path.join(root, name), folder) for root, _, names in os.walk(folder) for name in names
    )
    problems = [_trainer_state_problem(folder)]
    if not any(_is_weights_file(os.path.basename(name)) for name in files):
        problems.append("no model weights")
    problems.append(_deepspeed_problem(folder, files))
    for name in files:
        path = os.path.join(folder, name)
        if name.endswith(".index.json"):
            problems += _index_problems(folder, name)
        elif name.endswith(".safetensors"):
            problems.append(_safetensors_problem(path, name))
        elif name.endswith(_TORCH_SAVE_SUFFIXES):
            problems.append(_torch_save_problem(path, name))
    return [problem for problem in problems if problem]


def last_complete_checkpoint(output_dir: str) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest complete `checkpoint-<step>` folder in `output_dir` (None if there is none), and the newer ones it
    skipped as incomplete: (folder name, what is wrong with it)."""
    if not os.path.isdir(output_dir):
        return None, []
    named = [(_CHECKPOINT_FOLDER.match(name), name) for name in os.listdir(output_dir)]
    folders = [name for match, name in named if match and os.path.isdir(os.path.join(output_dir, name))]
    skipped = []
    for name in sorted(folders, key=lambda name: int(_CHECKPOINT_FOLDER.match(name)[1]), reverse=True):
        problems = checkpoint_problems(os.path.join(output_dir, name))
        if not problems:
            return os.path.join(output_dir, name), skipped
        skipped.append((name, ", ".join(problems)))
    return None, skipped


def checkpoint_to_resume(training_args: DePOConfig) -> tuple[str | None, list[tuple[str, str]]]:
    """`resume_from_checkpoint` when it is set and complete (a [`UsageError`] naming what is missing when it is not),
    else the last complete checkpoint in `output_dir`; and the incomplete ones skipped on the way."""
    given = training_args.resume_from_checkpoint
    if given is None:
        return last_complete_checkpoint(training_args.output_dir)
    require_folder("resume_from_checkpoint", given, "pass a checkpoint-<step> folder that a run saved")
    problems = checkpoint_problems(given)
    if problems:
        complete, _ = last_complete_checkpoint(os.path.dirname(os.path.normpath(given)))
        raise UsageError(
            f"resume_from_checkpoint {given}: an incomplete checkpoint ({', '.join(problems)}); pass a complete one{f' such as {complete}' if complete else ''}, or leave it "
            "unset to resume from the last complete one in output_dir."
        )
    return given, []


def main(
    script_args: DePOScriptArguments,
    training_args: DePOConfig,
    model_args: ModelConfig,
    recipe_path: str | None = None,
) -> DePOTrainer:
    """Train with a parsed recipe; returns the trainer (useful in notebooks and tests)."""
    reward_funcs = resolve_reward_funcs(script_args.reward_funcs)
    if not script_args.dataset_name:
        raise UsageError("dataset_name: not set; set it to a Hub id, a builder output folder, or a data file.")
    if not model_args.model_name_or_path:
        raise UsageError("model_name_or_path: not set; set it to a Hub id or a model folder.")
    check_model_source("model_name_or_path", model_args.model_name_or_path)
    checkpoint, skipped = checkpoint_to_resume(training_args)
    check_vllm_server(training_args)
    dataset = load_depo_dataset(script_args.dataset_name, script_args.dataset_config, script_args.dataset_streaming)
    settings = ["dataset_train_split"] + (["dataset_test_split"] if training_args.eval_strategy != "no" else [])
    for setting in settings:
        check_split(
            dataset, setting, getattr(script_args, setting), script_args.dataset_name, reward_funcs, training_args
        )
    if script_args.system_prompt:
        dataset = add_system_prompt(dataset, script_args.system_prompt)

    model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        model_init_kwargs["quantization_config"] = quantization_config
    training_args.model_init_kwargs = model_init_kwargs
    try:
        tokenizer = load_tokenizer(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            trust_remote_code=training_args.trust_remote_code,
        )
    except OSError as error:  # a Hub id that is neither cached nor reachable
        raise hub_failure("model_name_or_path", model_args.model_name_or_path, error, "pass a model folder") from None
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = dataset[script_args.dataset_test_split]

    trainer = DePOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    if recipe_path is not None:
        with open(recipe_path, encoding="utf-8") as handle:
            trainer.recipe = handle.read()

    for folder, reason in skipped:
        then = f"resuming from {os.path.basename(checkpoint)}" if checkpoint else "training starts from step 0"
        trainer.accelerator.print(
            f"depo-train: warning: output_dir {training_args.output_dir}: skipping {folder}, an incomplete checkpoint "
            f"({reason}); {then}.",
            file=sys.stderr,
        )
    if checkpoint is not None:
        trainer.accelerator.print(f"Resuming from {checkpoint}.")
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_state()
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model and tokenizer saved to {training_args.output_dir}.")
    if trainer.accelerator.is_main_process:
        trainer.create_model_card(dataset_name=script_args.dataset_name)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
        trainer.accelerator.print(f"Pushed to https://huggingface.co/{trainer.hub_model_id}.")
    trainer.accelerator.wait_for_everyone()
    return trainer


def check_split(
    dataset: DatasetDict, setting: str, split: str, name: str, reward_funcs: list[Callable], args: DePOConfig
) -> None:
    """The split that `setting` names exists, has rows, and has the columns the configuration and the built-in
    rewards read. Run on every process alike, before training, so a bad dataset stops every process."""
    if split not in dataset:
        raise UsageError(f"{setting} {split}: dataset_name {name} has no such split (it has {list(dataset)}).")
    columns = dataset[split].column_names or []
    if hasattr(dataset[split], "__len__") and len(dataset[split]) == 0:
        raise UsageError(f"dataset_name {name}: the {split} split has no rows; {_BUILD_THE_DATA}.")
    if not columns:  # a streamed dataset's columns are known once a row is read, and checked by the trainer then
        return
    problem = missing_column_problem(columns, args, reward_funcs)
    if not problem and reads_answer_column(reward_funcs):
        problem = answer_column_problem(dataset[split]["answer"])
    if problem:
        raise UsageError(f"dataset_name {name}: {split} split: {problem}.")


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


def parse_recipe(argv: list[str] | None = None) -> tuple[DePOScriptArguments, DePOConfig, ModelConfig, str | None]:
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


@reports_usage_errors("depo-train")
def train(argv: list[str] | None = None) -> None:
    """Parse a recipe, train, save; a mistake in the input is one line (`reports_usage_errors`)."""
    trainer = main(*parse_recipe(argv))
    if trainer.accelerator.num_processes > 1:
        # The process leaves without interpreter teardown (`cli`): its atexit hooks would not close the trackers
        for tracker in trainer.accelerator.trackers:
            tracker.finish()
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.finish()
        return
    trainer.accelerator.end_training()


def cli(argv: list[str] | None = None) -> None:
    """The `depo-train` console script and `python depo_trl/scripts/depo.py`.

    On several processes, every process leaves without interpreter teardown, whether it finished or failed: freeing
    the DDP reducer or the process group after the gloo/NCCL group is gone can hang in its destructor (seen with gloo
    on a loaded CPU), and a failed process that hangs there is never seen to fail by the launcher, which tears the
    other processes down only once one has exited. So a failure on one process ends the job, with its error printed
    once, by that process.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return train(argv)
    code = 0
    try:
        train(argv)
    except SystemExit as error:  # a usage error, already printed on one line
        code = error.code if isinstance(error.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    cli()
