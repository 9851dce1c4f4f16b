"""The report of an evaluation: each model's `scores.json` and, over every model under `--output-dir`, `results.md`
(Table 2's 10 columns and Avg., LongBench v2, RULER-QA by length, and the sections other commands add) and
`ruler_qa.png`.

`scores.json` holds, per task, what the runner scored (`runner.task_scores`) and the averages of Table 2's halves, kept
across runs of some of the tasks; the sections other commands put there (`EXTRA_SECTIONS`) are merged column by
column. Every file here is written whole (`files.write_whole`).
"""

import json
import os
import statistics

from .files import write_json, write_whole
from .tasks import ALL_TASKS, TASK_GROUPS, TASKS


TABLE2_COLUMNS = TASK_GROUPS["table2"]  # in Table 2's order
# Rows other commands put into scores.json (`{column: value}`), shown under the tables above in results.md: the
# short-context benchmarks (`python -m depo_trl.evaluation.short_context`) and the context-length study
# (`python -m depo_trl.evaluation.context_study`)
EXTRA_SECTIONS = {
    "short_context": "Short-context benchmarks (lm-evaluation-harness), accuracy x100",
    "context_study_f1": "Context-length study (MuSiQue), F1 x100 by prompt length (lenient reading)",
    "context_study_latency_s": "Context-length study, mean sampling latency (s per answer) by prompt length",
}


def model_folder_name(model: str) -> str:
    """A model's folder under `--output-dir`: a Hub id with `/` as `--`, a local folder's own name."""
    return model.rstrip("/").replace("/", "--") if not os.path.isdir(model) else os.path.basename(model.rstrip("/"))


def write_model_scores(folder: str, task_scores: dict[str, dict], scoring: str) -> dict:
    """Write the model folder's `scores.json`: `task_scores` over the entries already there (tasks and extra
    sections), the averages, and the `scoring` mode the top-level numbers are in; returns what it wrote."""
    scores = _with_averages({**_read_scores(folder, scoring), **task_scores}) | {"scoring": scoring}
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
