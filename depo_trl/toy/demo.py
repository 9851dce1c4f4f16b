"""The toy world end to end on a CPU: `make demo` (`python -m depo_trl.toy.demo`).

1. builds the toy world (seeded rows, closed-vocabulary tokenizer, a tiny Qwen2 from a config);
2. warm-starts the model with TRL's `SFTTrainer` on short contexts (or reloads the warm start it made before);
3. measures exact match on held-out short and long contexts, beside the chance baseline;
4. runs DePO through `DePOTrainer` for a few minutes and measures again.

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
from ..user_errors import ArgumentParser, UsageError, positive_int, reports_usage_errors, writable_folder
from .training import EVAL_SEED, ToySettings, evaluate, train_arm, warm_start
from .world import generate_rows


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
    parser.add_argument("--steps", type=positive_int, default=80, help="Optimizer steps of the RL phase.")
    parser.add_argument("--minutes", type=float, default=4.0, help="Stop the RL phase earlier after this long.")
    parser.add_argument("--arm", default="depo", choices=sorted(ARMS))
    args = parser.parse_args(argv)
    writable_folder("--run-dir", args.run_dir)
    if args.minutes <= 0:
        raise UsageError(f"--minutes {args.minutes}: the RL phase needs a positive time budget.")
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices from inside transformers/TRL
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    settings = ToySettings()
    started = time.perf_counter()
    print(
        "1/4 Toy world: tiny Qwen2 "
        f"(hidden {settings.hidden_size}, {settings.num_layers} layers) and a word-level tokenizer, built locally."
    )
    print("2/4 Warm start (SFT on short contexts)...")
    warm_start_dir = warm_start(args.run_dir, settings)
    tokenizer = load_tokenizer(warm_start_dir)
    eval_rows = generate_rows(settings.eval_rows, seed=EVAL_SEED)
    before = evaluate(AutoModelForCausalLM.from_pretrained(warm_start_dir), tokenizer, eval_rows)
    print(f"3/4 {args.arm}: {args.steps} steps through DePOTrainer (at most {args.minutes:g} minutes)...")
    trainer, step_seconds = train_arm(
        args.arm,
        warm_start_dir,
        os.path.join(args.run_dir, args.arm),
        settings,
        max_steps=args.steps,
        max_seconds=60 * args.minutes,
        logging_steps=10,
        log_completions=True,
    )
    trainer.save_model(os.path.join(args.run_dir, args.arm))
    trainer.save_state()
    print("4/4 Evaluating the trained model...")
    after = evaluate(trainer.model, tokenizer, eval_rows)
    report = {
        "arm": args.arm,
        "steps": trainer.state.global_step,
        "seconds_per_step": sum(step_seconds) / max(len(step_seconds), 1),
        "before": before,
        "after": after,
        "settings": asdict(settings),
        "total_seconds": time.perf_counter() - started,
    }
    with open(os.path.join(args.run_dir, "demo_results.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    print(
        f"\n{args.arm}, {report['steps']} steps ({report['seconds_per_step']:.1f} s/step), {len(eval_rows)} held-out "
        "questions. EM: exact match of greedy answers; sampled: at temperature 1, the rollouts' distribution; chance: "
        "a random name of the answer's type from the context.\n"
    )
    print(format_results(before, after))
    print(
        f"\nRun directory: {os.path.abspath(args.run_dir)} (total {report['total_seconds'] / 60:.1f} min). "
        "Explore it with notebooks/explore_run.ipynb."
    )


if __name__ == "__main__":
    main()
