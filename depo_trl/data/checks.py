"""What a DePO dataset must hold (docs/training-data.md, "Dataset columns"), checked in one place for every split,
before training: by the entry point before the model loads, and by [`~depo_trl.DePOTrainer`] for datasets handed to it
from Python.
Also the filter of rows whose long prompt is over `max_long_prompt_length`."""

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from accelerate.utils import gather_object
from datasets import Dataset, IterableDataset
from transformers.utils import logging

from ..rewards import answer_column_problem, reads_answer_column
from ..user_errors import UsageError


if TYPE_CHECKING:
    from ..config import DePOConfig


logger = logging.get_logger(__name__)

# Rows are tokenized in batches of this size when `max_long_prompt_length` filters a dataset
_LENGTH_CHECK_BATCH_SIZE = 256


def missing_column_problem(columns: Sequence[str], args: "DePOConfig", reward_funcs: Sequence[Callable]) -> str | None:
    """What a split with `columns` lacks for the configuration `args` and `reward_funcs`, as a sentence ending with
    what to do; None when nothing is missing."""
    if args.uses_long_prompt and "long_prompt" not in columns:
        return (
            f"no `long_prompt` column (it has {list(columns)}), which rollout_context={args.rollout_context!r} with "
            f"distillation={args.distillation!r} needs; build the data with `python -m depo_trl.data.build`, or "
            "train the 'Short' baseline (rollout_context: short, distillation: none)"
        )
    if reads_answer_column(reward_funcs) and "answer" not in columns:
        return f"{answer_column_problem(None)} (it has {list(columns)})"
    return None


def column_names(dataset: Dataset | IterableDataset) -> list[str]:
    """The dataset's columns; a streamed dataset whose features are unknown is asked for its first row."""
    names = getattr(dataset, "column_names", None)
    if names is None and isinstance(dataset, IterableDataset):
        names = list(next(iter(dataset)).keys())
    return list(names or [])


def check_dataset(
    dataset: Dataset | IterableDataset, args: "DePOConfig", reward_funcs: Sequence[Callable], where: str
) -> None:
    """Raise a one-line [`UsageError`] starting with `where` when `dataset` lacks a column the configuration reads,
    or (a dataset whose rows are all at hand) has an `answer` the built-in rewards cannot read. Streamed rows' answers
    are checked batch by batch during training instead."""
    problem = missing_column_problem(column_names(dataset), args, reward_funcs)
    if not problem and isinstance(dataset, Dataset) and reads_answer_column(reward_funcs):
        problem = answer_column_problem(dataset["answer"])
    if problem:
        raise UsageError(f"{where}: {problem}.")


def check_batch_answers(rows: Sequence[dict], phase: str) -> None:
    """Stop every process alike when a generation batch's `answer` is one the built-in rewards cannot read: they would
    raise on the process that holds it only, leaving the others waiting in TRL's reward gather. `phase`: "training"
    or "evaluation"."""
    local = answer_column_problem([row.get("answer") for row in rows])
    problems = [problem for problem in gather_object([local]) if problem]
    if problems:
        raise UsageError(f"A {phase} batch: {problems[0]}.")


def check_long_prompt_lengths(all_lengths: torch.Tensor, limit: int | None) -> None:
    """Refuse a generation batch with a long prompt over `limit` tokens, decided on every process's lengths alike:
    rows over it are dropped when the trainer is built, but a dataset given to `evaluate()` or changed later is not."""
    if limit is not None and int(all_lengths.max()) > limit:
        raise UsageError(
            f"max_long_prompt_length={limit}: a long prompt of {int(all_lengths.max())} tokens; rows over the limit "
            "are dropped when the trainer is built, but a dataset passed to evaluate() or changed later is not "
            "filtered. Filter it, or raise max_long_prompt_length."
        )


def datasets_by_split(train_dataset, eval_dataset) -> Iterator[tuple[str, Dataset | IterableDataset]]:
    """`(split name, dataset)` for a trainer's train dataset and its eval dataset(s)."""
    if train_dataset is not None:
        yield "train", train_dataset
    if isinstance(eval_dataset, dict):
        for name, dataset in eval_dataset.items():
            yield f"eval ({name})", dataset
    elif eval_dataset is not None:
        yield "eval", eval_dataset


def drop_overlong_rows(
    train_dataset, eval_dataset, limit: int, long_prompt_lengths: Callable[[list], list[int]]
) -> tuple[Dataset | IterableDataset | None, Dataset | IterableDataset | dict | None]:
    """The train and eval dataset(s) without the rows whose long prompt has more than `limit` tokens
    (`long_prompt_lengths` renders and counts a batch of them as training does), each with one warning saying how many
    went; an error if a dataset keeps none. An iterable dataset is filtered as it streams."""

    def drop(dataset, split: str):
        if dataset is None:
            return None
        if isinstance(dataset, IterableDataset):
            logger.warning(
                f"max_long_prompt_length={limit}: {split} rows with longer long prompts are skipped as they stream "
                "in; an iterable dataset cannot say in advance how many."
            )
            return dataset.filter(lambda row: long_prompt_lengths([row["long_prompt"]])[0] <= limit)
        keep = []
        for start in range(0, len(dataset), _LENGTH_CHECK_BATCH_SIZE):
            lengths = long_prompt_lengths(dataset[start : start + _LENGTH_CHECK_BATCH_SIZE]["long_prompt"])
            keep.extend(start + offset for offset, length in enumerate(lengths) if length <= limit)
        if not keep:
            raise UsageError(
                f"max_long_prompt_length={limit}: every {split} row has a longer long prompt; raise the limit or "
                "rebuild the data with a smaller long-context budget."
            )
        dropped = len(dataset) - len(keep)
        if dropped:
            logger.warning(
                f"Dropped {dropped} of {len(dataset)} {split} rows whose long prompt exceeds "
                f"max_long_prompt_length={limit} tokens."
            )
            dataset = dataset.select(keep)
        return dataset

    train_dataset = drop(train_dataset, "train")
    if isinstance(eval_dataset, dict):
        return train_dataset, {name: drop(dataset, f"eval ({name})") for name, dataset in eval_dataset.items()}
    return train_dataset, drop(eval_dataset, "eval")
