"""Run tasks for one or more models, score them the LongBench way, and write paper-style tables.

Layout under `--output-dir`: one folder per model with `<task>.jsonl` predictions (`id, prompt_tokens, raw, pred,
answers`, then `f1, em`, or `accuracy` for DocMath and LongBench v2) and `scores.json` (each task's means, count and
decoding); at the top, `results.md` (Table 2's 10 columns and Avg., LongBench v2, RULER-QA by length) and
`ruler_qa.png`. Predictions already on disk are not generated again.
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
from .scoring import docmath_correct, extract_choice
from .tasks import (
    ALL_TASKS,
    LONGBENCH_TASKS,
    LONGBENCH_V2,
    RULER_TASKS,
    TABLE2_MODERATE,
    TASK_GROUPS,
    build_prompt,
    default_max_new_tokens,
    load_task,
    task_decoding,
    task_prompt_style,
    truncate_middle,
)


# Table 2's columns, in its order
TABLE_COLUMNS = {
    "docmath": "DocMath",
    "frames": "Frames",
    "2wikimqa": "2Wiki",
    "hotpotqa": "HotpotQA",
    "musique": "MuSiQue",
    "longbench_2wikimqa": "LB-2Wiki",
    "longbench_hotpotqa": "LB-HotpotQA",
    "longbench_musique": "LB-MuSiQue",
    "longbench_narrativeqa": "NarrativeQA",
    "longbench_qasper": "Qasper",
}
ACCURACY_TASKS = ("docmath", LONGBENCH_V2)  # scored by accuracy; every other task by F1 and EM
GENERATION_CHUNK = 64  # predictions are appended to disk every this many examples
# Rows other commands put into scores.json (`{column: value}`), shown under the tables above in results.md: the
# short-context benchmarks (`python -m depo_trl.evaluation.short_context`) and the context-length study
# (`python -m depo_trl.evaluation.context_study`)
EXTRA_SECTIONS = {
    "short_context": "Short-context benchmarks (lm-evaluation-harness), accuracy x100",
    "context_study_f1": "Context-length study (MuSiQue), F1 x100 by prompt length",
    "context_study_latency_s": "Context-length study, mean sampling latency (s per answer) by prompt length",
}


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
    """Comma-separated task names; `moderate`, `extended`, `table2`, `ruler` and `all` expand to their tasks."""
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


def task_metrics(task: str) -> tuple[str, ...]:
    """The metrics (x100) each answer of `task` gets; the first is the one its table cell shows."""
    return ("accuracy",) if task in ACCURACY_TASKS else ("f1", "em")


def score_answer(
    task: str, raw: str, answers: Sequence[str], prompt_style: str
) -> tuple[str | None, dict[str, float]]:
    """(prediction, the task's metrics x100) for one generated answer. DocMath: the extracted answer, right when it
    is the gold number; LongBench v2: the option letter, None when none can be read (wrong, and counted); the QA
    tasks: `score_prediction`."""
    if task == "docmath":
        pred = extract_answer(raw)
        return pred, {"accuracy": 100.0 * docmath_correct(pred, float(answers[0]))}
    if task == LONGBENCH_V2:
        choice = extract_choice(raw)
        return choice, {"accuracy": 100.0 * (choice == answers[0])}
    pred, f1, em = score_prediction(raw, answers, task_prompt_style(task, prompt_style))
    return pred, {"f1": f1, "em": em}


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
            desc = f"{model_folder_name(model)} / {task}"
            raws = backend.generate(conversations, max_new_tokens, desc=desc, decoding=task_decoding(task))
            with open(path, "a", encoding="utf-8") as handle:
                for example, raw, length in zip(chunk, raws, lengths):
                    pred, metrics = score_answer(task, raw, example.answers, settings.prompt_style)
                    row = {"id": example.id, "prompt_tokens": length, "raw": raw, "pred": pred}
                    row |= {"answers": example.answers, **metrics}
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        predictions = _read_predictions(path)
        selected = [predictions[example.id] for example in examples if example.id in predictions]
        scores[task] = {
            metric: round(statistics.fmean(r[metric] for r in selected), 2) if selected else 0.0
            for metric in task_metrics(task)
        }
        scores[task] |= {"count": len(selected), "decoding": task_decoding(task).as_record()}
        if task == LONGBENCH_V2:
            scores[task]["unparsed"] = sum(row["pred"] is None for row in selected)
    scores = _with_averages({**_read_scores(folder), **scores})
    with open(os.path.join(folder, "scores.json"), "w") as handle:
        json.dump(scores, handle, indent=2)
    return scores


def _read_scores(folder: str) -> dict:
    path = os.path.join(folder, "scores.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        return {key: value for key, value in json.load(handle).items() if key in ALL_TASKS or key in EXTRA_SECTIONS}


def merge_scores(folder: str, sections: dict[str, dict[str, float]]) -> None:
    """Put `EXTRA_SECTIONS` rows (`{column: value}`) into the model folder's `scores.json`: the columns given
    replace their old values, everything else is kept (a run of some benchmarks leaves the others' numbers)."""
    path = os.path.join(folder, "scores.json")
    scores = {}
    if os.path.isfile(path):
        with open(path) as handle:
            scores = json.load(handle)
    for section, columns in sections.items():
        scores[section] = scores.get(section, {}) | columns
    with open(path, "w") as handle:
        json.dump(scores, handle, indent=2)


def _with_averages(scores: dict) -> dict:
    def average(tasks):
        values = [scores[task][task_metrics(task)[0]] for task in tasks if task in scores]
        return round(statistics.fmean(values), 2) if values else None

    return scores | {
        "avg_moderate": average(TABLE2_MODERATE),
        "avg_extended": average(LONGBENCH_TASKS),
        "avg": average(TABLE_COLUMNS),  # the paper's: DocMath accuracy and nine F1s
        "avg_ruler": average(RULER_TASKS),
    }


def _cell(scores: dict, task: str) -> str:
    return f"{scores[task][task_metrics(task)[0]]:.2f}" if task in scores else "-"


def results_table(all_scores: dict[str, dict]) -> str:
    """Markdown: the paper's Table 2 (its 10 columns in its order and their average), then LongBench v2 and RULER-QA
    by length when they were run (EM beside F1 in JSON)."""
    qa_columns = list(TABLE_COLUMNS)
    table2_models = [model for model, scores in all_scores.items() if any(task in scores for task in qa_columns)]
    lines = [
        "DocMath: accuracy x100; the other columns: F1 x100 (LongBench scoring). Moderate context: "
        + ", ".join(TABLE_COLUMNS[t] for t in TABLE2_MODERATE)
        + "; extended context (LongBench v1): "
        + ", ".join(TABLE_COLUMNS[t] for t in LONGBENCH_TASKS)
        + ". Avg.: the mean of the columns.",
        "",
        "| Model | " + " | ".join(TABLE_COLUMNS[t] for t in qa_columns) + " | Avg. |",
        "|---|" + "---:|" * (len(qa_columns) + 1),
    ]
    # A model evaluated only on the other sections (e.g. the context study) gets no all-"-" Table 2 row
    if not table2_models:
        lines = []
    for model in table2_models:
        scores = all_scores[model]
        average = f"{scores['avg']:.2f}" if scores.get("avg") is not None else "-"
        lines.append(f"| {model} | " + " | ".join(_cell(scores, t) for t in qa_columns) + f" | {average} |")
    if any(LONGBENCH_V2 in scores for scores in all_scores.values()):
        temperature = task_decoding(LONGBENCH_V2).temperature
        lines += ["", f"LongBench v2, accuracy x100 (sampled at temperature {temperature}; unparsed count as wrong):"]
        lines += [""]
        lines += ["| Model | LongBench v2 | unparsed | questions |", "|---|---:|---:|---:|"]
        for model, scores in all_scores.items():
            if LONGBENCH_V2 in scores:
                v2 = scores[LONGBENCH_V2]
                lines.append(f"| {model} | {v2['accuracy']:.2f} | {v2['unparsed']} | {v2['count']} |")
    if any(task in scores for scores in all_scores.values() for task in RULER_TASKS):
        lines += ["", "RULER-QA F1 x100 by context length:", ""]
        lines += ["| Model | " + " | ".join(t.rsplit("_", 1)[1].upper() for t in RULER_TASKS) + " |"]
        lines += ["|---|" + "---:|" * len(RULER_TASKS)]
        for model, scores in all_scores.items():
            lines.append(f"| {model} | " + " | ".join(_cell(scores, t) for t in RULER_TASKS) + " |")
    for section, title in EXTRA_SECTIONS.items():
        rows = {model: scores[section] for model, scores in all_scores.items() if section in scores}
        columns = list(dict.fromkeys(column for row in rows.values() for column in row))
        if rows:
            lines += ["", f"{title}:", "", "| Model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
            for model, row in rows.items():
                cells = (f"{row[column]:.2f}" if column in row else "-" for column in columns)
                lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines).strip("\n") + "\n"


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
    return write_results(settings.output_dir)


def write_results(output_dir: str) -> dict[str, dict]:
    """(Re)write `results.md` and `ruler_qa.png` from every model folder's `scores.json` in `output_dir`."""
    all_scores = {}
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name, "scores.json")
        if os.path.isfile(path):
            with open(path) as handle:
                all_scores[name] = json.load(handle)
    with open(os.path.join(output_dir, "results.md"), "w") as handle:
        handle.write(results_table(all_scores))
    plot_ruler(all_scores, os.path.join(output_dir, "ruler_qa.png"))
    return all_scores
