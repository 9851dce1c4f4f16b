"""Arms and evaluation of the toy world: the pieces the demo and the arms comparison are made of.

- `train_arm`: RL from the warm start with one of the paper's arms (`depo_trl.arms.ARMS`) through `DePOTrainer`,
  optionally evaluated every few steps (`EvaluateEvery`) without disturbing the run;
- `evaluate`: exact match on held-out short and long contexts, greedy and sampled, beside the chance baseline.
"""

import time
from dataclasses import dataclass, field, replace

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, TrainerCallback

from ..arms import ARMS
from ..config import DePOConfig
from ..evaluation.generation import generate_completions
from ..model_utils import load_tokenizer
from ..rewards import em_reward, exact_match_score, extract_answer
from ..trainer import DePOTrainer
from .world import ToyWorldConfig, generate_rows, mean_chance_em


EVAL_SEED, TRAIN_SEED = 1000, 2000


@dataclass
class ToySettings:
    """Sizes of the RL phase and its evaluation; the defaults fit `make demo` in under 10 minutes on 2 CPU cores."""

    world: ToyWorldConfig = field(default_factory=ToyWorldConfig)
    eval_rows: int = 200
    train_rows: int = 2000
    prompts_per_step: int = 8
    num_generations: int = 8
    learning_rate: float = 1e-4
    max_completion_length: int = 16
    distillation_coef: float | None = None  # None: the arm's own (1.0 for DePO)

    def eval_set(self) -> list[dict]:
        return generate_rows(self.eval_rows, seed=EVAL_SEED, config=self.world)

    def with_long_distractors(self, count: int) -> "ToySettings":
        return replace(self, world=replace(self.world, long_distractors=count))


def exact_match(model, tokenizer, rows, context: str, do_sample: bool, settings: ToySettings, progress: bool) -> float:
    """Mean EM of the model's completions on `rows` under the short or long prompt."""
    key = "prompt" if context == "short" else "long_prompt"
    completions = generate_completions(
        model,
        tokenizer,
        [row[key] for row in rows],
        max_new_tokens=settings.max_completion_length,
        batch_size=50,
        do_sample=do_sample,
        show_progress=progress,
        desc=f"EM on {context} contexts",
    )
    scores = [exact_match_score(extract_answer(text), row["answer"]) for text, row in zip(completions, rows)]
    return sum(scores) / len(scores)


def evaluate(model, tokenizer, rows, settings: ToySettings, show_progress: bool = True) -> dict[str, float]:
    """Greedy and sampled (temperature 1, the rollout distribution) EM on short and long contexts, with chance.

    Runs under its own seed and restores the global RNG afterwards, so evaluating during a run leaves the run as it
    would have been.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(EVAL_SEED)
        return {
            "short_em": exact_match(model, tokenizer, rows, "short", False, settings, show_progress),
            "long_em": exact_match(model, tokenizer, rows, "long", False, settings, show_progress),
            "short_sampled_em": exact_match(model, tokenizer, rows, "short", True, settings, show_progress),
            "long_sampled_em": exact_match(model, tokenizer, rows, "long", True, settings, show_progress),
            "short_chance": mean_chance_em(rows, "short"),
            "long_chance": mean_chance_em(rows, "long"),
        }


def evaluate_model(model, tokenizer, settings: ToySettings, show_progress: bool = True) -> dict[str, float]:
    """`evaluate` on the held-out set of `settings` (`eval_rows` questions, its world's distractor counts)."""
    return evaluate(model, tokenizer, settings.eval_set(), settings, show_progress)


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (generation included), for the per-step figures."""

    def __init__(self):
        self.step_seconds: list[float] = []
        self._started = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds.append(time.perf_counter() - self._started)


class EvaluateEvery(TrainerCallback):
    """Evaluates the model every `every` optimizer steps; each point has the step, the training wall time so far
    (evaluation excluded) and `evaluate`'s figures."""

    def __init__(self, every: int, rows, settings: ToySettings, timer: StepTimer):
        self.every, self.rows, self.settings, self.timer = every, rows, settings, timer
        self.points: list[dict] = []

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step % self.every == 0:
            scores = evaluate(model, processing_class, self.rows, self.settings, show_progress=False)
            self.points.append({"step": state.global_step, "seconds": sum(self.timer.step_seconds), **scores})


class StopAfter(TrainerCallback):
    """Stops training at the end of the first optimizer step after `seconds` have passed."""

    def __init__(self, seconds: float):
        self.deadline = time.perf_counter() + seconds

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() >= self.deadline:
            control.should_training_stop = True


@dataclass
class ArmRun:
    trainer: DePOTrainer
    step_seconds: list[float]
    points: list[dict]


def cpu_depo_config(output_dir: str, **settings) -> DePOConfig:
    """A DePOConfig for short runs on a laptop CPU (or the one GPU present): float32, every step logged, no
    checkpoints, no reporting; `settings` add to or override these. The toy world, the step-cost benchmark and the
    tests build their configs with it."""
    defaults = {
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": not torch.cuda.is_available(),
        "bf16": False,
    }
    return DePOConfig(output_dir=output_dir, **{**defaults, **settings})


def train_arm(
    arm: str,
    warm_start_dir: str,
    output_dir: str,
    settings: ToySettings,
    max_steps: int,
    max_seconds: float | None = None,
    seed: int = 0,
    show_progress: bool = True,
    logging_steps: int = 1,
    log_completions: bool = False,
    evaluate_every: int = 0,
) -> ArmRun:
    """RL from the warm start with the arm named `arm` (`depo_trl.arms.ARMS`) for `max_steps` optimizer steps, or
    until `max_seconds` pass, evaluated on the held-out set every `evaluate_every` steps (0: never)."""
    tokenizer = load_tokenizer(warm_start_dir)
    model = AutoModelForCausalLM.from_pretrained(warm_start_dir)
    rows = generate_rows(settings.train_rows, seed=TRAIN_SEED + seed, config=settings.world)
    arm_settings = dict(ARMS[arm].settings)
    if settings.distillation_coef is not None:
        arm_settings["distillation_coef"] = settings.distillation_coef
    args = cpu_depo_config(
        output_dir,
        **arm_settings,
        per_device_train_batch_size=settings.prompts_per_step * settings.num_generations,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length,
        temperature=1.0,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        loss_type="dapo",
        beta=0.0,
        max_steps=max_steps,
        logging_steps=logging_steps,
        seed=seed,
        disable_tqdm=not show_progress,
        log_completions=log_completions,
        num_completions_to_print=2,
    )
    timer = StepTimer()
    evaluation = EvaluateEvery(evaluate_every, settings.eval_set(), settings, timer) if evaluate_every else None
    # The timer first: an evaluation point reads the steps' time so far
    callbacks = [timer] + ([evaluation] if evaluation else []) + ([StopAfter(max_seconds)] if max_seconds else [])
    trainer = DePOTrainer(
        model=model,
        reward_funcs=em_reward,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.train()
    return ArmRun(trainer, timer.step_seconds, evaluation.points if evaluation else [])
