"""How an answer is read and scored, in two modes.

- `official`: each benchmark's own evaluation code, the code behind the published numbers, rule for rule (written
  here in our own code; the repository, file, line and commit are named beside each rule):
  - LongBench v1 with LongBench's prompts: THUDM/LongBench `LongBench/eval.py` and `LongBench/metrics.py`;
  - the answers in the training template's format ("Therefore, the answer is ..."): Frames, the multi-hop sets and
    LongBench v1 asked that way, as Tongyi-Zhiwen/QwenLong-L1 `eval/frames.py`, `eval/hotpotqa.py`, ... score them;
  - DocMath: QwenLong-L1 `eval/docmath.py` (its numeric rules);
  - LongBench v2: THUDM/LongBench `pred.py` (its answer-letter extraction).
- `lenient`: the project's own reading, the one the training rewards use: the answer the EM/F1 rewards extract,
  the best score over every gold alias, math-verify for DocMath's numbers, a forgiving option-letter reader for
  LongBench v2; an empty output scores 0.

A scorer takes the raw output and the gold answers and returns a `Score`: the answer it read and the metrics x100,
or no metrics when the official code leaves the output out (QwenLong-L1's and LongBench v2's loops skip an empty
output: it is neither written nor counted).
"""

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sympy
from math_verify import parse, verify

from ..rewards import exact_match_score, extract_answer, f1_score, normalize_answer


# The snapshots the official rules were read from; the line numbers below are at these commits
LONGBENCH = "THUDM/LongBench@2e00731f8d0bff23dc4325161044d0ed8af94c1e"
QWENLONG_L1 = "Tongyi-Zhiwen/QwenLong-L1@38d080661ea86972a3e788a240971fca47405fc9"
SCORING_MODES = ("official", "lenient")


@dataclass(frozen=True)
class Score:
    """One output as one scoring rule reads it.

    Attributes:
        pred: the answer the rule read from the output; None when it found none.
        metrics: the metrics x100 (`{"f1", "em"}` or `{"accuracy"}`); None when the rule leaves the output out of the
            task's mean, as the official loops do with an empty output.
    """

    pred: str | None
    metrics: dict[str, float] | None

    def as_record(self) -> dict | None:
        """What a prediction row says about it (null for an output left out)."""
        return None if self.metrics is None else {"pred": self.pred, **self.metrics}


Scorer = Callable[[str, Sequence[str]], Score]
LEFT_OUT = Score(None, None)


@dataclass(frozen=True)
class ScoringRules:
    """A task family's two readings, and the official code the first one follows."""

    official: Scorer
    lenient: Scorer
    source: str

    def score(self, mode: str, raw: str, answers: Sequence[str]) -> Score:
        return (self.official if mode == "official" else self.lenient)(raw, answers)


def _qa_metrics(f1: float, em: float) -> dict[str, float]:
    return {"f1": 100.0 * f1, "em": 100.0 * em}


def _after_thinking(text: str) -> str:
    return text.rsplit("</think>", 1)[-1]


# --- LongBench v1, asked in LongBench's prompts ---------------------------------------------------------------------


def longbench_official(raw: str, answers: Sequence[str]) -> Score:
    """LongBench's `scorer` (LongBench/eval.py lines 66-75): the whole output (only trec, triviaqa, samsum and lsht,
    none of them evaluated here, keep its first line), `qa_f1_score` (metrics.py lines 118-134) best over the gold
    answers; an empty output is scored (0), as pred.py writes every output. EM beside it is ours (LongBench has
    none)."""
    return Score(raw, _qa_metrics(f1_score(raw, answers), exact_match_score(raw, answers)))


def longbench_lenient(raw: str, answers: Sequence[str]) -> Score:
    """The first line of the answer, reasoning up to `</think>` dropped, best over the gold answers."""
    pred = _after_thinking(raw).strip().split("\n")[0].strip()
    return Score(pred, _qa_metrics(f1_score(pred, answers), exact_match_score(pred, answers)))


# --- Answers in the training template's format (QwenLong-L1's eval/frames.py, eval/hotpotqa.py, ...) ---------------

_QWENLONG_ANSWER_MARKER = "the answer is"  # lower case: "The answer is" does not count
# DeepSeek-R1's chat tokens, which QwenLong-L1 removes from the answer (eval/frames.py line 49)
_R1_TOKENS = ("<｜Assistant｜>", "<｜end▁of▁sentence｜>")
_YES_NO = ("yes", "no", "noanswer")


def qwenlong_final_text(raw: str) -> str:
    """The text QwenLong-L1 reads the answer from (`get_pred` and `extract_solution`, eval/frames.py lines 27-43 and
    150-153; eval/docmath.py lines 30-45 and 268-271): the stripped output after its last `</think>`, or the whole
    output when it has none or nothing follows it."""
    response = raw.strip()
    final = response.split("</think>")[-1].strip() if "</think>" in response else ""
    return final or response


def qwenlong_answer(raw: str) -> str | None:
    """QwenLong-L1's `extract_answer` (eval/frames.py lines 45-53): everything after the last lower-case "the answer
    is", bold markers, R1's chat tokens and surrounding periods removed; None without the marker."""
    text = qwenlong_final_text(raw).replace("*", "")
    if _QWENLONG_ANSWER_MARKER not in text:
        return None
    answer = text.rsplit(_QWENLONG_ANSWER_MARKER, 1)[-1].strip()
    for token in _R1_TOKENS:
        answer = answer.replace(token, "")
    return answer.strip().strip(".").strip()


def qwenlong_f1(pred: str, gold: str) -> float:
    """QwenLong-L1's `f1_score` (eval/frames.py lines 74-94), HotpotQA's: 0 when either side is "yes", "no" or
    "noanswer" and the other differs, else token F1; rounded to 2 decimals, as `calc_metrics` (lines 120-129)
    rounds the mean of its one item."""
    normalized_pred, normalized_gold = normalize_answer(pred), normalize_answer(gold)
    if normalized_pred != normalized_gold and (normalized_pred in _YES_NO or normalized_gold in _YES_NO):
        return 0.0
    return round(f1_score(pred, gold), 2)


def qwenlong_qa_official(raw: str, answers: Sequence[str]) -> Score:
    """QwenLong-L1's `get_pred` for Frames and the LongBench sets (eval/frames.py lines 148-156, eval/hotpotqa.py
    lines 150-158): an empty output is left out; the answer after the marker against the first gold answer only
    (`item["answers"][0]`); no marker, or nothing after it, scores 0."""
    if raw == "":
        return LEFT_OUT
    pred = qwenlong_answer(raw)
    if not pred:
        return Score(pred, _qa_metrics(0.0, 0.0))
    return Score(pred, _qa_metrics(qwenlong_f1(pred, answers[0]), exact_match_score(pred, answers[0])))


def template_lenient(raw: str, answers: Sequence[str]) -> Score:
    """The training rewards' reading (docs/design.md, "Rewards"): the first line after the last "the answer is" in
    any case, else the last `\\boxed{}`, else the last line; F1 and EM best over every gold alias."""
    pred = extract_answer(raw)
    return Score(pred, _qa_metrics(f1_score(pred, answers), exact_match_score(pred, answers)))


# --- DocMath: QwenLong-L1's eval/docmath.py -------------------------------------------------------------------------

# `compare_two_numbers`: within 0.15% (`within_eps`, eval/docmath.py lines 182-187)
RELATIVE_TOLERANCE = 0.0015
# The scales `compare_two_numbers` tries on the smaller magnitude (lines 204-209): (factor, when it is at most the
# larger / this); an `elif` chain, so a later scale is tried whenever an earlier one does not fit
_SCALES = ((100, 50), (1000, 500), (100000, 50000))
# The lenient reading accepts a power of ten up to floating-point error; QwenLong-L1 compares the logarithm exactly
LENIENT_POWER_OF_TEN_TOLERANCE = 1e-9
# `extract_answer` (lines 157-179): the first "the answer is" in any case, then optional symbols and one minus sign,
# then digits, dots and commas
_QWENLONG_NUMBER = re.compile(r"the answer is (=?≈?`?%?\$?°?£?€?¥?-?[0-9.,]+)", re.IGNORECASE)
_QWENLONG_SYMBOLS = "=≈`%$°£€¥"
# `normalize` (lines 65-154) on such a number: its unit pattern `[^-+\d]{1,2}(number)$` (lines 111-112) drops one
# or two leading dots (".5" reads 5); then `eval` reads a Python literal, and anything else is 0 (lines 128-137)
_LEADING_DOTS = re.compile(r"\.{1,2}(\d*\.*\d+)")
_PYTHON_NUMBER = re.compile(r"-?(?:\d+\.\d*|\.\d+|0+|[1-9]\d*)")


def qwenlong_docmath_number(text: str) -> str | None:
    """The number QwenLong-L1 reads after the first "the answer is" (eval/docmath.py `extract_answer`, lines
    157-179): asterisks and parentheses removed first, commas and trailing dots after; None when there is none."""
    match = _QWENLONG_NUMBER.search(text.replace("*", "").replace("(", "").replace(")", ""))
    return match[1].replace(",", "").rstrip(".") if match else None


def qwenlong_docmath_value(number: str) -> float:
    """The value QwenLong-L1's `normalize` gives a number `extract_answer` read: symbols dropped, one or two leading
    dots dropped, then a Python number literal ("007", "1.2.3" and "-" are not: 0)."""
    for symbol in _QWENLONG_SYMBOLS:
        number = number.replace(symbol, "")
    if leading_dots := _LEADING_DOTS.fullmatch(number):
        number = leading_dots[1]
    if not _PYTHON_NUMBER.fullmatch(number):
        return 0
    return float(number) if "." in number else int(number)


def _within(value: float, target: float) -> bool:
    """`within_eps` (eval/docmath.py lines 182-187), written its way round."""
    tolerance = abs(target) * RELATIVE_TOLERANCE
    return target - tolerance <= value <= target + tolerance


def _round_up(number: float) -> float:
    return math.ceil(number * 100) / 100


def numbers_match(value: float, gold: float, power_of_ten_tolerance: float = 0.0) -> bool:
    """QwenLong-L1's `compare_two_numbers` (eval/docmath.py lines 190-214), which compares magnitudes (so "a decrease
    of 5%" answers -5):

    - equal up to a power of ten: the log10 of their ratio is whole, within `power_of_ten_tolerance` (QwenLong-L1
      compares the float for equality, so 0.7 against 0.07 fails there: log10(10.000000000000002) is not 1);
    - the smaller one x100, x1,000 or x100,000 within 0.15% of the larger ("12,346 thousand" for 12345678);
    - equal once both are rounded up to 2 decimals;
    - within 0.15% of the gold.
    """
    big, small = max(abs(value), abs(gold)), min(abs(value), abs(gold))
    if small > 0:
        exponent = math.log10(big / small)
        if abs(exponent - round(exponent)) <= power_of_ten_tolerance:
            return True
    if any(small <= big / bound and _within(small * factor, big) for factor, bound in _SCALES):
        return True
    if _round_up(big) == _round_up(small):
        return True
    return _within(value, gold)


def docmath_official(raw: str, answers: Sequence[str]) -> Score:
    """QwenLong-L1's DocMath judge (eval/docmath.py `get_pred`, lines 266-273): an empty output is left out; the
    number after the first "the answer is" of the final text, compared with the gold read the same way from
    "Therefore, the answer is {gold}."; no number scores 0."""
    if raw == "":
        return LEFT_OUT
    pred = qwenlong_docmath_number(qwenlong_final_text(raw))
    gold = qwenlong_docmath_number(f"Therefore, the answer is {answers[0]}.")
    correct = bool(pred) and numbers_match(qwenlong_docmath_value(pred), qwenlong_docmath_value(gold))
    return Score(pred, {"accuracy": 100.0 * correct})


# How math-verify writes "%" and "percent": the number times an unevaluated 1/100
_PERCENT = sympy.UnevaluatedExpr(sympy.Rational(1, 100))


def _written_value(expression: sympy.Basic | str) -> float | None:
    """The number as written, a percent sign dropped (QwenLong-L1 reads "12.5%" as 12.5); None for no real number."""
    if not isinstance(expression, sympy.Basic):
        return None  # math-verify's string fallback: the text did not parse
    try:
        return float(expression.xreplace({_PERCENT: sympy.Integer(1)}))
    except (TypeError, ValueError):  # a symbol, a set, a complex number
        return None


def docmath_correct(answer: str, gold: float) -> bool:
    """Whether an extracted answer ("$1,234.5 million", "12.5%", "\\frac{1}{8}") is the gold number, read by
    math-verify (currency, separators, unit words, LaTeX) and compared by math-verify or QwenLong-L1's tolerances."""
    if answer.startswith("(") and answer.endswith(")"):  # the template's "(insert answer here)", copied whole
        answer = answer[1:-1]
    # The keyword anchors math-verify to the first number, as QwenLong-L1 reads the one after "the answer is"; on its
    # own, math-verify takes the last ("$1,234 million (up from $1,000 million)" would read 1000)
    parsed = parse(f"The answer is {answer}")
    if not parsed:
        return False
    if verify(sympy.Float(gold), parsed):
        return True
    value = _written_value(parsed[0])
    return value is not None and numbers_match(value, gold, LENIENT_POWER_OF_TEN_TOLERANCE)


def docmath_lenient(raw: str, answers: Sequence[str]) -> Score:
    """The training rewards' extracted answer, right when `docmath_correct` finds it is the gold number."""
    pred = extract_answer(raw)
    return Score(pred, {"accuracy": 100.0 * docmath_correct(pred, float(answers[0]))})


# --- LongBench v2: THUDM/LongBench pred.py ---------------------------------------------------------------------------

# `extract_answer` (pred.py lines 58-69): the first "The correct answer is (X)", else the first "The correct answer
# is X", case as written, after the asterisks are removed
_V2_IN_PARENTHESES = re.compile(r"The correct answer is \(([A-D])\)")
_V2_BARE = re.compile(r"The correct answer is ([A-D])")


def longbench_v2_official(raw: str, answers: Sequence[str]) -> Score:
    """LongBench v2's `get_pred` (pred.py lines 98-111): an empty output is left out; the option `extract_answer`
    reads from the stripped output, right when it is the gold letter; None (unparsed) is wrong."""
    if raw == "":
        return LEFT_OUT
    response = raw.strip().replace("*", "")
    match = _V2_IN_PARENTHESES.search(response) or _V2_BARE.search(response)
    choice = match[1] if match else None
    return Score(choice, {"accuracy": 100.0 * (choice == answers[0])})


# "The correct answer is (B)", "Therefore, the answer is B", "Answer: option C", "The answer choice is [D]"; a
# statement needs "is" or ":" after "answer", so "the answer A is wrong" or "not answer (D)" state nothing
_ANSWER_STATEMENT = re.compile(
    r"(?i:answer)(?:\s+(?i:choice|option))?(?:\s+(?i:is)\s*:?|\s*:)\s*(?:(?i:option|choice)\s+)?[(\[]?([ABCD])\b"
)
_BOXED_CHOICE = re.compile(r"\\boxed\{\s*\(?([ABCD])\b")
# A reply that is only an option: "B", "(B)", "B.", "B) The cat", "[C]: ..."; not the article in "A cat ..."
_BARE_CHOICE = re.compile(r"^\s*[(\[]?([ABCD])(?:[)\]]|(?=[.:,]|\s*$))")


def extract_choice(raw: str) -> str | None:
    """The option letter a reply gives, or None when it gives none that can be read.

    Takes the first answer statement ("The correct answer is (B)", LongBench v2's format; "Therefore, the answer is
    B", the training template's; "Answer: option C"): what follows it is explanation. Then `\\boxed{B}`, then a reply
    that is only an option ("B", "(B) The cat"). Markdown bold is ignored; reasoning up to `</think>` is dropped.
    """
    text = _after_thinking(raw).replace("*", "")
    for pattern in (_ANSWER_STATEMENT, _BOXED_CHOICE):
        if match := pattern.search(text):
            return match[1]
    bare = _BARE_CHOICE.match(text)
    return bare[1] if bare else None


def longbench_v2_lenient(raw: str, answers: Sequence[str]) -> Score:
    choice = extract_choice(raw)
    return Score(choice, {"accuracy": 100.0 * (choice == answers[0])})


LONGBENCH_QA = ScoringRules(longbench_official, longbench_lenient, f"{LONGBENCH} LongBench/eval.py")
TEMPLATE_QA = ScoringRules(qwenlong_qa_official, template_lenient, f"{QWENLONG_L1} eval/frames.py, eval/hotpotqa.py")
DOCMATH = ScoringRules(docmath_official, docmath_lenient, f"{QWENLONG_L1} eval/docmath.py")
LONGBENCH_V2 = ScoringRules(longbench_v2_official, longbench_v2_lenient, f"{LONGBENCH} pred.py")
