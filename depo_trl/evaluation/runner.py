"""Run tasks for one or more models, score them, and write paper-style tables.

Layout under `--output-dir`: one folder per model with `<task>.jsonl` predictions and `scores.json`; at the top,
`results.md` (Table 2's 10 columns and Avg., LongBench v2, RULER-QA by length) and `ruler_qa.png`.

A prediction row holds `id, prompt_tokens, raw, answers`, then its reading in each scoring mode (`official`,
`lenient`; see `scoring.py`): `{pred, f1, em}` or `{pred, accuracy}`, or null where the official code leaves the
output out. Predictions already on disk are not generated again, and every row is scored again from its raw output at
the end of each run (the file is rewritten only if a score changed), so a change of `--scoring` or of the scoring
rules costs no generation. Predictions are appended and synced to disk every `GENERATION_CHUNK` examples: a run killed
halfway and run again predicts only what is missing, and nothing twice (see `files.py`).

`scores.json` holds, per task, both modes' means and counts, the `--scoring` mode's numbers at the top level (what
`results.md` shows), the number of outputs and of empty ones, the official code the `official` mode follows, and the
decoding.
"""

import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ..model_utils import load_tokenizer
from ..user_errors import UsageError, hub_failure
from .backends import make_backend
from .files import append_rows, read_rows, write_json, write_whole
from .scoring import SCORING_MODES
from .tasks import ALL_TASKS, PROMPT_STYLES, TASK_GROUPS, TASKS, EvalTask, get_task, truncate_middle


TABLE2_COLUMNS = TASK_GROUPS["table2"]  # in Table 2's order
GENERATION_CHUNK = 64  # predictions are appended to disk every this many examples
# Rows other commands put into scores.json (`{column: value}`), shown under the tables above in results.md: the
# short-context benchmarks (`python -m depo_trl.evaluation.short_context`) and the context-length study
# (`python -m depo_trl.evaluation.context_study`)
EXTRA_SECTIONS = {
    "short_context": "Short-context benchmarks (lm-evaluation-harness), accuracy x100",
    "context_study_f1": "Context-length study (MuSiQue), F1 x100 by prompt length (lenient reading)",
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
    scoring: str = "official"

    def __post_init__(self):
        if self.prompt_style not in PROMPT_STYLES:
            raise UsageError(f"--prompt-style {self.prompt_style}: unknown style; use one of {list(PROMPT_STYLES)}.")
        if self.scoring not in SCORING_MODES:
            raise UsageError(f"--scoring {self.scoring}: unknown mode; use one of {list(SCORING_MODES)}.")
        for task in self.tasks:
            budget = self.answer_budget(task)
            if self.max_length <= budget:
                default = "" if self.max_new_tokens else f", the default for --prompt-style {self.prompt_style}"
                raise UsageError(
                    f"--max-length {self.max_length} leaves no room for the prompt after --max-new-tokens {budget} "
                    f"({budget} new tokens{default}, task {task}): raise --max-length or lower --max-new-tokens."
                )

    def answer_budget(self, task: str) -> int:
        """New tokens generated for `task`: `max_new_tokens`, or its prompt format's default."""
        return self.max_new_tokens or get_task(task).max_new_tokens(self.prompt_style)


def parse_tasks(spec: str) -> list[str]:
    """Comma-separated task names; `moderate`, `extended`, `table2`, `ruler` and `all` expand to their tasks."""
    tasks: list[str] = []
    for name in (part.strip() for part in spec.split(",") if part.strip()):
        for task in ALL_TASKS if name == "all" else TASK_GROUPS.get(name, [name]):
            if get_task(task).name not in tasks:
                tasks.append(task)
    return tasks


def model_folder_name(model: str) -> str:
    return model.rstrip("/").replace("/", "--") if not os.path.isdir(model) else os.path.basename(model.rstrip("/"))


def scored_row(task: EvalTask, row: dict, prompt_style: str) -> dict:
    """A prediction row with its reading in every scoring mode, from its raw output."""
    kept = {key: row[key] for key in ("id", "prompt_tokens", "raw", "answers")}
    return kept | {
        mode: task.score(mode, row["raw"], row["answers"], prompt_style).as_record() for mode in SCORING_MODES
    }


def mode_summary(task: EvalTask, rows: Sequence[dict], mode: str) -> dict:
    """One mode's means x100 (2 decimals) over the rows it scores, their `count`, and `unparsed`: those scored
    without a readable answer (no marker, number or option)."""
    scored = [row[mode] for row in rows if row[mode] is not None]
    summary = {
        metric: round(statistics.fmean(record[metric] for record in scored), 2) if scored else 0.0
        for metric in task.metrics
    }
    return summary | {"count": len(scored), "unparsed": sum(record["pred"] is None for record in scored)}


def task_scores(task: EvalTask, rows: Sequence[dict], settings: EvalSettings) -> dict:
    """A task's `scores.json` entry: the `--scoring` mode's numbers on top, both modes, counts and settings."""
    modes = {mode: mode_summary(task, rows, mode) for mode in SCORING_MODES}
    return {
        **modes[settings.scoring],
        "scoring": settings.scoring,
        **modes,
        "outputs": len(rows),
        "empty_outputs": sum(row["raw"] == "" for row in rows),
        "official_code": task.formats[settings.prompt_style].scoring.source,
        "decoding": task.decoding.as_record(),
    }


def read_predictions(path: str) -> dict[str, dict]:
    """The predictions on disk by id (a row written again for an id replaces the earlier one)."""
    return {row["id"]: row for row in read_rows(path)}


def rescore_predictions(path: str, task: EvalTask, prompt_style: str) -> dict[str, dict]:
    """Every row of a predictions file scored again from its raw output; the file is rewritten only when a reading
    changed (a scoring fix, or rows written before the scoring modes)."""
    stored = read_predictions(path)
    rows = {key: scored_row(task, row, prompt_style) for key, row in stored.items()}
    if rows != stored:
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows.values())
        write_whole(path, lambda handle: handle.write(lines))
    return rows


def evaluate_model(model: str, settings: EvalSettings) -> dict[str, dict]:
    """Predict what is missing for `model` on every task, then score; returns and writes `scores.json`."""
    folder = os.path.join(settings.output_dir, model_folder_name(model))
    os.makedirs(folder, exist_ok=True)
    try:
        tokenizer = load_tokenizer(model)
    except OSError as error:  # a Hub id that is neither cached nor reachable
        raise hub_failure("--model", model, error, "pass a model folder") from None
    backend = None
    scores = {}
    for name in settings.tasks:
        task = get_task(name)
        examples = task.load(settings.data_dir, tokenizer)[: settings.limit]
        path = os.path.join(folder, f"{name}.jsonl")
        done = read_predictions(path)
        todo = [example for example in examples if example.id not in done]
        max_new_tokens = settings.answer_budget(name)
        if todo:
            backend = backend or make_backend(
                settings.backend, model, tokenizer, settings.max_length, settings.batch_size
            )
        for start in range(0, len(todo), GENERATION_CHUNK):
            chunk = todo[start : start + GENERATION_CHUNK]
            conversations, lengths = [], []
            for example in chunk:
                content = task.prompt(example, settings.prompt_style)
                content, _ = truncate_middle(content, tokenizer, settings.max_length - max_new_tokens)
                conversation = [{"role": "user", "content": content}]
                rendered = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
                lengths.append(len(tokenizer(rendered, add_special_tokens=False)["input_ids"]))
                conversations.append(conversation)
            desc = f"{model_folder_name(model)} / {name}"
            raws = backend.generate(conversations, max_new_tokens, desc=desc, decoding=task.decoding)
            rows = [
                {"id": example.id, "prompt_tokens": length, "raw": raw, "answers": example.answers}
                for example, raw, length in zip(chunk, raws, lengths)
            ]
            append_rows(path, [scored_row(task, row, settings.prompt_style) for row in rows])
        predictions = rescore_predictions(path, task, settings.prompt_style)
        selected = [predictions[example.id] for example in examples if example.id in predictions]
        scores[name] = task_scores(task, selected, settings)
    scores = _with_averages({**_read_scores(folder, settings.scoring), **scores}) | {"scoring": settings.scoring}
    write_json(os.path.join(folder, "scores.json"), scores)
    return scores


def _read_scores(folder: str, scoring: str) -> dict:
    """The task entries and extra sections already in `scores.json`, the tasks' top-level numbers in `scoring`'s
    mode (both modes are there)."""
    path = os.path.join(folder, "scores.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        scores = {key: value for key, value in json.load(handle).items() if key in ALL_TASKS or key in EXTRA_SECTIONS}
    return {
        key: (entry | entry[scoring] | {"scoring": scoring}) if scoring in entry else entry
        for key, entry in scores.items()
    }


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
    write_json(path, scores)


def _table_value(scores: dict, task: str) -> float:
    return scores[task][TASKS[task].metric]


def _with_averages(scores: dict) -> dict:
    def average(tasks):
        values = [_table_value(scores, task) for task in tasks if task in scores]
        return round(statistics.fmean(values), 2) if values else None

    return scores | {
        "avg_moderate": average(TASK_GROUPS["moderate"]),
        "avg_extended": average(TASK_GROUPS["extended"]),
        "avg": average(TABLE2_COLUMNS),  # the paper's: DocMath accuracy and nine F1s
        "avg_ruler": average(TASK_GROUPS["ruler"]),
    }


def _cell(scores: dict, task: str) -> str:
    return f"{_table_value(scores, task):.2f}" if task in scores else "-"


def _row_label(model: str, scores: dict) -> str:
    """The model's name, marked when its numbers are not the official scoring's."""
    scoring = scores.get("scoring", "official")
    return model if scoring == "official" else f"{model} ({scoring})"


def results_table(all_scores: dict[str, dict]) -> str:
    """Markdown: the paper's Table 2 (its 10 columns in its order and their average), then LongBench v2 and RULER-QA
    by length when they were run (EM beside F1 in JSON), each model in the scoring mode of its last run."""
    labels = {model: _row_label(model, scores) for model, scores in all_scores.items()}
    table2_models = [model for model, scores in all_scores.items() if any(task in scores for task in TABLE2_COLUMNS)]
    column_names = [TASKS[task].label for task in TABLE2_COLUMNS]
    lines = [
        "Scoring: each benchmark's official evaluation code (--scoring official)"
        + (
            "; rows marked (lenient): the project's lenient reading"
            if any(label != model for model, label in labels.items())
            else ""
        )
        + ". DocMath: accuracy x100; the other columns: F1 x100. Moderate context: "
        + ", ".join(TASKS[task].label for task in TASK_GROUPS["moderate"])
        + "; extended context (LongBench v1): "
        + ", ".join(TASKS[task].label for task in TASK_GROUPS["extended"])
        + ". Avg.: the mean of the columns.",
        "",
        "| Model | " + " | ".join(column_names) + " | Avg. |",
        "|---|" + "---:|" * (len(column_names) + 1),
    ]
    # A model evaluated only on the other sections (e.g. the context study) gets no all-"-" Table 2 row
    if not table2_models:
        lines = []
    for model in table2_models:
        scores = all_scores[model]
        average = f"{scores['avg']:.2f}" if scores.get("avg") is not None else "-"
        lines.append(
            f"| {labels[model]} | " + " | ".join(_cell(scores, t) for t in TABLE2_COLUMNS) + f" | {average} |"
        )
    v2 = TASKS["longbench_v2"]
    if any(v2.name in scores for scores in all_scores.values()):
        lines += [
            "",
            f"LongBench v2, accuracy x100 (sampled at temperature {v2.decoding.temperature}; unparsed count as "
            "wrong; official scoring leaves empty outputs out, as pred.py does):",
            "",
            "| Model | LongBench v2 | unparsed | questions |",
            "|---|---:|---:|---:|",
        ]
        for model, scores in all_scores.items():
            if v2.name in scores:
                row = scores[v2.name]
                lines.append(f"| {labels[model]} | {row['accuracy']:.2f} | {row['unparsed']} | {row['count']} |")
    ruler = TASK_GROUPS["ruler"]
    if any(task in scores for scores in all_scores.values() for task in ruler):
        lines += ["", "RULER-QA F1 x100 by context length:", ""]
        lines += [
            "| Model | " + " | ".join(TASKS[task].label for task in ruler) + " |",
            "|---|" + "---:|" * len(ruler),
        ]
        for model, scores in all_scores.items():
            lines.append(f"| {labels[model]} | " + " | ".join(_cell(scores, task) for task in ruler) + " |")
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
    buckets = [task for task in TASK_GROUPS["ruler"] if any(task in scores for scores in all_scores.values())]
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
    axis.set_xticklabels([TASKS[task].label for task in buckets])
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
    table = results_table(all_scores)
    write_whole(os.path.join(output_dir, "results.md"), lambda handle: handle.write(table))
    plot_ruler(all_scores, os.path.join(output_dir, "ruler_qa.png"))
    return all_scores
