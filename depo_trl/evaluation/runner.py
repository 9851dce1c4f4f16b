"""Run tasks for one or more models, score them the LongBench way, and write paper-style tables.

Layout under `--output-dir`: one folder per model with `<task>.jsonl` predictions (`id, prompt_tokens, raw, pred,
answers, f1, em`) and `scores.json`; at the top, `results.md` (Table 2 layout: moderate | extended | Avg., and RULER-QA
by length) and `ruler_qa.png`. Predictions already on disk are not generated again.
"""

import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ..model_utils import load_tokenizer
from ..rewards import exact_match_score, extract_answer, f1_score
from ..user_errors import UsageError, hub_failure
from .backends import make_backend
from .tasks import (
    ALL_TASKS,
    LONGBENCH_TASKS,
    MODERATE_TASKS,
    RULER_TASKS,
    TASK_GROUPS,
    build_prompt,
    default_max_new_tokens,
    load_task,
    truncate_middle,
)


TABLE_COLUMNS = {
    "hotpotqa": "HotpotQA",
    "2wikimqa": "2Wiki",
    "musique": "MuSiQue",
    "longbench_hotpotqa": "LB-HotpotQA",
    "longbench_2wikimqa": "LB-2Wiki",
    "longbench_musique": "LB-MuSiQue",
    "longbench_narrativeqa": "NarrativeQA",
    "longbench_qasper": "Qasper",
}
GENERATION_CHUNK = 64  # predictions are appended to disk every this many examples


@dataclass
class EvalSettings:
    tasks: list[str]
    backend: str = "hf"
    max_length: int = 32768
    output_dir: str = "eval"
    limit: int | None = None
    data_dir: str | None = None
    prompt_style: str = "depo"
    max_new_tokens: int | None = None
    batch_size: int = 8

    def __post_init__(self):
        for task in self.tasks:
            budget = self.answer_budget(task)
            if self.max_length <= budget:
                default = "" if self.max_new_tokens else f", the default for --prompt-style {self.prompt_style}"
                raise UsageError(
                    f"--max-length {self.max_length} leaves no room for the prompt after --max-new-tokens {budget} "
                    f"({budget} new tokens{default}, task {task}): raise --max-length or lower --max-new-tokens."
                )

    def answer_budget(self, task: str) -> int:
        """New tokens generated for `task`: `max_new_tokens`, or the prompt style's default."""
        return self.max_new_tokens or default_max_new_tokens(task, self.prompt_style)


def parse_tasks(spec: str) -> list[str]:
    """Comma-separated task names; `moderate`, `extended`, `ruler` and `all` expand to their tasks."""
    tasks: list[str] = []
    for name in (part.strip() for part in spec.split(",") if part.strip()):
        expanded = ALL_TASKS if name == "all" else TASK_GROUPS.get(name, [name])
        for task in expanded:
            if task not in ALL_TASKS:
                raise UsageError(f"--tasks {task}: unknown task; use {ALL_TASKS} or a group {[*TASK_GROUPS, 'all']}.")
            if task not in tasks:
                tasks.append(task)
    return tasks


def model_folder_name(model: str) -> str:
    return model.rstrip("/").replace("/", "--") if not os.path.isdir(model) else os.path.basename(model.rstrip("/"))


def score_prediction(raw: str, answers: Sequence[str], prompt_style: str) -> tuple[str, float, float]:
    """(prediction, F1 x100, EM x100): the extraction of docs/design.md ("Rewards") for the DePO template; LongBench-style prompts are
    answered directly, so their first line is the prediction."""
    pred = extract_answer(raw) if prompt_style == "depo" else raw.strip().split("\n")[0].strip()
    return pred, 100.0 * f1_score(pred, answers), 100.0 * exact_match_score(pred, answers)


def _read_predictions(path: str) -> dict[str, dict]:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return {row["id"]: row for row in map(json.loads, filter(str.strip, handle))}


def evaluate_model(model: str, settings: EvalSettings) -> dict[str, dict[str, float]]:
    """Predict what is missing for `model` on every task, then score; returns and writes `scores.json`."""
    folder = os.path.join(settings.output_dir, model_folder_name(model))
    os.makedirs(folder, exist_ok=True)
    try:
        tokenizer = load_tokenizer(model)
    except OSError as error:  # a Hub id that is neither cached nor reachable
        raise hub_failure("--model", model, error, "pass a model folder") from None
    backend = None
    scores = {}
    for task in settings.tasks:
        examples = load_task(task, settings.data_dir, tokenizer)[: settings.limit]
        path = os.path.join(folder, f"{task}.jsonl")
        done = _read_predictions(path)
        todo = [example for example in examples if example.id not in done]
        max_new_tokens = settings.answer_budget(task)
        if todo:
            backend = backend or make_backend(
                settings.backend, model, tokenizer, settings.max_length, settings.batch_size
            )
        for start in range(0, len(todo), GENERATION_CHUNK):
            chunk = todo[start : start + GENERATION_CHUNK]
            conversations, lengths = [], []
            for example in chunk:
                content = build_prompt(task, example, settings.prompt_style)
                content, _ = truncate_middle(content, tokenizer, settings.max_length - max_new_tokens)
                conversation = [{"role": "user", "content": content}]
                rendered = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
                lengths.append(len(tokenizer(rendered, add_special_tokens=False)["input_ids"]))
                conversations.append(conversation)
            raws = backend.generate(conversations, max_new_tokens, desc=f"{model_folder_name(model)} / {task}")
            with open(path, "a", encoding="utf-8") as handle:
                for example, raw, length in zip(chunk, raws, lengths):
                    pred, f1, em = score_prediction(raw, example.answers, settings.prompt_style)
                    row = {"id": example.id, "prompt_tokens": length, "raw": raw, "pred": pred}
                    row |= {"answers": example.answers, "f1": f1, "em": em}
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        predictions = _read_predictions(path)
        selected = [predictions[example.id] for example in examples if example.id in predictions]
        scores[task] = {
            "f1": round(statistics.fmean(r["f1"] for r in selected), 2) if selected else 0.0,
            "em": round(statistics.fmean(r["em"] for r in selected), 2) if selected else 0.0,
            "count": len(selected),
        }
    scores = _with_averages({**_read_scores(folder), **scores})
    with open(os.path.join(folder, "scores.json"), "w") as handle:
        json.dump(scores, handle, indent=2)
    return scores


def _read_scores(folder: str) -> dict:
    path = os.path.join(folder, "scores.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        return {task: value for task, value in json.load(handle).items() if task in ALL_TASKS}


def _with_averages(scores: dict) -> dict:
    def average(tasks):
        values = [scores[task]["f1"] for task in tasks if task in scores]
        return round(statistics.fmean(values), 2) if values else None

    return scores | {
        "avg_moderate": average(MODERATE_TASKS),
        "avg_extended": average(LONGBENCH_TASKS),
        "avg": average([*MODERATE_TASKS, *LONGBENCH_TASKS]),
        "avg_ruler": average(RULER_TASKS),
    }


def _cell(scores: dict, task: str) -> str:
    return f"{scores[task]['f1']:.2f}" if task in scores else "-"


def results_table(all_scores: dict[str, dict]) -> str:
    """Markdown: F1 x100 per task in the paper's Table 2 layout, then RULER-QA by length (EM beside F1 in JSON)."""
    qa_columns = list(TABLE_COLUMNS)
    lines = [
        "F1 x100 (LongBench scoring). Moderate context: "
        + ", ".join(TABLE_COLUMNS[t] for t in MODERATE_TASKS)
        + "; extended context (LongBench v1): "
        + ", ".join(TABLE_COLUMNS[t] for t in LONGBENCH_TASKS)
        + ".",
        "",
        "| Model | " + " | ".join(TABLE_COLUMNS[t] for t in qa_columns) + " | Avg. |",
        "|---|" + "---:|" * (len(qa_columns) + 1),
    ]
    for model, scores in all_scores.items():
        average = f"{scores['avg']:.2f}" if scores.get("avg") is not None else "-"
        lines.append(f"| {model} | " + " | ".join(_cell(scores, t) for t in qa_columns) + f" | {average} |")
    if any(task in scores for scores in all_scores.values() for task in RULER_TASKS):
        lines += ["", "RULER-QA F1 x100 by context length:", ""]
        lines += ["| Model | " + " | ".join(t.rsplit("_", 1)[1].upper() for t in RULER_TASKS) + " |"]
        lines += ["|---|" + "---:|" * len(RULER_TASKS)]
        for model, scores in all_scores.items():
            lines.append(f"| {model} | " + " | ".join(_cell(scores, t) for t in RULER_TASKS) + " |")
    return "\n".join(lines) + "\n"


def plot_ruler(all_scores: dict[str, dict], path: str) -> bool:
    """Grouped bar chart of RULER-QA F1 per length bucket, one bar per model; False when there is nothing to plot."""
    buckets = [task for task in RULER_TASKS if any(task in scores for scores in all_scores.values())]
    if not buckets:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(1.6 + 1.4 * len(buckets), 3.5))
    width = 0.8 / max(len(all_scores), 1)
    for offset, (model, scores) in enumerate(all_scores.items()):
        positions = [index + offset * width for index in range(len(buckets))]
        axis.bar(positions, [scores.get(task, {}).get("f1", 0.0) for task in buckets], width, label=model)
    axis.set_xticks([index + width * (len(all_scores) - 1) / 2 for index in range(len(buckets))])
    axis.set_xticklabels([task.rsplit("_", 1)[1].upper() for task in buckets])
    axis.set_ylabel("F1 x100")
    axis.set_title("RULER-QA by context length")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def run(models: Sequence[str], settings: EvalSettings) -> dict[str, dict]:
    """Evaluate every model, then (re)write `results.md` and `ruler_qa.png` over all models in the output dir."""
    for model in models:
        evaluate_model(model, settings)
    all_scores = {}
    for name in sorted(os.listdir(settings.output_dir)):
        path = os.path.join(settings.output_dir, name, "scores.json")
        if os.path.isfile(path):
            with open(path) as handle:
                all_scores[name] = json.load(handle)
    with open(os.path.join(settings.output_dir, "results.md"), "w") as handle:
        handle.write(results_table(all_scores))
    plot_ruler(all_scores, os.path.join(settings.output_dir, "ruler_qa.png"))
    return all_scores
