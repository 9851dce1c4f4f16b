"""The columns a DePO dataset needs (README, "Dataset columns"), checked in one place by the trainer and the entry
point, for every split, before training."""

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..rewards import answer_column_problem, reads_answer_column


if TYPE_CHECKING:
    from ..config import DePOConfig


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
