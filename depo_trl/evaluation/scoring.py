"""Answer checks for the accuracy columns: DocMath's numeric equivalence and LongBench v2's answer option.

DocMath follows QwenLong-L1's evaluation of DocMath-Eval (`eval/docmath.py` in Tongyi-Zhiwen/QwenLong-L1): math-verify
reads the number the answer starts with (currency signs, thousands separators, unit words, LaTeX), and the number
counts as the gold one under math-verify's own equivalence or under QwenLong-L1's tolerances (`compare_two_numbers`).
"""

import math
import re

import sympy
from math_verify import parse, verify


# `compare_two_numbers`: an answer within 0.15% of the gold (|gold| * 0.0015) is correct
RELATIVE_TOLERANCE = 0.0015
# How math-verify writes "%" and "percent": the number times an unevaluated 1/100
_PERCENT = sympy.UnevaluatedExpr(sympy.Rational(1, 100))

# "The correct answer is (B)", "Therefore, the answer is B", "Answer: option C", "The answer choice is [D]"
_ANSWER_STATEMENT = re.compile(
    r"(?i:answer)(?:\s+(?i:choice|option))?(?:\s+(?i:is))?\s*:?\s*(?:(?i:option|choice)\s+)?[(\[]?([ABCD])\b"
)
_BOXED_CHOICE = re.compile(r"\\boxed\{\s*\(?([ABCD])\b")
# A reply that is only an option: "B", "(B)", "B.", "B) The cat", "[C]: ..."; not the article in "A cat ..."
_BARE_CHOICE = re.compile(r"^\s*[(\[]?([ABCD])(?:[)\]]|(?=[.:,]|\s*$))")


def _written_value(expression: sympy.Basic | str) -> float | None:
    """The number as written, a percent sign dropped (QwenLong-L1 reads "12.5%" as 12.5); None for no real number."""
    if not isinstance(expression, sympy.Basic):
        return None  # math-verify's string fallback: the text did not parse
    try:
        return float(expression.xreplace({_PERCENT: sympy.Integer(1)}))
    except (TypeError, ValueError):  # a symbol, a set, a complex number
        return None


def _round_up(number: float) -> float:
    return math.ceil(number * 100) / 100


def numbers_match(value: float, gold: float) -> bool:
    """QwenLong-L1's `compare_two_numbers`, which compares magnitudes (so "a decrease of 5%" answers -5):

    - equal up to a power of ten (a percentage written as a fraction, thousands for millions);
    - the smaller one x100 within the tolerance of the larger (a fraction against a rounded percentage);
    - equal once both are rounded up to 2 decimals;
    - within 0.15% of the gold.

    Its x1000 and x100000 tests follow the x100 one in an `elif` that every such pair enters first, so they never
    run and are left out here.
    """
    big, small = max(abs(value), abs(gold)), min(abs(value), abs(gold))
    if small > 0:
        exponent = math.log10(big / small)
        if math.isclose(exponent, round(exponent), abs_tol=1e-9):  # QwenLong-L1 tests float equality here
            return True
    if small <= big / 50 and abs(small * 100 - big) <= RELATIVE_TOLERANCE * big:
        return True
    if _round_up(big) == _round_up(small):
        return True
    return abs(value - gold) <= RELATIVE_TOLERANCE * abs(gold)


def docmath_correct(answer: str, gold: float) -> bool:
    """Whether an extracted answer ("$1,234.5 million", "12.5%", "\\frac{1}{8}") is the gold number."""
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
    return value is not None and numbers_match(value, gold)


def extract_choice(raw: str) -> str | None:
    """The option letter a reply gives, or None when it gives none that can be read.

    Takes the last answer statement ("The correct answer is (B)", LongBench v2's format; "Therefore, the answer is
    B", the training template's; "Answer: option C"), then `\\boxed{B}`, then a reply that is only an option ("B",
    "(B) The cat"). Markdown bold is ignored; reasoning up to `</think>` is dropped.
    """
    text = raw.rsplit("</think>", 1)[-1].replace("*", "")
    for pattern in (_ANSWER_STATEMENT, _BOXED_CHOICE):
        letters = pattern.findall(text)
        if letters:
            return letters[-1]
    bare = _BARE_CHOICE.match(text)
    return bare.group(1) if bare else None
