"""Source adapters: multi-hop QA datasets in their original formats -> one internal form, [`QAExample`].

Each adapter turns a raw record into a `QAExample`, or raises [`SkipRow`] with a reason that the build report counts
(a question that cannot become a row), or [`MalformedRecord`] (a record not in the source's format: a wrong
`--source`, or a damaged file), which stops the build with the record's line number.
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


class MalformedRecord(Exception):
    """A record not in its source's format (a field absent, or of the wrong shape); the message says what is wrong."""


def _require(record: Any, *names: str) -> None:
    """Every field in `names` is there (a Hub dataset's missing value, None, counts as absent)."""
    if not isinstance(record, dict):
        raise MalformedRecord(f"a JSON {type(record).__name__.replace('dict', 'object')}, not an object")
    absent = [f"`{name}`" for name in names if record.get(name) is None]
    if absent:
        raise MalformedRecord(f"no field {', '.join(absent)}")


def _require_filled(record: dict[str, Any], *names: str) -> None:
    for name in names:
        if record[name] in ("", []):
            raise SkipRow(f"empty field `{name}`")


def from_musique(record: dict[str, Any]) -> QAExample:
    """MuSiQue (original format): `paragraphs[{idx, title, paragraph_text, is_supporting}]`, `answer`,
    `answer_aliases`, `answerable`. Unanswerable rows are skipped."""
    _require(record, "id", "question", "answer", "paragraphs")
    if not record.get("answerable", True):
        raise SkipRow("not answerable")
    _require_filled(record, "id", "question", "answer", "paragraphs")
    gold, own = [], []
    for index, paragraph in enumerate(record["paragraphs"]):
        for name in ("title", "paragraph_text"):
            if not isinstance(paragraph, dict) or paragraph.get(name) is None:
                raise MalformedRecord(f"no field `paragraphs[{index}].{name}`")
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
        raise MalformedRecord("no field `_id` (nor `id`)")
    _require_filled(record, "question", "answer", "context", "supporting_facts")
    try:
        supporting = _hotpot_supporting_titles(record)
        paragraphs = [Paragraph(title, "".join(sentences).strip()) for title, sentences in _hotpot_context(record)]
    except (KeyError, TypeError, ValueError) as error:  # neither layout: not pairs, not lists of strings
        raise MalformedRecord(f"`context` or `supporting_facts` in neither known layout ({error})") from None
    gold, own = [], []
    for item in paragraphs:
        (gold if item.title in supporting else own).append(item)
    if not gold:
        raise SkipRow("no supporting paragraph")
    return QAExample(str(row_id), record["question"], [record["answer"]], gold, own)


SOURCES: dict[str, Callable[[dict[str, Any]], QAExample]] = {
    "musique": from_musique,
    "hotpotqa": from_hotpotqa,
    "2wikimqa": from_hotpotqa,
}
# The fields each source's records have, for the message about a record that lacks one
_SOURCE_FIELDS = {
    "musique": "id, question, answer, paragraphs[title, paragraph_text]",
    "hotpotqa": "_id, question, answer, context, supporting_facts",
    "2wikimqa": "_id, question, answer, context, supporting_facts",
}


def numbered_records(
    path_or_hub_id: str, split: str = "train", config_name: str | None = None, argument: str = "--input"
) -> Iterator[tuple[str, Any]]:
    """Raw records with where each one is: `line N` of a `.jsonl` file, `record N` of a `.json` array, `row N` of a
    Hub dataset (read through `datasets.load_dataset`).

    A value that looks like a local path is never looked up on the Hub. Mistakes are [`UsageError`]s naming
    `argument` (the option the path came from); a line that is not valid JSON names its number.
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
                            yield f"line {line_number}", json.loads(line)
                        except json.JSONDecodeError as error:
                            raise UsageError(
                                f"{argument} {path_or_hub_id}: line {line_number}: not valid JSON ({error}); fix or "
                                "delete the line (a file cut short by an interrupted download or copy ends in a "
                                "partial line: fetch it again)."
                            ) from None
            else:
                try:
                    records = json.load(handle)
                except json.JSONDecodeError as error:
                    raise UsageError(
                        f"{argument} {path_or_hub_id}: not valid JSON ({error}); fix the file, or fetch it again "
                        "if a download or copy was interrupted."
                    ) from None
                if not isinstance(records, list):
                    raise UsageError(
                        f"{argument} {path_or_hub_id}: expected a JSON array of records, got {type(records).__name__}."
                    )
                yield from ((f"record {number}", record) for number, record in enumerate(records, start=1))
        return
    from datasets import load_dataset

    try:
        dataset = load_dataset(path_or_hub_id, config_name, split=split)
    except Exception as error:  # the Hub client raises many types; all mean the same thing to the user
        raise hub_failure(argument, path_or_hub_id, error, fix) from None
    yield from ((f"row {number}", record) for number, record in enumerate(dataset, start=1))


def read_records(
    path_or_hub_id: str, split: str = "train", config_name: str | None = None, argument: str = "--input"
) -> Iterator[Any]:
    """The raw records of [`numbered_records`], without where they are."""
    for _, record in numbered_records(path_or_hub_id, split, config_name, argument):
        yield record


def adapt_numbered(
    source: str, records: Iterable[tuple[str, Any]], origin: str = ""
) -> tuple[list[QAExample], dict[str, int]]:
    """Adapt `(where, record)` pairs; returns the usable examples and a count of skipped records by reason.

    A record not in the source's format stops everything with a [`UsageError`] naming `origin` (`--input PATH`) and
    where the record is: a wrong `--source` or a damaged file is not a reason to skip rows.
    """
    if source not in SOURCES:
        raise UsageError(f"Unknown source {source!r}: use one of {sorted(SOURCES)}.")
    adapter = SOURCES[source]
    examples, skipped = [], {}
    for where, record in records:
        try:
            examples.append(adapter(record))
        except SkipRow as reason:
            skipped[str(reason)] = skipped.get(str(reason), 0) + 1
        except MalformedRecord as problem:
            raise UsageError(
                f"{origin + ': ' if origin else ''}{where}: not a {source} record ({problem}); check --source (a "
                f"{source} record has {_SOURCE_FIELDS[source]}), or fix or delete that record."
            ) from None
    return examples, skipped


def adapt(source: str, records: Iterable[Any], origin: str = "") -> tuple[list[QAExample], dict[str, int]]:
    """[`adapt_numbered`] for records without their line numbers: a malformed one is named `record N`."""
    return adapt_numbered(source, ((f"record {number}", record) for number, record in enumerate(records, 1)), origin)
