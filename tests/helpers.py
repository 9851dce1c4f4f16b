"""Helpers the test files share: rows and a tiny trainer, gradients of an optimizer window, launching the entry
point on several processes, and reading what a run saved."""

import json
import os
import random
import socket
import subprocess
import sys

import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from depo_trl import DePOTrainer
from depo_trl.data.template import render_prompt
from depo_trl.distillation.long_pass import uses_layer_checkpointing
from depo_trl.model_utils import load_tokenizer
from depo_trl.toy.training import cpu_depo_config
from depo_trl.trainer import open_window


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINT = os.path.join(ROOT, "depo_trl", "scripts", "depo.py")
WARM_START = os.path.join(ROOT, "depo_trl", "toy", "shipped_warm_start")

# `accelerate launch` options per backend. `--multi_gpu` on a machine without CUDA is torchrun with gloo (`--cpu`
# alone would start one process); DeepSpeed detects the CPU accelerator and falls back to gloo by itself.
BACKENDS = {
    "ddp": ["--multi_gpu"],
    "zero2": ["--use_deepspeed", "--zero_stage", "2"],
    "zero3": ["--use_deepspeed", "--zero_stage", "3", "--zero3_init_flag", "true", "--zero3_save_16bit_model", "true"],
    # The shipped ZeRO-3 config with sequence parallelism, its group of 1 (no split) or 2 processes
    **{
        f"zero3-sp{size}": [
            "--config_file",
            "accelerate_configs/zero3-sp.yaml",
            "--parallelism_config_sp_size",
            str(size),
            "--parallelism_config_dp_shard_size",
            str(2 // size),
        ]
        for size in (1, 2)
    },
}


def free_port() -> int:
    """A TCP port nothing listens on right now, on the loopback interface."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_environment(**extra: str) -> dict[str, str]:
    """The environment of a launched run: offline, no W&B, one thread per process (two processes share the cores),
    and this repository importable (reward functions given by dotted path live in `tests`)."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
        **extra,
    }


def launch(
    arguments: list[str], backend: str = "ddp", processes: int = 2, timeout: float = 600, script: str = ENTRY_POINT
) -> subprocess.CompletedProcess:
    """`accelerate launch` the training entry point (or `script`) with `arguments` on `processes` CPU processes. A
    hang (one process skipping a collective the other makes) shows up as a timeout."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *BACKENDS[backend], "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), script, *arguments,
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=run_environment())


def saved_weights(folder) -> dict[str, torch.Tensor]:
    """The parameters a run saved (`model.safetensors`), in float32. A tied output layer is left out: DeepSpeed's
    ZeRO-2 save writes it beside the embedding it shares, transformers' save does not."""
    weights = load_file(os.path.join(folder, "model.safetensors"))
    if "lm_head.weight" in weights and torch.equal(weights["lm_head.weight"], weights["model.embed_tokens.weight"]):
        del weights["lm_head.weight"]
    return {name: tensor.float() for name, tensor in weights.items()}


def largest_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two state dicts with the same names."""
    assert first.keys() == second.keys()
    return max((first[name] - second[name]).abs().max().item() for name in first)


def step_logs(folder) -> list[dict]:
    """The per-step training logs (`loss` and the DePO metrics) of a run's `trainer_state.json`."""
    with open(os.path.join(folder, "trainer_state.json")) as handle:
        return [log for log in json.load(handle)["log_history"] if "loss" in log]


def alternating_reward(completions, **kwargs) -> list[float]:
    """1, 0, 1, 0, ...: every group has correct and wrong rollouts, so advantages and distilled rollouts are both
    present whatever the model says."""
    return [float(index % 2 == 0) for index in range(len(completions))]


def alternating_reward_on_process_0(completions, **kwargs) -> list[float]:
    """[`alternating_reward`] on process 0, nothing right on the others: they distil no rollout."""
    if os.environ.get("RANK", "0") != "0":
        return [0.0] * len(completions)
    return alternating_reward(completions)


_reward_calls = {"count": 0}


def reward_failing_on_process_1(completions, **kwargs) -> list[float]:
    """[`alternating_reward`], until its second call on process 1, which raises: a reward service that fails on one
    process while the other goes on into the step's collectives."""
    _reward_calls["count"] += 1
    if os.environ.get("RANK") == "1" and _reward_calls["count"] == 2:
        raise RuntimeError("the reward service failed on process 1")
    return alternating_reward(completions)


NAMES = ["alba", "bruno", "carla", "dario", "elena", "fabio", "gina", "hugo"]
CITIES = ["paris", "rome", "oslo", "lima", "kyoto", "cairo", "quito", "perth"]
# The training template's words (rendered with empty passages and question), and those of the rows below
TEMPLATE_WORDS = (
    render_prompt("", "")
    + " Passage : was born in Where ? Therefore , the answer is / "
    + " ".join(str(number) for number in range(1, 13))
)


def make_rows(num_rows: int = 8, num_distractors: int = 6, seed: int = 0) -> list[dict]:
    """Rows with a short prompt (gold + one distractor) and a long prompt (plus `num_distractors` more)."""
    rng = random.Random(seed)
    rows = []
    for index in range(num_rows):
        person, city = NAMES[index % len(NAMES)], CITIES[index % len(CITIES)]
        gold = f"{person} was born in {city} ."
        others = [f"{rng.choice(NAMES)} was born in {rng.choice(CITIES)} ." for _ in range(num_distractors + 1)]
        question = f"Question : Where was {person} born ? Therefore , the answer is"
        short = [gold, others[0]]
        long = short + others[1:]
        rng.shuffle(short)
        rng.shuffle(long)
        rows.append(
            {
                "id": f"row-{index}",
                "prompt": [{"role": "user", "content": " ".join(short) + " " + question}],
                "long_prompt": [{"role": "user", "content": " ".join(long) + " " + question}],
                "answer": [city],
            }
        )
    return rows


def uneven_dataset() -> Dataset:
    """Long prompts of different lengths (left padding in the naive pass)."""
    rows = make_rows(num_rows=4, num_distractors=3) + make_rows(num_rows=4, num_distractors=9, seed=1)
    return Dataset.from_list([rows[i] for i in (0, 4, 1, 5, 2, 6, 3, 7)])


NUM_GENERATIONS = 4


def make_trainer(
    model_dir, dataset: Dataset, output_dir, reward=alternating_reward, eval_dataset=None, model=None, **overrides
) -> DePOTrainer:
    """A DePOTrainer on the tiny model of `model_dir` (or `model`), float32 so gradients compare to float tolerance:
    4 rollouts per prompt, 6-token completions, 2 steps, unless `overrides` say otherwise."""
    settings = {
        "per_device_train_batch_size": NUM_GENERATIONS,
        "num_generations": NUM_GENERATIONS,
        "max_completion_length": 6,
        "max_steps": 2,
        "learning_rate": 1e-3,
        "seed": 0,
        "use_cpu": True,
        **overrides,
    }
    return DePOTrainer(
        model=model if model is not None else AutoModelForCausalLM.from_pretrained(model_dir),
        reward_funcs=reward,
        args=cpu_depo_config(str(output_dir), **settings),
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=load_tokenizer(model_dir),
    )


def generation_batch(trainer: DePOTrainer, dataset: Dataset, num_prompts: int) -> dict:
    """A training generation batch of the first `num_prompts` rows of `dataset`, each repeated per rollout."""
    trainer.model.train()
    rows = [row for row in dataset.select(range(num_prompts)) for _ in range(NUM_GENERATIONS)]
    return trainer._generate_and_score_completions(rows)


def enable_layer_checkpointing(model) -> None:
    """Gradient checkpointing of the model's layers, as `Trainer.train()` turns it on (DePOConfig's default; a
    trainer built but not trained has it off)."""
    model.activation_checkpointing_enable()
    assert uses_layer_checkpointing(model)


def accumulated_gradients(trainer: DePOTrainer, micro_batches: list[dict]) -> dict[str, torch.Tensor]:
    """Gradients summed over `micro_batches` as one optimizer window, the way `Trainer.training_step` sums them."""
    if trainer.args.distillation != "none":
        open_window(micro_batches)
    trainer.model.zero_grad()
    trainer.current_gradient_accumulation_steps = len(micro_batches)
    for micro_batch in micro_batches:
        trainer.compute_loss(trainer.model, micro_batch).backward()
    return {name: param.grad.clone() for name, param in trainer.model.named_parameters() if param.grad is not None}
