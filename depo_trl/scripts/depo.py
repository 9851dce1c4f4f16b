"""DePO training entry point.

    accelerate launch --config_file accelerate_configs/zero3.yaml depo_trl/scripts/depo.py \\
        --config recipes/<recipe>.yaml
    depo-train --config recipes/tiny/depo.yaml          # console script, single process

Every `DePOConfig` / `GRPOConfig` / `TrainingArguments` field and every `ModelConfig` field (dtype, attention
implementation, LoRA) can be set in the recipe or on the command line (the command line wins). The run resumes from
the newest checkpoint in `output_dir` that is complete for every process (one whose save was interrupted is skipped,
with a warning; docs/faults-and-resume.md), saves the model and tokenizer, writes a model card, and pushes to the Hub
when `push_to_hub` is set.
"""

import os
import sys
import traceback
from pathlib import Path

from trl import ModelConfig, get_peft_config, get_quantization_config

from depo_trl.checkpoints import check_resume_from_checkpoint, resume_checkpoint
from depo_trl.config import DePOConfig
from depo_trl.data.checks import check_dataset
from depo_trl.data.loading import add_system_prompt, load_depo_dataset, select_split
from depo_trl.hub import check_training_push, push_failure
from depo_trl.model_utils import load_tokenizer
from depo_trl.rewards import get_reward_funcs
from depo_trl.scripts.recipe import DePOScriptArguments, parse_recipe
from depo_trl.trainer import DePOTrainer
from depo_trl.user_errors import UsageError, check_model_source, hub_failure, reports_usage_errors


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


def main(
    script_args: DePOScriptArguments,
    training_args: DePOConfig,
    model_args: ModelConfig,
    recipe_path: str | None = None,
) -> DePOTrainer:
    """Train with a parsed recipe; returns the trainer (useful in notebooks and tests)."""
    reward_funcs = get_reward_funcs(script_args.reward_funcs)
    if not script_args.dataset_name:
        raise UsageError("dataset_name: not set; set it to a Hub id, a builder output folder, or a data file.")
    if not model_args.model_name_or_path:
        raise UsageError("model_name_or_path: not set; set it to a Hub id or a model folder.")
    check_model_source("model_name_or_path", model_args.model_name_or_path)
    if training_args.push_to_hub:  # an offline or unauthenticated push stops the run before it trains
        check_training_push(training_args)
    check_resume_from_checkpoint(training_args)  # one given by hand fails here, before the model loads
    check_vllm_server(training_args)
    name = script_args.dataset_name
    dataset = load_depo_dataset(name, script_args.dataset_config, script_args.dataset_streaming)
    splits = {"train": select_split(dataset, "dataset_train_split", script_args.dataset_train_split, name)}
    if training_args.eval_strategy != "no":
        splits["eval"] = select_split(dataset, "dataset_test_split", script_args.dataset_test_split, name)
    for split, rows in splits.items():  # before the model loads; the trainer checks datasets given from Python alike
        check_dataset(rows, training_args, reward_funcs, f"dataset_name {name}: {split} split")
    if script_args.system_prompt:
        splits = {split: add_system_prompt(rows, script_args.system_prompt) for split, rows in splits.items()}

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
    trainer = DePOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits.get("eval"),
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        recipe=Path(recipe_path).read_text(encoding="utf-8") if recipe_path else None,
    )

    # Once the processes' group is up: processes on nodes with disks of their own agree on one checkpoint
    checkpoint = resume_checkpoint(trainer.accelerator, training_args)
    if checkpoint is not None:
        trainer.accelerator.print(f"Resuming from {checkpoint}.")
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_state()
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model and tokenizer saved to {training_args.output_dir}.")
    # The card links its dataset on the Hub: a local file or folder is none
    hub_dataset = None if os.path.exists(script_args.dataset_name) else script_args.dataset_name
    if trainer.accelerator.is_main_process:
        trainer.create_model_card(model_name=Path(training_args.output_dir).name, dataset_name=hub_dataset)
    if training_args.push_to_hub:
        try:
            trainer.push_to_hub(dataset_name=hub_dataset)
        except Exception as error:  # the network or the Hub, after training: the run is saved and can go up later
            raise push_failure(training_args, error) from error
        trainer.accelerator.print(f"Pushed to https://huggingface.co/{trainer.hub_model_id}.")
    trainer.accelerator.wait_for_everyone()
    return trainer


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
