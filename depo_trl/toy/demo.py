"""The toy world end to end on a CPU: `make demo` (`python -m depo_trl.toy.demo`).

1. loads the shipped warm start: a tiny Qwen2 trained from scratch on the toy world's short contexts
   (`python -m depo_trl.toy.warm_start` remakes it in about 20 minutes), good on short contexts and poor on long ones;
2. measures exact match on held-out short and long contexts, beside the chance baseline;
3. runs DePO through `DePOTrainer` for a few minutes and measures again.

Everything goes under one run directory, named at the end.
"""

import json
import os
import time
import warnings
from dataclasses import asdict

import torch
from transformers import AutoModelForCausalLM

from ..arms import ARMS
from ..model_utils import load_tokenizer
from ..user_errors import (
    ArgumentParser,
    UsageError,
    check_model_source,
    positive_int,
    reports_usage_errors,
    writable_folder,
)
from .training import ToySettings, evaluate, train_arm
from .warm_start import SHIPPED_WARM_START, read_record


def format_results(before: dict[str, float], after: dict[str, float]) -> str:
    lines = [
        "| context | EM before | EM after | sampled EM before | sampled EM after | chance |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for context in ("short", "long"):
        lines.append(
            f"| {context} | {before[f'{context}_em']:.3f} | {after[f'{context}_em']:.3f} | "
            f"{before[f'{context}_sampled_em']:.3f} | {after[f'{context}_sampled_em']:.3f} | "
            f"{before[f'{context}_chance']:.3f} |"
        )
    return "\n".join(lines)


@reports_usage_errors("python -m depo_trl.toy.demo")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m depo_trl.toy.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/demo", help="Everything the demo writes goes here.")
    parser.add_argument("--steps", type=positive_int, default=300, help="Optimizer steps of the RL phase.")
    parser.add_argument("--minutes", type=float, default=6.0, help="Stop the RL phase earlier after this long.")
    parser.add_argument("--arm", default="depo", choices=sorted(ARMS))
    parser.add_argument(
        "--warm-start-dir", default=SHIPPED_WARM_START, help="The model to start from (default: the shipped one)."
    )
    args = parser.parse_args(argv)
    writable_folder("--run-dir", args.run_dir)
    check_model_source("--warm-start-dir", args.warm_start_dir)
    if args.minutes <= 0:
        raise UsageError(f"--minutes {args.minutes}: the RL phase needs a positive time budget.")
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices from inside transformers/TRL
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    settings = ToySettings()
    started = time.perf_counter()
    warm_start_dir = args.warm_start_dir
    tokenizer = load_tokenizer(warm_start_dir)
    model = AutoModelForCausalLM.from_pretrained(warm_start_dir)
    shipped = os.path.abspath(warm_start_dir) == SHIPPED_WARM_START
    print(
        f"1/3 Warm start: {'the shipped one, ' if shipped else ''}{warm_start_dir} (a tiny Qwen2, hidden "
        f"{model.config.hidden_size}, {model.config.num_hidden_layers} layers"
        + (
            f", SFT on short contexts for {read_record(warm_start_dir)['settings']['steps']} steps)."
            if shipped
            else ")."
        )
    )
    eval_rows = settings.eval_set()
    before = evaluate(model, tokenizer, eval_rows, settings)
    print(f"2/3 {args.arm}: {args.steps} steps through DePOTrainer (at most {args.minutes:g} minutes)...")
    arm_run = train_arm(
        args.arm,
        warm_start_dir,
        os.path.join(args.run_dir, args.arm),
        settings,
        max_steps=args.steps,
        max_seconds=60 * args.minutes,
        logging_steps=10,
        log_completions=True,
    )
    trainer, step_seconds = arm_run.trainer, arm_run.step_seconds
    steps = trainer.state.global_step
    capped = steps < args.steps  # StopAfter ended the phase: a loaded machine runs fewer steps in the time cap
    if capped:
        print(f"The {args.minutes:g}-minute cap stopped the RL phase after {steps} of {args.steps} steps (--minutes).")
    trainer.save_model(os.path.join(args.run_dir, args.arm))
    trainer.save_state()
    print("3/3 Evaluating the trained model...")
    after = evaluate(trainer.model, tokenizer, eval_rows, settings)
    report = {
        "arm": args.arm,
        "steps": steps,
        "max_steps": args.steps,
        "stopped_by_time_cap": capped,
        "seconds_per_step": sum(step_seconds) / max(len(step_seconds), 1),
        "before": before,
        "after": after,
        "warm_start": os.path.abspath(warm_start_dir),
        "settings": asdict(settings),
        "total_seconds": time.perf_counter() - started,
    }
    with open(os.path.join(args.run_dir, "demo_results.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    print(
        f"\n{args.arm}, {steps} steps"
        + (f" of {args.steps} (stopped by the {args.minutes:g}-minute cap)" if capped else "")
        + f" ({report['seconds_per_step']:.1f} s/step), {len(eval_rows)} held-out "
        "questions. EM: exact match of greedy answers; sampled: at temperature 1, the rollouts' distribution; chance: "
        "a random name of the answer's type from the context.\n"
    )
    print(format_results(before, after))
    print(
        f"\nRun directory: {os.path.abspath(args.run_dir)} (total {report['total_seconds'] / 60:.1f} min). "
        "Explore it in Jupyter: make notebook (notebooks/explore_run.ipynb)."
    )


if __name__ == "__main__":
    main()
