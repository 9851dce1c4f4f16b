"""Run tasks for one or more models and score their answers; `report.py` writes the tables.

Layout under `--output-dir`: one folder per model (`report.model_folder_name`) with `<task>.jsonl` predictions and
`scores.json`; at the top, `results.md` and `ruler_qa.png` (see `report.py`).

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
from .files import append_rows, read_rows, write_whole
from .report import model_folder_name, write_model_scores, write_results
from .scoring import SCORING_MODES
from .tasks import PROMPT_STYLES, EvalTask, get_task, truncate_middle


GENERATION_CHUNK = 64  # predictions are appended to disk every this many examples


@dataclass
class EvalSettings:
    """What `python -m depo_trl.evaluation` was asked: the tasks (names, see `tasks.parse_tasks`) and its options."""

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
    return write_model_scores(folder, scores, settings.scoring)


def run(models: Sequence[str], settings: EvalSettings) -> dict[str, dict]:
    """Evaluate every model, then (re)write `results.md` and `ruler_qa.png` over all models in the output dir."""
    for model in models:
        evaluate_model(model, settings)
    return write_results(settings.output_dir)
