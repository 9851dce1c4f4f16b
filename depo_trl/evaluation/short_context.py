"""The paper's short-context checks (appendix C.3.2: GSM8K, MATH, MMLU, GPQA, ARC, HellaSwag, BBH) through
lm-evaluation-harness, with the harness's own task definitions: only the glue is ours.

    pip install -e ".[lm-eval]"
    python -m depo_trl.evaluation.short_context --model runs/qwen2.5-7b-instruct/depo-grpo --tasks all \
        --backend vllm --output-dir eval

Per model, under `<output-dir>/<model>/`: `short_context.json` (the harness's results, task versions, shots and
sample counts) and a `short_context` row in `scores.json` (accuracy x100 per benchmark), shown in `results.md` beside
Table 2. The harness caches the model's responses in `<output-dir>/<model>/lm_eval_cache_rank0.db`, so a re-run
reuses them; a re-run of some benchmarks replaces only their numbers.
"""

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..model_utils import load_tokenizer
from ..user_errors import (
    ArgumentParser,
    UsageError,
    check_model_source,
    positive_int,
    reports_usage_errors,
    require_folder,
    writable_folder,
)
from .report import merge_scores, model_folder_name, write_results


@dataclass(frozen=True)
class HarnessBenchmark:
    """A column of the results table: an lm-eval task or group, and the entry of its results that is reported."""

    label: str
    task: str
    metric: str  # a key of the harness's results for the task: "<metric>,<filter>"


# The paper's seven, each with the harness's task settings (shots, prompt, scoring) as they are
BENCHMARKS = {
    "gsm8k": HarnessBenchmark("GSM8K", "gsm8k", "exact_match,flexible-extract"),  # 5-shot, last number in the answer
    # MATH without extras: minerva_math (4-shot, sympy equivalence) needs lm-eval[math], whose antlr4 4.11 pin the
    # rest of the stack need not share; pass --tasks minerva_math:exact_match where it is installed
    "math": HarnessBenchmark("MATH", "hendrycks_math", "exact_match,none"),
    "mmlu": HarnessBenchmark("MMLU", "mmlu", "acc,none"),
    "gpqa": HarnessBenchmark("GPQA", "gpqa_main_zeroshot", "acc_norm,none"),  # a gated dataset: log in to the Hub
    "arc": HarnessBenchmark("ARC-C", "arc_challenge", "acc_norm,none"),
    "hellaswag": HarnessBenchmark("HellaSwag", "hellaswag", "acc_norm,none"),
    "bbh": HarnessBenchmark("BBH", "bbh", "exact_match,get-answer"),  # 3-shot chain of thought
}


def parse_benchmarks(spec: str) -> list[HarnessBenchmark]:
    """Comma-separated: `all`, names of `BENCHMARKS`, or any harness task as `task:metric[:filter]` (the filter
    defaults to `none`), e.g. a local task under `--include-path`: `my_task:acc`."""
    benchmarks: list[HarnessBenchmark] = []
    for name in filter(None, (part.strip() for part in spec.split(","))):
        if name == "all":
            benchmarks += BENCHMARKS.values()
        elif name.lower() in BENCHMARKS:
            benchmarks.append(BENCHMARKS[name.lower()])
        elif 2 <= len(parts := name.split(":")) <= 3 and all(parts):
            task, metric, filter_name = (*parts, "none") if len(parts) == 2 else parts
            benchmarks.append(HarnessBenchmark(task, task, f"{metric},{filter_name}"))
        else:
            raise UsageError(
                f"--tasks {name}: not one of {[*BENCHMARKS, 'all']}; any other harness task is given with the "
                "metric to report, as task:metric[:filter] (e.g. arc_easy:acc_norm, gsm8k:exact_match:strict-match)."
            )
    return list(dict.fromkeys(benchmarks))


def harness_model(backend: str, model: str) -> tuple[str, dict]:
    """lm-eval's model type and arguments for a backend; hf gets the tokenizer this project loads (generic saved
    tokenizers included), which the harness's `AutoTokenizer` would read as the model's own class."""
    if backend == "hf":
        return "hf", {"pretrained": model, "tokenizer": load_tokenizer(model)}
    return "vllm", {"pretrained": model}


def benchmark_scores(results: dict, benchmarks: Sequence[HarnessBenchmark]) -> dict[str, float]:
    """{label: accuracy x100} from the harness's `results`; a [`UsageError`] names a metric it did not report."""
    scores = {}
    for benchmark in benchmarks:
        reported = results["results"].get(benchmark.task, {})
        if not isinstance(reported.get(benchmark.metric), (int, float)):
            metrics = [key for key, value in reported.items() if "," in key and isinstance(value, (int, float))]
            raise UsageError(
                f"--tasks {benchmark.task}: the harness reported no {benchmark.metric} for it, but {metrics}; "
                "name one of them as task:metric[:filter]."
            )
        scores[benchmark.label] = round(100.0 * reported[benchmark.metric], 2)
    return scores


def evaluate_short_context(
    model: str,
    benchmarks: Sequence[HarnessBenchmark],
    output_dir: str,
    backend: str = "hf",
    limit: int | None = None,
    batch_size: int = 8,
    include_path: str | None = None,
    apply_chat_template: bool = False,
) -> dict[str, float]:
    """Run the harness on `model`, write `short_context.json` and the `scores.json` row; returns {label: accuracy}."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ImportError(
            "The short-context benchmarks need lm-evaluation-harness: pip install -e '.[lm-eval]'."
        ) from None
    task_manager = TaskManager(include_path=include_path)
    for benchmark in benchmarks:
        if benchmark.task not in task_manager.all_tasks:
            raise UsageError(
                f"--tasks {benchmark.task}: not a task of lm-eval {lm_eval.__version__}"
                f"{' or of --include-path ' + include_path if include_path else ''}; `lm-eval ls tasks` lists them."
            )
    folder = os.path.join(output_dir, model_folder_name(model))
    os.makedirs(folder, exist_ok=True)
    model_type, model_args = harness_model(backend, model)
    results = lm_eval.simple_evaluate(
        model=model_type,
        model_args=model_args,
        tasks=list(dict.fromkeys(benchmark.task for benchmark in benchmarks)),
        task_manager=task_manager,
        batch_size=batch_size,
        device="cuda" if torch.cuda.is_available() else "cpu",
        limit=limit,
        use_cache=os.path.join(folder, "lm_eval_cache"),
        apply_chat_template=apply_chat_template,
        log_samples=False,
    )
    scores = benchmark_scores(results, benchmarks)
    record = {
        "lm_eval_version": lm_eval.__version__,
        "benchmarks": {b.label: {"task": b.task, "metric": b.metric, "accuracy": scores[b.label]} for b in benchmarks},
        **{key: results[key] for key in ("results", "versions", "n-shot", "n-samples")},
    }
    with open(os.path.join(folder, "short_context.json"), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2, default=str)
    merge_scores(folder, {"short_context": scores})
    return scores


@reports_usage_errors("python -m depo_trl.evaluation.short_context")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m depo_trl.evaluation.short_context", description=__doc__)
    parser.add_argument("--model", action="append", required=True, help="Hub id or path; repeat for several.")
    parser.add_argument(
        "--tasks",
        default="all",
        help=f"Comma-separated: all, {', '.join(BENCHMARKS)}, or any harness task as task:metric[:filter].",
    )
    parser.add_argument("--backend", choices=["vllm", "hf"], default="vllm", help="The harness's model type.")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--limit", type=positive_int, default=None, help="Only the first N examples of each task.")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--include-path", default=None, help="A folder of extra harness task YAMLs.")
    parser.add_argument(
        "--apply-chat-template", action="store_true", help="Ask in the model's chat template (the harness's flag)."
    )
    args = parser.parse_args(argv)
    benchmarks = parse_benchmarks(args.tasks)
    if args.include_path is not None:
        require_folder("--include-path", args.include_path, "pass the folder that holds the task YAML files")
    writable_folder("--output-dir", args.output_dir)
    for model in args.model:
        check_model_source("--model", model)
    for model in args.model:
        evaluate_short_context(
            model,
            benchmarks,
            args.output_dir,
            backend=args.backend,
            limit=args.limit,
            batch_size=args.batch_size,
            include_path=args.include_path,
            apply_chat_template=args.apply_chat_template,
        )
    write_results(args.output_dir)
    with open(os.path.join(args.output_dir, "results.md"), encoding="utf-8") as handle:
        print(handle.read())


if __name__ == "__main__":
    main()
