"""The prompt each rollout group is sampled from (`rollout_context`): the short one (DePO and its variants, the
'Short' baseline), the long one ('Long'), or either by a coin flip per group ('Short-Long')."""

import hashlib
import json
from typing import Any


def mixed_rollout_uses_long_prompt(row_key: str, seed: int, step: int) -> bool:
    """Coin flip of the 'Short-Long' baseline: whether a row's rollout group is sampled from its long prompt.

    A pure function of `(seed, step, row_key)`, so all `num_generations` copies of a row, on every process, agree.
    Probability 1/2 over rows and steps. (A resumed run generates at other steps, so it draws other coins.)
    """
    digest = hashlib.blake2b(f"{seed}:{step}:{row_key}".encode(), digest_size=8).digest()
    return digest[-1] & 1 == 1


def row_key(row: dict[str, Any]) -> str:
    """A row's identity for the coin flip: its `id`, else its prompt."""
    if row.get("id") is not None:
        return str(row["id"])
    return json.dumps(row["prompt"], sort_keys=True, default=str)


def rollout_rows(
    rows: list[dict[str, Any]], context: str, training: bool, seed: int, step: int
) -> list[dict[str, Any]]:
    """The rows with `prompt` replaced by `long_prompt` where the rollout context asks for it (`rows` itself when no
    row changes).

    Evaluation samples from the long prompt for `context="long"` and from the short one otherwise: the 'Short-Long'
    coin flip is a training choice, and evaluating on it would make eval rewards a random mixture.
    """
    if context == "short" or (context == "mixed" and not training):
        return rows
    if context == "long":
        return [{**row, "prompt": row["long_prompt"]} for row in rows]
    return [
        {**row, "prompt": row["long_prompt"]} if mixed_rollout_uses_long_prompt(row_key(row), seed, step) else row
        for row in rows
    ]
