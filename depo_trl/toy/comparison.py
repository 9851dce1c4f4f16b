"""The paper's comparisons at toy scale, with confidence intervals: `make toy-compare` (and its two sweeps).

A comparison of the methods' results; the speed and memory benchmarks are in `benchmarks/`.

    python -m depo_trl.toy.comparison                  # the five arms (Table 3): equal steps and equal wall time
    python -m depo_trl.toy.comparison --sweep length   # DePO and RL-on-long at 15 / 30 / 60 long-context distractors
    python -m depo_trl.toy.comparison --sweep lambda   # DePO at distillation weights 0 / 0.25 / 0.5 / 1 / 2

Every run starts from the same warm start (the shipped one unless `--warm-start-dir`), trains `--steps` optimizer
steps, and is evaluated on the same held-out questions every `--eval-every` steps (greedy and sampled EM on short
and long contexts; the evaluation's time is not counted and its sampling does not disturb the run). Equal steps
compares the last points; equal wall time compares, for every run, its last point at or before the time budget, the
longest training time every run reached (the shortest run's). Means over seeds with 95% confidence intervals (Student's
t), and per-seed paired differences against a reference configuration. Writes `results.json`, `results.md` and
`long_em.png` (long-context EM against steps and against wall time) under `--run-dir`.
"""

import json
import math
import os
import statistics
import time
from dataclasses import asdict, replace

import torch

from ..arms import ARMS
from ..user_errors import (
    ArgumentParser,
    UsageError,
    check_model_source,
    positive_int,
    reports_usage_errors,
    writable_folder,
)
from .training import ToySettings, evaluate, train_arm
from .warm_start import SHIPPED_WARM_START


METRICS = ("long_em", "long_sampled_em", "short_em", "short_sampled_em")
# Student's t quantile 0.975 by degrees of freedom; beyond the table the normal quantile is within 4%
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_interval(values: list[float]) -> tuple[float, float]:
    """The mean and the half-width of its 95% confidence interval (Student's t; 0 for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def interval_text(values: list[float]) -> str:
    mean, half_width = mean_interval(values)
    return f"{mean:.3f} ± {half_width:.3f}"


def point_at(points: list[dict], seconds: float) -> dict:
    """The last evaluation point at or before `seconds` of training time (the first point is at 0 s)."""
    return [point for point in points if point["seconds"] <= seconds + 1e-9][-1]


def run_configuration(name, arm, settings, seeds, steps, eval_every, warm_start_dir, run_dir, start_point):
    """`arm` under `settings` for each seed; a list of runs, each with its evaluation points (step 0 included)."""
    runs = []
    for seed in seeds:
        started = time.perf_counter()
        arm_run = train_arm(
            arm,
            warm_start_dir,
            os.path.join(run_dir, f"{name}-seed{seed}"),
            settings,
            max_steps=steps,
            seed=seed,
            show_progress=False,
            evaluate_every=eval_every,
        )
        points = [start_point, *arm_run.points]
        runs.append(
            {
                "configuration": name,
                "arm": arm,
                "seed": seed,
                "seconds_per_step": statistics.median(arm_run.step_seconds),
                "wall_seconds": time.perf_counter() - started,
                "points": points,
            }
        )
        final = points[-1]
        print(
            f"{name} seed {seed}: {final['step']} steps, {final['seconds']:.0f} s training, "
            + ", ".join(f"{metric} {final[metric]:.3f}" for metric in METRICS),
            flush=True,
        )
    return runs


def comparison_table(runs: list[dict], pick, title: str, reference: str | None) -> list[str]:
    """Markdown rows: per configuration, each metric's mean ± 95% CI over seeds at the point `pick` chooses, and
    the per-seed paired difference of long-context EM against `reference`."""
    names = list(dict.fromkeys(run["configuration"] for run in runs))
    lines = [f"### {title}", ""]
    header = "| configuration | long EM | long EM (sampled) | short EM | short EM (sampled) | steps | train s |"
    lines += [
        header + (f" long EM - {reference} (paired) |" if reference else ""),
        "|---" * (7 + bool(reference)) + "|",
    ]
    reference_points = {run["seed"]: pick(run) for run in runs if run["configuration"] == reference}
    for name in names:
        chosen = [(run["seed"], pick(run)) for run in runs if run["configuration"] == name]
        cells = [interval_text([point[metric] for _, point in chosen]) for metric in METRICS]
        cells += [f"{statistics.fmean(point['step'] for _, point in chosen):.0f}"]
        cells += [f"{statistics.fmean(point['seconds'] for _, point in chosen):.0f}"]
        if reference:
            differences = [point["long_em"] - reference_points[seed]["long_em"] for seed, point in chosen]
            mean, half_width = mean_interval(differences)
            significant = " *" if abs(mean) > half_width and len(differences) > 1 else ""
            cells.append("-" if name == reference else f"{mean:+.3f} ± {half_width:.3f}{significant}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def plot(runs: list[dict], warm_start: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for name in dict.fromkeys(run["configuration"] for run in runs):
        chosen = [run for run in runs if run["configuration"] == name]
        steps = [point["step"] for point in chosen[0]["points"]]
        by_step = [[run["points"][index]["long_em"] for run in chosen] for index in range(len(steps))]
        means = [statistics.fmean(values) for values in by_step]
        half_widths = [mean_interval(values)[1] for values in by_step]
        seconds = [statistics.fmean(run["points"][index]["seconds"] for run in chosen) for index in range(len(steps))]
        for axis, x in ((axes[0], steps), (axes[1], seconds)):
            axis.plot(x, means, marker="o", markersize=3, label=name)
            lower = [m - h for m, h in zip(means, half_widths)]
            axis.fill_between(x, lower, [m + h for m, h in zip(means, half_widths)], alpha=0.15)
    for axis, label in ((axes[0], "optimizer steps"), (axes[1], "training wall time (s), mean over seeds")):
        axis.axhline(warm_start["long_chance"], color="grey", linestyle=":", label="chance")
        axis.set_xlabel(label)
    axes[0].set_ylabel("long-context EM (greedy), mean and 95% CI")
    axes[1].legend(fontsize=8)
    figure.suptitle("Toy world: long-context EM")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def configurations(sweep: str, settings: ToySettings, arms: list[str], lengths: list[int], lambdas: list[float]):
    """(name, arm, settings) of each configuration of `sweep`, and the reference of the paired differences."""
    if sweep == "arms":
        return [(arm, arm, settings) for arm in arms], "long" if "long" in arms else None
    if sweep == "length":
        return [
            (f"{arm}@{count}", arm, settings.with_long_distractors(count))
            for count in lengths
            for arm in ("depo", "long")
        ], None
    return [(f"depo λ={value:g}", "depo", replace(settings, distillation_coef=value)) for value in lambdas], "depo λ=0"


@reports_usage_errors("python -m depo_trl.toy.comparison")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m depo_trl.toy.comparison", description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", choices=["arms", "length", "lambda"], default="arms")
    parser.add_argument("--steps", type=positive_int, default=60)
    parser.add_argument("--eval-every", type=positive_int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="Default: 5 seeds (arms), 3 (sweeps).")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="Arms of --sweep arms.")
    parser.add_argument("--lengths", type=positive_int, nargs="+", default=[15, 30, 60])
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--eval-rows", type=positive_int, default=ToySettings.eval_rows)
    parser.add_argument("--run-dir", default=None, help="Default: runs/toy_comparison/<sweep>.")
    parser.add_argument("--warm-start-dir", default=SHIPPED_WARM_START)
    args = parser.parse_args(argv)
    run_dir = args.run_dir or os.path.join("runs", "toy_comparison", args.sweep)
    writable_folder("--run-dir", run_dir)
    check_model_source("--warm-start-dir", args.warm_start_dir)
    if args.steps % args.eval_every:
        raise UsageError(f"--steps {args.steps}: must be a multiple of --eval-every {args.eval_every}.")
    if args.sweep == "lambda" and 0.0 not in args.lambdas:
        raise UsageError(f"--lambdas {args.lambdas}: include 0, the reference of the paired differences.")
    seeds = args.seeds or ([0, 1, 2, 3, 4] if args.sweep == "arms" else [0, 1, 2])
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    from transformers import AutoModelForCausalLM

    from ..model_utils import load_tokenizer

    settings = ToySettings(eval_rows=args.eval_rows)
    chosen, reference = configurations(args.sweep, settings, args.arms, args.lengths, args.lambdas)
    os.makedirs(run_dir, exist_ok=True)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(args.warm_start_dir), load_tokenizer(args.warm_start_dir)
    runs, warm_starts = [], {}
    for name, arm, variant in chosen:
        world = json.dumps(asdict(variant.world))
        if world not in warm_starts:
            warm_starts[world] = evaluate(model, tokenizer, variant.eval_set(), variant, show_progress=False)
            print(f"warm start ({world}): {json.dumps({k: round(v, 3) for k, v in warm_starts[world].items()})}")
        start_point = {"step": 0, "seconds": 0.0, **warm_starts[world]}
        runs += run_configuration(
            name, arm, variant, seeds, args.steps, args.eval_every, args.warm_start_dir, run_dir, start_point
        )

    results = {"sweep": args.sweep, "steps": args.steps, "eval_every": args.eval_every, "eval_rows": args.eval_rows}
    results |= {"reference": reference, "warm_start": warm_starts, "runs": runs}
    write_report(results, run_dir)


def write_report(results: dict, run_dir: str) -> None:
    """`results.md`, `results.json` and `long_em.png` in `run_dir` from a comparison's runs and their points."""
    runs, reference = results["runs"], results["reference"]
    names = list(dict.fromkeys(run["configuration"] for run in runs))
    seeds = sorted({run["seed"] for run in runs})
    # Equal time: the longest training time every run reached
    budget = results["equal_time_budget"] = min(run["points"][-1]["seconds"] for run in runs)
    report = [
        f"Toy comparison ({results['sweep']}): {len(seeds)} seeds {seeds}, {results['eval_rows']} held-out questions, "
        f"{results['steps']} optimizer steps, evaluated every {results['eval_every']}. Mean ± 95% CI over seeds; * "
        "where the paired difference's interval excludes 0.",
        "",
        "| warm start | " + " | ".join(METRICS) + " | short chance | long chance |",
        "|---" * (len(METRICS) + 3) + "|",
    ]
    for world, scores in results["warm_start"].items():
        cells = [f"{scores[metric]:.3f}" for metric in (*METRICS, "short_chance", "long_chance")]
        report.append(f"| {world} | " + " | ".join(cells) + " |")
    final = f"Equal steps ({results['steps']})"
    report += [""] + comparison_table(runs, lambda run: run["points"][-1], final, reference)
    report += [""] + comparison_table(
        runs, lambda run: point_at(run["points"], budget), f"Equal wall time ({budget:.0f} s of training)", reference
    )
    report += ["", "| configuration | s/step (median over steps, mean over seeds) |", "|---|---:|"]
    for name in names:
        per_step = [run["seconds_per_step"] for run in runs if run["configuration"] == name]
        report.append(f"| {name} | {statistics.fmean(per_step):.2f} |")
    markdown = "\n".join(report) + "\n"
    print(markdown)
    with open(os.path.join(run_dir, "results.md"), "w") as handle:
        handle.write(markdown)
    with open(os.path.join(run_dir, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    plot(runs, next(iter(results["warm_start"].values())), os.path.join(run_dir, "long_em.png"))
    print(f"Wrote {run_dir}/results.md, results.json and long_em.png")


if __name__ == "__main__":
    main()
