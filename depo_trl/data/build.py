"""Build DePO training data: `python -m depo_trl.data.build --source musique --input PATH_OR_HUB_ID ...`.

Writes a `datasets.DatasetDict` (one split) loadable with `datasets.load_from_disk(output_dir)`, and `stats.json`
beside it with the paper's Table 1 statistics and the skipped rows by reason. The folder appears whole or not at all:
the build writes `<output_dir>.partial` and renames it into place, so a build killed halfway leaves no dataset at
`output_dir` (an earlier build there stays as it was until the new one is complete).
"""

import argparse
import json
import os
import shutil

from datasets import Dataset, DatasetDict

from ..model_utils import load_tokenizer
from ..user_errors import (
    ArgumentParser,
    UsageError,
    check_model_source,
    positive_int,
    reports_usage_errors,
    writable_folder,
)
from .builder import ContextBuilder, format_statistics, length_statistics
from .sources import SOURCES, adapt_numbered, numbered_records


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m depo_trl.data.build", description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, choices=sorted(SOURCES), help="Format of the input records.")
    parser.add_argument("--input", required=True, help="A local .jsonl/.json file, or a Hub dataset id.")
    parser.add_argument("--split", default="train", help="Split to read from a Hub dataset, and to write.")
    parser.add_argument("--config-name", default=None, help="Hub dataset config (e.g. 'distractor' for HotpotQA).")
    parser.add_argument("--tokenizer", required=True, help="Tokenizer (Hub id or path) the budgets are counted with.")
    parser.add_argument("--short-budget", type=int, default=1536, help="Max tokens of the rendered short prompt.")
    parser.add_argument("--long-budget", type=int, default=15360, help="Max tokens of the rendered long prompt.")
    parser.add_argument(
        "--num-samples", type=positive_int, default=None, help="Build at most this many rows (input order)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of every random choice (distractors, order).")
    parser.add_argument("--output-dir", required=True, help="Where to save the dataset and stats.json.")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="Also push the dataset to this repo.")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    return parser.parse_args(argv)


def build_dataset(args: argparse.Namespace) -> tuple[DatasetDict, dict]:
    """Run the whole build; returns the dataset and the statistics written to stats.json."""
    if not 0 < args.short_budget <= args.long_budget:
        raise UsageError(
            f"--short-budget {args.short_budget} / --long-budget {args.long_budget}: need 0 < short <= long tokens."
        )
    check_model_source("--tokenizer", args.tokenizer, what="tokenizer")
    tokenizer = load_tokenizer(args.tokenizer)
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError(
            f"--tokenizer {args.tokenizer}: no chat template, and budgets are counted on the rendered chat prompt; "
            "use an instruct model's tokenizer."
        )
    records = numbered_records(args.input, args.split, args.config_name)
    examples, skipped = adapt_numbered(args.source, records, origin=f"--input {args.input}")
    if not examples:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in skipped.items()) or "the input has no records"
        raise UsageError(f"--input {args.input}: no usable row as --source {args.source} ({reasons}).")
    builder = ContextBuilder(tokenizer, examples, args.short_budget, args.long_budget, args.seed)
    selected = examples if args.num_samples is None else examples[: args.num_samples]
    rows, report = builder.build(selected, show_progress=not args.no_progress)
    for reason, count in skipped.items():
        report.skipped[reason] = report.skipped.get(reason, 0) + count
    if not rows:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in report.skipped.items())
        raise UsageError(
            f"--short-budget {args.short_budget}: no row fits ({reasons}); raise --short-budget (the prompt template "
            "alone takes about 60 tokens) or check the input."
        )
    stats = {
        **length_statistics(rows),
        "skipped": report.skipped,
        "source": args.source,
        "input": args.input,
        "tokenizer": args.tokenizer,
        "short_budget": args.short_budget,
        "long_budget": args.long_budget,
        "seed": args.seed,
    }
    return DatasetDict({args.split: Dataset.from_list(rows)}), stats


def _written_by_a_build(folder: str, name: str) -> bool:
    """Whether `name` in `folder` is something a build writes: dataset_dict.json, stats.json, or a split folder."""
    path = os.path.join(folder, name)
    if not os.path.isdir(path):
        return name in ("dataset_dict.json", "stats.json")
    return all(file in ("dataset_info.json", "state.json") or file.endswith(".arrow") for file in os.listdir(path))


def check_output_dir(output_dir: str) -> None:
    """`output_dir` can take the build: it does not exist, is empty, or holds an earlier build, which the new one
    replaces. A folder with anything else in it is refused rather than replaced: those files are the user's."""
    writable_folder("--output-dir", output_dir)
    if not os.path.isdir(output_dir):
        return
    others = [name for name in sorted(os.listdir(output_dir)) if not _written_by_a_build(output_dir, name)]
    if others:
        raise UsageError(
            f"--output-dir {output_dir}: holds files a build does not write ({', '.join(others[:3])}), which "
            "replacing the folder would delete; pass a new folder, or an earlier build's."
        )


def save_whole(dataset: DatasetDict, stats: dict, output_dir: str) -> None:
    """Save the dataset and stats.json to `<output_dir>.partial`, then rename it to `output_dir`: a build killed
    before the end leaves no dataset at `output_dir`, and an earlier build there is replaced only by a complete one.
    What a killed build left beside `output_dir` is cleared first."""
    target = os.path.abspath(output_dir)
    partial, previous = f"{target}.partial", f"{target}.previous"
    if os.path.isdir(previous) and not os.path.exists(target):  # killed between the two renames below
        os.replace(previous, target)
    for leftover in (partial, previous):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        dataset.save_to_disk(partial)
        with open(os.path.join(partial, "stats.json"), "w", encoding="utf-8") as handle:
            json.dump(stats, handle, indent=2)
        sync_folder(partial)
    except BaseException:  # a full disk, Ctrl-C: nothing half-written stays behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if os.path.isdir(target):  # a folder cannot be renamed over a non-empty one: move the old build aside first
        os.replace(target, previous)
    os.replace(partial, target)
    sync_folder(os.path.dirname(target))  # the rename itself
    shutil.rmtree(previous, ignore_errors=True)


def sync_folder(folder: str) -> None:
    """Flush `folder`'s files and the folder itself to disk: a rename is only as durable as what it names, and after a
    machine crash a renamed folder could otherwise hold files the system had not yet written."""
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@reports_usage_errors("python -m depo_trl.data.build")
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_output_dir(args.output_dir)
    dataset, stats = build_dataset(args)
    save_whole(dataset, stats, args.output_dir)
    print(format_statistics(stats, stats["skipped"]))
    print(f"Saved {stats['count']} rows to {args.output_dir} (load with datasets.load_from_disk).")
    if args.push_to_hub:
        dataset.push_to_hub(args.push_to_hub)
        print(f"Pushed to https://huggingface.co/datasets/{args.push_to_hub}")


if __name__ == "__main__":
    main()
