"""Warm start, arms and evaluation of the toy world: the pieces the demo and the toy benchmark are made of.

- `warm_start`: supervised fine-tuning (TRL's `SFTTrainer`) of a tiny Qwen2 on short-context reasoning chains;
- `train_arm`: RL from the warm start with one of the paper's arms (`depo_trl.arms.ARMS`) through `DePOTrainer`;
- `evaluate`: exact match on held-out short and long contexts, greedy and sampled, beside the chance baseline.
"""

import os
import time
from dataclasses import dataclass

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, TrainerCallback
from trl import SFTConfig, SFTTrainer

from ..arms import ARMS
from ..config import DePOConfig
from ..generation import generate_completions
from ..model_utils import build_tiny_qwen2, load_tokenizer, save_model_and_tokenizer
from ..rewards import em_reward, exact_match_score, extract_answer
from ..trainer import DePOTrainer
from .world import build_toy_tokenizer, generate_rows, mean_chance_em, warm_start_rows


EVAL_SEED, TRAIN_SEED, WARM_START_SEED = 1000, 2000, 3000


@dataclass
class ToySettings:
    """Sizes of the toy run; the defaults fit `make demo` in under 10 minutes on 2 CPU cores."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 8
    warm_start_steps: int = 800
    warm_start_batch_size: int = 32
    warm_start_learning_rate: float = 1e-3
    warm_start_max_distractors: int = 4
    eval_rows: int = 200
    train_rows: int = 2000
    prompts_per_step: int = 8
    num_generations: int = 8
    learning_rate: float = 5e-5
    max_completion_length: int = 24


def warm_start(run_dir: str, settings: ToySettings, show_progress: bool = True) -> str:
    """SFT the tiny model on short-context reasoning chains; reuse `run_dir/warm_start` if it exists."""
    output_dir = os.path.join(run_dir, "warm_start")
    if os.path.isfile(os.path.join(output_dir, "model.safetensors")):
        print(f"Reusing the warm start in {output_dir}.")
        return output_dir
    torch.manual_seed(WARM_START_SEED)
    tokenizer = build_toy_tokenizer()
    model = build_tiny_qwen2(
        tokenizer,
        hidden_size=settings.hidden_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_heads,
        max_position_embeddings=1024,
        seed=WARM_START_SEED,
    )
    num_rows = settings.warm_start_steps * settings.warm_start_batch_size
    rows = warm_start_rows(num_rows, WARM_START_SEED, settings.warm_start_max_distractors)
    args = SFTConfig(
        output_dir=output_dir,
        max_steps=settings.warm_start_steps,
        per_device_train_batch_size=settings.warm_start_batch_size,
        learning_rate=settings.warm_start_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=30,
        weight_decay=0.0,
        logging_steps=50,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        disable_tqdm=not show_progress,
        seed=WARM_START_SEED,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    save_model_and_tokenizer(trainer.model, tokenizer, output_dir)
    return output_dir


def exact_match(model, tokenizer, rows, context: str, do_sample: bool, show_progress: bool = True) -> float:
    """Mean EM of the model's completions on `rows` under the short or long prompt."""
    key = "prompt" if context == "short" else "long_prompt"
    completions = generate_completions(
        model,
        tokenizer,
        [row[key] for row in rows],
        max_new_tokens=ToySettings.max_completion_length,
        batch_size=50,
        do_sample=do_sample,
        show_progress=show_progress,
        desc=f"EM on {context} contexts",
    )
    scores = [exact_match_score(extract_answer(text), row["answer"]) for text, row in zip(completions, rows)]
    return sum(scores) / len(scores)


def evaluate(model, tokenizer, rows, show_progress: bool = True) -> dict[str, float]:
    """Greedy and sampled (temperature 1, the rollout distribution) EM on short and long contexts, with chance."""
    torch.manual_seed(EVAL_SEED)
    return {
        "short_em": exact_match(model, tokenizer, rows, "short", False, show_progress),
        "long_em": exact_match(model, tokenizer, rows, "long", False, show_progress),
        "short_sampled_em": exact_match(model, tokenizer, rows, "short", True, show_progress),
        "long_sampled_em": exact_match(model, tokenizer, rows, "long", True, show_progress),
        "short_chance": mean_chance_em(rows, "short"),
        "long_chance": mean_chance_em(rows, "long"),
    }


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (generation included), for the benchmark's per-step figures."""

    def __init__(self):
        self.step_seconds: list[float] = []
        self._started = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds.append(time.perf_counter() - self._started)


def train_arm(
    arm: str,
    warm_start_dir: str,
    output_dir: str,
    settings: ToySettings,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    seed: int = 0,
    show_progress: bool = True,
    logging_steps: int = 1,
    log_completions: bool = False,
) -> tuple[DePOTrainer, list[float]]:
    """RL from the warm start with the arm named `arm` (`depo_trl.arms.ARMS`), for `max_steps` optimizer steps or until `max_seconds` pass."""
    tokenizer = load_tokenizer(warm_start_dir)
    model = AutoModelForCausalLM.from_pretrained(warm_start_dir)
    rows = generate_rows(settings.train_rows, seed=TRAIN_SEED + seed)
    args = DePOConfig(
        output_dir=output_dir,
        **ARMS[arm].settings,
        per_device_train_batch_size=settings.prompts_per_step * settings.num_generations,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length,
        temperature=1.0,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        loss_type="dapo",
        beta=0.0,
        max_steps=max_steps if max_steps is not None else 10_000,
        logging_steps=logging_steps,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        seed=seed,
        disable_tqdm=not show_progress,
        log_completions=log_completions,
        num_completions_to_print=2,
    )
    timer = StepTimer()
    callbacks = [timer]
    if max_seconds is not None:
        callbacks.append(StopAfter(max_seconds))
    trainer = DePOTrainer(
        model=model,
        reward_funcs=em_reward,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.train()
    return trainer, timer.step_seconds


class StopAfter(TrainerCallback):
    """Stops training at the end of the first optimizer step after `seconds` have passed."""

    def __init__(self, seconds: float):
        self.deadline = time.perf_counter() + seconds

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() >= self.deadline:
            control.should_training_stop = True
