"""DePO training entry point.

    accelerate launch --config_file accelerate_configs/zero3.yaml depo_trl/depo.py --config recipes/<recipe>.yaml
    depo-train --config recipes/tiny/depo.yaml          # console script, single process

Every `DePOConfig` / `GRPOConfig` / `TrainingArguments` field and every `ModelConfig` field (dtype, attention
implementation, LoRA) can be set in the recipe or on the command line (the command line wins). The run resumes from
the last checkpoint in `output_dir`, saves the model and tokenizer, writes a model card, and pushes to the Hub when
`push_to_hub` is set.
"""

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from datasets import DatasetDict, load_dataset, load_from_disk
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config

from depo_trl.config import DePOConfig
from depo_trl.model_utils import load_tokenizer
from depo_trl.rewards import REWARD_FUNCTIONS
from depo_trl.trainer import DePOTrainer


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
            raise ValueError(
                f"Unknown reward function {name!r}: use one of {sorted(REWARD_FUNCTIONS)} or an importable dotted "
                "path such as 'my_lib.rewards.custom_reward'."
            ) from None
    if not funcs:
        raise ValueError("reward_funcs is empty: set at least one reward function, e.g. `reward_funcs: [em]`.")
    return funcs


_DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_depo_dataset(name: str, config: str | None = None, streaming: bool = False) -> DatasetDict:
    """A DatasetDict from a local builder output / data file, or from the Hub."""
    if os.path.isdir(name):
        try:
            dataset = load_from_disk(name)
        except FileNotFoundError:
            raise ValueError(f"{name} is a folder but not a saved dataset (no dataset_dict.json).") from None
        return dataset if isinstance(dataset, DatasetDict) else DatasetDict({"train": dataset})
    extension = os.path.splitext(name)[1]
    if extension in _DATA_FILE_BUILDERS:
        if not os.path.isfile(name):
            raise ValueError(
                f"Dataset file {name} does not exist. Build the data with `python -m depo_trl.data.build ...` or "
                "pass a Hub dataset id."
            )
        return load_dataset(_DATA_FILE_BUILDERS[extension], data_files=name, streaming=streaming)
    if name.startswith((".", "/", "~")):
        raise ValueError(f"Dataset folder {name} does not exist. Build it with `python -m depo_trl.data.build ...`.")
    try:
        return load_dataset(name, config, streaming=streaming)
    except Exception as error:  # the Hub client raises many types; all mean the same thing to the user
        raise ValueError(
            f"Could not load the dataset {name!r} ({type(error).__name__}: {error}). Pass a Hub dataset id you can "
            "reach, or a local folder built with `python -m depo_trl.data.build`."
        ) from None


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
        raise ValueError(
            f"use_vllm with vllm_mode='server', but no vLLM server answers at {base_url}/health. Start it first on "
            "GPUs the training does not use, e.g. `make vllm-serve RECIPE=<recipe> VLLM_GPUS=0`, and wait for "
            "'Application startup complete'; or set vllm_server_host/vllm_server_port (or vllm_server_base_url)."
        )


def main(
    script_args: DePOScriptArguments,
    training_args: DePOConfig,
    model_args: ModelConfig,
    recipe_path: str | None = None,
) -> DePOTrainer:
    """Train with a parsed recipe; returns the trainer (useful in notebooks and tests)."""
    reward_funcs = resolve_reward_funcs(script_args.reward_funcs)
    if not script_args.dataset_name:
        raise ValueError("No dataset: set `dataset_name` (Hub id, builder output folder, or data file).")
    if not model_args.model_name_or_path:
        raise ValueError("No model: set `model_name_or_path`.")
    check_vllm_server(training_args)
    dataset = load_depo_dataset(script_args.dataset_name, script_args.dataset_config, script_args.dataset_streaming)
    if script_args.dataset_train_split not in dataset:
        raise ValueError(
            f"The dataset has no split {script_args.dataset_train_split!r} (it has {list(dataset)}); set "
            "`dataset_train_split`."
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
    tokenizer = load_tokenizer(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
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

    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None and os.path.isdir(training_args.output_dir):
        checkpoint = get_last_checkpoint(training_args.output_dir)
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


def make_parser() -> TrlParser:
    return TrlParser((DePOScriptArguments, DePOConfig, ModelConfig), prog="depo-train")


def parse_recipe(argv: list[str] | None = None) -> tuple[DePOScriptArguments, DePOConfig, ModelConfig, str | None]:
    """Parse `--config RECIPE.yaml` plus command-line overrides; unknown recipe keys are an error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe_path = argv[argv.index("--config") + 1] if "--config" in argv else None
    script_args, training_args, model_args = make_parser().parse_args_and_config(args=argv)
    return script_args, training_args, model_args, recipe_path


def cli() -> None:
    trainer = main(*parse_recipe())
    if trainer.accelerator.num_processes > 1:
        # Freeing the DDP reducer after the gloo/NCCL group is gone can hang in the group's destructor (seen with
        # gloo on a loaded CPU). Every process has saved and synchronised: close the trackers and leave without
        # interpreter teardown.
        for tracker in trainer.accelerator.trackers:
            tracker.finish()
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:  # its atexit hook would not run
            wandb.finish()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    trainer.accelerator.end_training()


if __name__ == "__main__":
    cli()
