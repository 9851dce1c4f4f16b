"""The paper's Table 3 at toy scale: five arms from one warm start, several seeds, equal steps and equal wall time.

    python -m depo_trl.toy.benchmark [--steps 30] [--seeds 0 1 2] [--run-dir runs/toy_benchmark]

Arms: the paper's five (`depo_trl.arms.ARMS`). Part 1 trains
every arm for the same number of optimizer steps; part 2 gives every arm the wall time DePO took in part 1. Prints a
table (long EM, short EM, chance, seconds per step, total seconds; mean +- std over seeds) and writes it as Markdown
and JSON, plus a PNG of long-context EM against wall time per arm. A benchmark, not a test: it takes a while.
"""

import json
import os
import statistics
import time

import torch

from ..arms import ARMS
from ..user_errors import ArgumentParser, check_model_source, positive_int, reports_usage_errors, writable_folder
from .training import EVAL_SEED, ToySettings, evaluate, train_arm, warm_start
from .world import generate_rows


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {spread:.3f}"


def run(arm: str, seed: int, warm_start_dir: str, run_dir: str, settings, eval_rows, **budget) -> dict:
    started = time.perf_counter()
    trainer, step_seconds = train_arm(
        arm,
        warm_start_dir,
        os.path.join(run_dir, f"{arm}-seed{seed}"),
        settings,
        seed=seed,
        show_progress=False,
        **budget,
    )
    train_seconds = time.perf_counter() - started
    scores = evaluate(trainer.model, trainer.processing_class, eval_rows, show_progress=False)
    return {
        "arm": arm,
        "seed": seed,
        "steps": trainer.state.global_step,
        "seconds_per_step": statistics.median(step_seconds),
        "train_seconds": train_seconds,
        **scores,
    }


def table(results: list[dict], title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| arm | long EM | short EM | long chance | short chance | s/step (median) | train s | steps |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for arm in ARMS:
        rows = [result for result in results if result["arm"] == arm]
        if not rows:
            continue
        lines.append(
            f"| {arm} | {mean_std([r['long_em'] for r in rows])} | {mean_std([r['short_em'] for r in rows])} | "
            f"{rows[0]['long_chance']:.3f} | {rows[0]['short_chance']:.3f} | "
            f"{statistics.fmean(r['seconds_per_step'] for r in rows):.2f} | "
            f"{statistics.fmean(r['train_seconds'] for r in rows):.0f} | "
            f"{statistics.fmean(r['steps'] for r in rows):.0f} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], baseline: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for arm in ARMS:
        rows = [r for r in results if r["arm"] == arm]
        axis.scatter([r["train_seconds"] for r in rows], [r["long_em"] for r in rows], label=arm)
    axis.axhline(baseline["long_em"], color="grey", linestyle="--", label="warm start")
    axis.axhline(baseline["long_chance"], color="grey", linestyle=":", label="chance")
    axis.set_xlabel("training wall time (s)")
    axis.set_ylabel("long-context EM (greedy)")
    axis.set_title("Toy world: long-context EM against wall time")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


@reports_usage_errors("python -m depo_trl.toy.benchmark")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m depo_trl.toy.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive_int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--run-dir", default="runs/toy_benchmark")
    parser.add_argument("--warm-start-dir", default=None, help="Reuse a warm start (e.g. runs/demo/warm_start).")
    parser.add_argument("--skip-equal-time", action="store_true")
    args = parser.parse_args(argv)
    writable_folder("--run-dir", args.run_dir)
    if args.warm_start_dir is not None:
        check_model_source("--warm-start-dir", args.warm_start_dir)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    settings = ToySettings()
    os.makedirs(args.run_dir, exist_ok=True)
    warm_start_dir = args.warm_start_dir or warm_start(args.run_dir, settings)
    eval_rows = generate_rows(settings.eval_rows, seed=EVAL_SEED)
    from transformers import AutoModelForCausalLM

    from ..model_utils import load_tokenizer

    baseline = evaluate(
        AutoModelForCausalLM.from_pretrained(warm_start_dir), load_tokenizer(warm_start_dir), eval_rows, False
    )
    print(f"warm start: {json.dumps({k: round(v, 3) for k, v in baseline.items()})}", flush=True)

    equal_steps = []
    for seed in args.seeds:
        for arm in ARMS:
            equal_steps.append(run(arm, seed, warm_start_dir, args.run_dir, settings, eval_rows, max_steps=args.steps))
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in equal_steps[-1].items()}))
    report = [table(equal_steps, f"Equal optimizer steps ({args.steps})")]

    equal_time = []
    if not args.skip_equal_time:
        budgets = {
            seed: next(r["train_seconds"] for r in equal_steps if r["arm"] == "depo" and r["seed"] == seed)
            for seed in args.seeds
        }
        for seed in args.seeds:
            for arm in ARMS:
                result = run(
                    arm,
                    seed,
                    warm_start_dir,
                    os.path.join(args.run_dir, "equal_time"),
                    settings,
                    eval_rows,
                    max_seconds=budgets[seed],
                )
                equal_time.append(result)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))
        report.append(table(equal_time, "Equal wall time (DePO's time for the equal-step run, per seed)"))

    header = (
        f"Toy benchmark: seeds {args.seeds}, {settings.eval_rows} held-out questions, greedy EM. Warm start: short EM "
        f"{baseline['short_em']:.3f}, long EM {baseline['long_em']:.3f} (chance {baseline['short_chance']:.3f} / "
        f"{baseline['long_chance']:.3f})."
    )
    markdown = "\n\n".join([header, *report]) + "\n"
    print(markdown)
    with open(os.path.join(args.run_dir, "toy_benchmark.md"), "w") as handle:
        handle.write(markdown)
    with open(os.path.join(args.run_dir, "toy_benchmark.json"), "w") as handle:
        json.dump({"warm_start": baseline, "equal_steps": equal_steps, "equal_time": equal_time}, handle, indent=2)
    plot(equal_steps + equal_time, baseline, os.path.join(args.run_dir, "toy_benchmark.png"))
    print(f"Wrote {args.run_dir}/toy_benchmark.md, .json and .png")


if __name__ == "__main__":
    main()
