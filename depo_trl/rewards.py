"""Answer extraction, LongBench/SQuAD normalisation, and the EM / F1 rewards (docs/design.md, "Rewards").

`em_reward` and `f1_reward` follow TRL's reward-function signature: they receive the batch's `completions` and every
dataset column as keyword arguments, and read the gold strings from the `answer` column.
"""

import importlib
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from .user_errors import UsageError


_ANSWER_MARKER = re.compile(r"the answer is", re.IGNORECASE)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)
_STRIP_CHARS = " \t\n\r\"'`*:“”‘’"


def _last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}`, with nested braces balanced; None if there is none."""
    start = text.rfind("\\boxed{")
    if start == -1:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for position in range(begin - 1, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:position]
    return None


def _clean_span(span: str) -> str:
    """Strip surrounding whitespace, quotes, `**` bold markers, a leading colon and trailing periods."""
    previous = None
    while span != previous:
        previous = span
        span = span.strip(_STRIP_CHARS)
        span = span.removesuffix(".")
    return span


def extract_answer(text: str) -> str:
    """Extract the final answer from a model response.

    Drops everything up to a closing `</think>`; takes the first non-empty line after the LAST "the answer is"
    (case-insensitive); falls back to the last `\\boxed{...}`, then to the last non-empty line. The result is stripped
    of surrounding whitespace, quotes, `**` and a trailing period. An empty response gives "".
    """
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    markers = list(_ANSWER_MARKER.finditer(text))
    if markers:
        remainder = text[markers[-1].end() :]
        lines = [_clean_span(line) for line in remainder.splitlines()]
        non_empty = [line for line in lines if line]
        if non_empty:
            return non_empty[0]
    boxed = _last_boxed(text)
    if boxed is not None:
        return _clean_span(boxed)
    lines = [_clean_span(line) for line in text.splitlines()]
    non_empty = [line for line in lines if line]
    return non_empty[-1] if non_empty else ""


def normalize_answer(text: str) -> str:
    """LongBench / SQuAD normalisation: lowercase, drop `string.punctuation`, drop articles, collapse whitespace."""
    text = text.lower()
    text = "".join(char for char in text if char not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, gold_answers: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    golds = [gold_answers] if isinstance(gold_answers, str) else list(gold_answers)
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(gold) for gold in golds))


def _token_f1(prediction_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(prediction_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, gold_answers: str | Sequence[str]) -> float:
    """LongBench `qa_f1_score`: token-level F1 of the normalised strings, maximised over the gold answers."""
    golds = [gold_answers] if isinstance(gold_answers, str) else list(gold_answers)
    prediction_tokens = normalize_answer(prediction).split()
    return max((_token_f1(prediction_tokens, normalize_answer(gold).split()) for gold in golds), default=0.0)


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """Text of a completion: a plain string, or the content of the last message of a conversational completion."""
    if isinstance(completion, str):
        return completion
    if not completion:
        return ""
    content = completion[-1].get("content", "")
    if isinstance(content, list):  # content blocks: [{"type": "text", "text": ...}, ...]
        content = "".join(block.get("text", "") for block in content if block.get("type") == "text")
    return content or ""


def _gold_list(value: Any) -> list[str] | None:
    """The gold strings of one `answer` value (a string or a non-empty list of strings); None if it is neither."""
    gold = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []
    return gold if gold and all(isinstance(item, str) for item in gold) else None


def answer_column_problem(answer: Sequence[Any] | None) -> str | None:
    """What is wrong with an `answer` column for the EM/F1 rewards (missing, or a row that is not a string or a
    non-empty list of strings), as a sentence naming the first bad row; None when every row is usable."""
    if answer is None:
        return (
            "no `answer` column, which the em/f1 rewards read (a string or a list of strings per row); add it, or "
            "use another reward function"
        )
    for row, value in enumerate(answer):
        if _gold_list(value) is None:
            return f"row {row}: `answer` must be a non-empty string or list of strings, got {value!r}; fix the dataset"
    return None


def _gold_lists(answer: Sequence[str | Sequence[str]] | None, num_completions: int) -> list[list[str]]:
    problem = answer_column_problem(answer)
    if problem:
        raise UsageError(f"{problem[0].upper()}{problem[1:]}.")
    if len(answer) != num_completions:
        raise ValueError(f"Got {len(answer)} `answer` values for {num_completions} completions.")
    return [_gold_list(value) for value in answer]


def em_reward(completions: list, answer: list | None = None, **kwargs) -> list[float]:
    """Exact-match reward: 1.0 when the extracted answer matches any gold string after normalisation, else 0.0."""
    golds = _gold_lists(answer, len(completions))
    return [exact_match_score(extract_answer(completion_text(c)), g) for c, g in zip(completions, golds)]


def f1_reward(completions: list, answer: list | None = None, **kwargs) -> list[float]:
    """Token-F1 reward of the extracted answer against the gold strings (max over gold strings), in [0, 1]."""
    golds = _gold_lists(answer, len(completions))
    return [f1_score(extract_answer(completion_text(c)), g) for c, g in zip(completions, golds)]


REWARD_FUNCTIONS = {"em": em_reward, "f1": f1_reward}


def reads_answer_column(reward_funcs: Sequence) -> bool:
    """Whether any of `reward_funcs` is a built-in reward, which reads the `answer` column."""
    return any(func in REWARD_FUNCTIONS.values() for func in reward_funcs)


def get_reward_funcs(names: Sequence[str]) -> list[Callable]:
    """Reward callables for `names` (a recipe's `reward_funcs`): the built-in `em` / `f1`, or dotted import paths such
    as `my_lib.rewards.custom_reward`; a name that resolves to nothing is a [`UsageError`]."""
    funcs = []
    for name in names:
        if name in REWARD_FUNCTIONS:
            funcs.append(REWARD_FUNCTIONS[name])
            continue
        module_path, _, attribute = name.rpartition(".")
        try:
            funcs.append(getattr(importlib.import_module(module_path), attribute))
        except (ImportError, AttributeError, ValueError):
            raise UsageError(
                f"reward_funcs {name!r}: unknown reward function; use one of {sorted(REWARD_FUNCTIONS)} or an "
                "importable dotted path such as 'my_lib.rewards.custom_reward'."
            ) from None
    if not funcs:
        raise UsageError("reward_funcs []: no reward function; set at least one, e.g. `reward_funcs: [em]`.")
    return funcs
