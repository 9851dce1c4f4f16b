"""Source adapters: multi-hop QA datasets in their original formats -> one internal form, [`QAExample`].

Each adapter turns a raw record into a `QAExample` or raises [`SkipRow`] with a reason that the build report counts.
"""

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..user_errors import UsageError, check_dataset_source, hub_failure


@dataclass(frozen=True)
class Paragraph:
    title: str
    text: str


@dataclass
class QAExample:
    """One question with its gold answers, gold (supporting) paragraphs and its own distractor paragraphs."""

    id: str
    question: str
    answers: list[str]
    gold: list[Paragraph]
    own_distractors: list[Paragraph] = field(default_factory=list)


class SkipRow(Exception):
    """A record that cannot become a DePO row; the message is the reason counted in the build report."""


def _require(record: dict[str, Any], *names: str) -> None:
    for name in names:
        if record.get(name) in (None, "", []):
            raise SkipRow(f"missing field `{name}`")


def from_musique(record: dict[str, Any]) -> QAExample:
    """MuSiQue (original format): `paragraphs[{idx, title, paragraph_text, is_supporting}]`, `answer`,
    `answer_aliases`, `answerable`. Unanswerable rows are skipped."""
    _require(record, "id", "question", "answer", "paragraphs")
    if not record.get("answerable", True):
        raise SkipRow("not answerable")
    gold, own = [], []
    for paragraph in record["paragraphs"]:
        if "title" not in paragraph or "paragraph_text" not in paragraph:
            raise SkipRow("missing field `paragraphs[].title/paragraph_text`")
        item = Paragraph(paragraph["title"], paragraph["paragraph_text"])
        (gold if paragraph.get("is_supporting") else own).append(item)
    if not gold:
        raise SkipRow("no supporting paragraph")
    aliases = [alias for alias in record.get("answer_aliases") or [] if alias != record["answer"]]
    return QAExample(str(record["id"]), record["question"], [record["answer"], *aliases], gold, own)


def _hotpot_context(record: dict[str, Any]) -> list[tuple[str, list[str]]]:
    context = record["context"]
    if isinstance(context, dict):  # Hub layout: {"title": [...], "sentences": [[...], ...]}
        return list(zip(context["title"], context["sentences"]))
    return [(title, sentences) for title, sentences in context]


def _hotpot_supporting_titles(record: dict[str, Any]) -> set[str]:
    facts = record["supporting_facts"]
    if isinstance(facts, dict):  # Hub layout: {"title": [...], "sent_id": [...]}
        return set(facts["title"])
    return {title for title, _ in facts}


def from_hotpotqa(record: dict[str, Any]) -> QAExample:
    """HotpotQA distractor setting (and 2WikiMultihopQA, same shape): `context` as `[title, sentences]`,
    `supporting_facts` as `[title, sentence_index]`. Also accepts the Hub's column-dict layout of both fields."""
    _require(record, "question", "answer", "context", "supporting_facts")
    row_id = record.get("_id", record.get("id"))
    if row_id is None:
        raise SkipRow("missing field `_id`")
    supporting = _hotpot_supporting_titles(record)
    gold, own = [], []
    for title, sentences in _hotpot_context(record):
        item = Paragraph(title, "".join(sentences).strip())
        (gold if title in supporting else own).append(item)
    if not gold:
        raise SkipRow("no supporting paragraph")
    return QAExample(str(row_id), record["question"], [record["answer"]], gold, own)


SOURCES: dict[str, Callable[[dict[str, Any]], QAExample]] = {
    "musique": from_musique,
    "hotpotqa": from_hotpotqa,
    "2wikimqa": from_hotpotqa,
}


def read_records(
    path_or_hub_id: str, split: str = "train", config_name: str | None = None, argument: str = "--input"
) -> Iterator[dict]:
    """Raw records from a local `.jsonl` / `.json` file, or from a Hub dataset id through `datasets.load_dataset`.

    A value that looks like a local path is never looked up on the Hub. Mistakes are [`UsageError`]s naming
    `argument` (the option the path came from).
    """
    fix = "pass a .jsonl/.json file or a Hub dataset id"
    check_dataset_source(argument, path_or_hub_id, fix)
    if os.path.isdir(path_or_hub_id):
        raise UsageError(f"{argument} {path_or_hub_id}: a folder, not a file; {fix}.")
    if os.path.isfile(path_or_hub_id):
        with open(path_or_hub_id, encoding="utf-8") as handle:
            if path_or_hub_id.endswith(".jsonl"):
                for line_number, line in enumerate(handle, start=1):
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except json.JSONDecodeError as error:
                            raise UsageError(
                                f"{argument} {path_or_hub_id}, line {line_number}: not valid JSON ({error})."
                            ) from None
            else:
                try:
                    records = json.load(handle)
                except json.JSONDecodeError as error:
                    raise UsageError(f"{argument} {path_or_hub_id}: not valid JSON ({error}).") from None
                if not isinstance(records, list):
                    raise UsageError(
                        f"{argument} {path_or_hub_id}: expected a JSON array of records, got {type(records).__name__}."
                    )
                yield from records
        return
    from datasets import load_dataset

    try:
        dataset = load_dataset(path_or_hub_id, config_name, split=split)
    except Exception as error:  # the Hub client raises many types; all mean the same thing to the user
        raise hub_failure(argument, path_or_hub_id, error, fix) from None
    yield from dataset


def adapt(source: str, records: Iterable[dict[str, Any]]) -> tuple[list[QAExample], dict[str, int]]:
    """Adapt raw records; returns the usable examples and a count of skipped records by reason."""
    if source not in SOURCES:
        raise UsageError(f"Unknown source {source!r}: use one of {sorted(SOURCES)}.")
    adapter = SOURCES[source]
    examples, skipped = [], {}
    for record in records:
        try:
            examples.append(adapter(record))
        except SkipRow as reason:
            skipped[str(reason)] = skipped.get(str(reason), 0) + 1
    return examples, skipped
