"""How the evaluation writes its files, so that a run killed at any moment loses no finished work and leaves nothing
half-written that a later run trusts.

Caches (predictions, context-study answers, judge replies) are JSON-lines files that only grow: rows are appended,
flushed and synced to disk, so a kill can cut short only the last line. Reading drops such a line (and cuts it from
the file, so that the next row starts on a line of its own), with a warning; its item is computed again. Files a run
rewrites whole (`scores.json`, `results.md`, the benchmark files `python -m depo_trl.evaluation.fetch` writes) are
written beside their place and renamed into it.
"""

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from ..user_errors import UsageError


def read_rows(path: str) -> list[dict]:
    """The rows of a JSON-lines cache (none if there is no file), without a last line cut short by a kill."""
    if not os.path.isfile(path):
        return []
    with open(path, "rb") as handle:
        data = handle.read()
    *lines, tail = data.split(b"\n")  # `tail` is empty when the file ends with its newline
    rows = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise UsageError(
                    f"{path}: line {number}: not valid JSON, and not the last line, so no kill cut it short; delete "
                    "that line (its item is computed again) or the file."
                ) from None
    if tail.strip():
        try:
            rows.append(json.loads(tail))
        except ValueError:  # a kill in the middle of writing it
            os.truncate(path, len(data) - len(tail))
            print(
                f"warning: {path}: line {len(lines) + 1} was cut short (a run killed while writing it); dropped, its "
                "item is computed again.",
                file=sys.stderr,
            )
        else:  # whole, only its newline is missing: add it, so that the next row starts on a line of its own
            with open(path, "a", encoding="utf-8") as handle:
                handle.write("\n")
    return rows


def append_rows(path: str, rows: Sequence[dict]) -> None:
    """Append `rows` as JSON lines and sync them to disk before returning: what is on disk is never lost."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        handle.flush()
        os.fsync(handle.fileno())


def write_file(path: str, write: Callable[[str], Any]) -> None:
    """Write `path` through `write(temporary_path)` into `<path>.tmp`, then rename it to `path`: a kill or a failure in
    the middle leaves the previous file (or none) under `path`, never half of one."""
    temporary = f"{path}.tmp"
    try:
        write(temporary)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    os.replace(temporary, path)


def write_whole(path: str, write: Callable[[TextIO], Any]) -> None:
    """Write `path` through `write(handle)`, synced to disk, whole or not at all (see [`write_file`])."""

    def write_synced(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())

    write_file(path, write_synced)


def write_json(path: str, value: Any, **options: Any) -> None:
    """`value` as indented JSON (`options` go to `json.dump`), written whole (see [`write_whole`])."""
    write_whole(path, lambda handle: json.dump(value, handle, indent=2, **options))
