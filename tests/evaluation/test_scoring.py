"""`scoring.py`: the two scoring modes against the official evaluation code's behaviour, task family by task family;
the lenient readings by hand.

Each case names the official file and line it follows, at the commits in `depo_trl.evaluation.scoring` (THUDM/LongBench
2e00731, Tongyi-Zhiwen/QwenLong-L1 38d0806). The expected numbers are worked out by hand from those rules; `None`
stands for an output the official loop leaves out (neither written nor counted).
"""

import pytest

from depo_trl.evaluation.scoring import (
    docmath_correct,
    docmath_lenient,
    docmath_official,
    longbench_lenient,
    longbench_official,
    longbench_v2_lenient,
    longbench_v2_official,
    numbers_match,
    qwenlong_docmath_value,
    qwenlong_qa_official,
    template_lenient,
)


def _value(score, metric):
    return None if score.metrics is None else score.metrics[metric]


# --- The lenient readings by hand ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "answers", "scorer", "pred", "f1", "em"),
    [
        (
            "Therefore, the answer is The Eiffel Tower.",
            ["Eiffel Tower"],
            template_lenient,
            "The Eiffel Tower",
            100,
            100,
        ),
        # "new york city" vs "new york": precision 2/3, recall 1 -> F1 0.8
        ("so the answer is New York City", ["New York"], template_lenient, "New York City", 80.0, 0.0),
        # max over gold answers: "tomas" matches the second answer exactly
        ("the answer is Tomas.", ["her brother Tomas", "Tomas"], template_lenient, "Tomas", 100.0, 100.0),
        ("", ["anything"], template_lenient, "", 0.0, 0.0),
        # LongBench prompts are answered directly: the first line is the prediction, punctuation and case ignored
        ("Zürich!\nIt is in Switzerland.", ["zürich"], longbench_lenient, "Zürich!", 100.0, 100.0),
        ("a cat, an owl", ["the owl"], longbench_lenient, "a cat, an owl", 2 * 0.5 * 1 / 1.5 * 100, 0.0),
    ],
)
def test_lenient_scoring_by_hand(raw, answers, scorer, pred, f1, em):
    score = scorer(raw, answers)
    assert score.pred == pred
    assert score.metrics["f1"] == pytest.approx(f1)
    assert score.metrics["em"] == em


# --- LongBench v1, LongBench's prompts: LongBench/eval.py `scorer` and metrics.py `qa_f1_score` ----------------------

LONGBENCH_DIFFER = [
    # eval.py lines 70-73: the whole output is scored; "paris passage states that lyon is larger", 1 of 7 tokens:
    # precision 1/7, recall 1 -> F1 0.25. The lenient reading takes the first line.
    ("Paris\n\nThe passage states that Lyon is larger.", ["Paris"], 25.0, 100.0),
    # A <think> block is part of the output there: "think capital is paris think paris", 1 common of 6 -> F1 2/7
    ("<think>\nThe capital is Paris.\n</think>\nParis", ["Paris"], 200 / 7, 100.0),
    # "paris paris is capital", 1 common (Counter intersection) of 4 -> F1 0.4
    ("Paris.\nParis is the capital.", ["Paris"], 40.0, 100.0),
]
LONGBENCH_AGREE = [
    ("Paris", ["Paris"], 100.0),
    ("  Paris.  ", ["Paris"], 100.0),  # metrics.py lines 12-28: punctuation and spaces normalised away
    ("Tomas", ["her brother Tomas", "Tomas"], 100.0),  # eval.py line 72-73: the best over the gold answers
    ("Lyon", ["Paris"], 0.0),
    ("", ["Paris"], 0.0),  # LongBench/pred.py line 94 writes every output, so an empty one counts as 0
]


@pytest.mark.parametrize(("raw", "answers", "official", "lenient"), LONGBENCH_DIFFER)
def test_longbench_v1_official_and_lenient_differ(raw, answers, official, lenient):
    assert longbench_official(raw, answers).metrics["f1"] == pytest.approx(official)
    assert longbench_lenient(raw, answers).metrics["f1"] == pytest.approx(lenient)


@pytest.mark.parametrize(("raw", "answers", "f1"), LONGBENCH_AGREE)
def test_longbench_v1_official_and_lenient_agree(raw, answers, f1):
    assert longbench_official(raw, answers).metrics["f1"] == longbench_lenient(raw, answers).metrics["f1"] == f1


# --- Answers in the training template's format: QwenLong-L1 eval/frames.py, eval/hotpotqa.py -------------------------

TEMPLATE_DIFFER = [
    # frames.py line 48: the marker is the lower-case "the answer is"; without it there is no prediction
    ("The answer is Paris.", ["Paris"], 0.0, 100.0),
    ("\\boxed{Paris}", ["Paris"], 0.0, 100.0),
    ("Paris", ["Paris"], 0.0, 100.0),
    # frames.py line 49: everything after the marker: "paris explanation passage 2 says so", precision 1/6 ->
    # F1 2/7 = 0.2857, rounded to 0.29 by calc_metrics (lines 120-129)
    ("Therefore, the answer is Paris.\n\nExplanation: passage 2 says so.", ["Paris"], 29.0, 100.0),
    # hotpotqa.py line 154: the first gold answer only; "kesh" against "kesh river": F1 2/3 -> 0.67
    ("Therefore, the answer is the Kesh.", ["Kesh River", "the Kesh"], 67.0, 100.0),
    # frames.py lines 80-83: a yes/no gold and a different prediction score 0 (token F1 would give 0.4)
    ("Therefore, the answer is Yes, both are American.", ["yes"], 0.0, 40.0),
    # calc_metrics rounds each item's F1 to 2 decimals: "tomas berg" against "tomas" is 2/3
    ("Therefore, the answer is Tomas Berg.", ["Tomas"], 67.0, 200 / 3),
    # frames.py line 148: an empty output is left out; the lenient reading scores it 0
    ("", ["Paris"], None, 0.0),
]
TEMPLATE_AGREE = [
    ("Therefore, the answer is Paris.", ["Paris"], 100.0),
    ("Therefore, the answer is **Paris**.", ["Paris"], 100.0),  # frames.py line 46: asterisks removed
    # frames.py lines 37-41: the text after the last </think>
    ("<think>the answer is Lyon</think>\n\nTherefore, the answer is Paris.", ["Paris"], 100.0),
    # frames.py line 49: after the last marker
    ("First I thought the answer is Lyon. Re-reading, therefore, the answer is Paris.", ["Paris"], 100.0),
    ("Therefore, the answer is Lyon.", ["Paris"], 0.0),
    ("Therefore, the answer is no.", ["no"], 100.0),
    # "new york city" against "new york": F1 0.8, already 2 decimals
    ("Therefore, the answer is New York City", ["New York"], 80.0),
    ("   ", ["Paris"], 0.0),  # not empty, so not left out: no marker, 0
]


@pytest.mark.parametrize(("raw", "answers", "official", "lenient"), TEMPLATE_DIFFER)
def test_template_answers_official_and_lenient_differ(raw, answers, official, lenient):
    assert _value(qwenlong_qa_official(raw, answers), "f1") == pytest.approx(official)
    assert template_lenient(raw, answers).metrics["f1"] == pytest.approx(lenient)


@pytest.mark.parametrize(("raw", "answers", "f1"), TEMPLATE_AGREE)
def test_template_answers_official_and_lenient_agree(raw, answers, f1):
    assert qwenlong_qa_official(raw, answers).metrics["f1"] == template_lenient(raw, answers).metrics["f1"] == f1


# --- DocMath: QwenLong-L1 eval/docmath.py ----------------------------------------------------------------------------

DOCMATH_DIFFER = [
    # docmath.py line 201: the power-of-ten test compares a float logarithm for equality, and 0.7 / 0.07 is
    # 9.999999999999998; the lenient reading allows the rounding error
    ("Therefore, the answer is 0.7.", "0.07", 0.0, 100.0),
    # docmath.py line 172: a number must follow "the answer is" directly; math-verify reads these
    ("Therefore, the answer is approximately 1,235.", "1234.5678", 0.0, 100.0),
    ("Therefore, the answer is \\frac{1}{8}.", "0.125", 0.0, 100.0),
    ("Therefore, the answer is USD 1,234.5.", "1234.5", 0.0, 100.0),
    # docmath.py lines 268-271: with nothing after </think>, the whole output is read; the rewards' extraction reads
    # only what follows </think>
    ("<think>So the answer is 12.5</think>", "12.5", 100.0, 0.0),
    # docmath.py line 266: an empty output is left out
    ("", "12.5", None, 0.0),
]
DOCMATH_AGREE = [
    # Regressions: docmath.py lines 206-209 accept the smaller magnitude x1,000 or x100,000 within 0.15% of the
    # larger; the `elif`s run whenever the x100 test fails
    ("Therefore, the answer is 12,346 thousand.", "12345678", 100.0),
    ("Therefore, the answer is 2,503 million.", "2.5", 100.0),
    ("Therefore, the answer is 0.3.", "3", 100.0),  # 3 / 0.3 is exactly 10.0: a power of ten in both
    ("Therefore, the answer is $1,234.5 million.", "1234.5", 100.0),  # line 172: the "$" is read, then dropped
    ("Therefore, the answer is 12.5%.", "0.125", 100.0),  # 12.5 / 0.125 = 100.0
    ("Therefore, the answer is (12.5).", "12.5", 100.0),  # line 170: parentheses removed first
    ("The answer is 12.5", "12.5", 100.0),  # line 172: any case
    ("Therefore, the answer is -5.2.", "-5.2", 100.0),
    ("Therefore, the answer is 12.6.", "12.5", 0.0),
    ("Therefore, the answer is 2019 and 12.5.", "12.5", 0.0),  # the first number only
]


@pytest.mark.parametrize(("raw", "gold", "official", "lenient"), DOCMATH_DIFFER)
def test_docmath_official_and_lenient_differ(raw, gold, official, lenient):
    assert _value(docmath_official(raw, [gold]), "accuracy") == official
    assert docmath_lenient(raw, [gold]).metrics["accuracy"] == lenient


@pytest.mark.parametrize(("raw", "gold", "accuracy"), DOCMATH_AGREE)
def test_docmath_official_and_lenient_agree(raw, gold, accuracy):
    official, lenient = docmath_official(raw, [gold]), docmath_lenient(raw, [gold])
    assert official.metrics["accuracy"] == lenient.metrics["accuracy"] == accuracy


@pytest.mark.parametrize(
    ("number", "value"),
    [
        ("12.5", 12.5),
        ("$1234.5", 1234.5),
        ("=≈12", 12),
        (".5", 5),  # lines 111-112: the unit pattern takes a leading dot for a unit
        ("..5", 5),
        ("-.5", -0.5),
        ("007", 0),  # lines 133-137: not a Python literal
        ("1.2.3", 0),
        ("-", 0),
        ("00.5", 0.5),
    ],
)
def test_docmath_number_reading_follows_normalize(number, value):
    assert qwenlong_docmath_value(number) == value


def test_power_of_ten_tolerance_is_the_only_difference_between_the_modes_comparisons():
    assert 0.7 / 0.07 != 10.0 and 3 / 0.3 == 10.0  # why the official test rejects one and accepts the other
    assert not numbers_match(0.7, 0.07) and numbers_match(0.7, 0.07, power_of_ten_tolerance=1e-9)
    assert numbers_match(0.3, 3) and numbers_match(12346, 12345678) and numbers_match(100000.1, 1.0)
    assert not numbers_match(12400, 12345678)  # x1,000 is 0.44% off


# DocMath's lenient reading: the same number written the ways models write it (QwenLong-L1's normalisation, read by
# math-verify)
@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("12.5", 12.5),
        ("12.50", 12.5),
        ("12.5%", 12.5),  # the percent sign dropped, as QwenLong-L1 does
        ("12.5%", 0.125),  # a percentage for a fraction: a power of ten apart
        ("0.125", 12.5),
        ("$1,234.5 million", 1234.5),  # currency, thousands separator, unit word
        ("USD 1,234.5", 1234.5),
        ("€1,234.50", 1234.5),
        ("approximately 1,235", 1234.5678),  # within 0.15% of the gold
        ("12.35%", 0.12345678),  # a rounded percentage for an unrounded fraction
        ("12.34", 12.3356),  # equal once both are rounded up to 2 decimals
        ("\\frac{1}{8}", 0.125),  # LaTeX
        ("1/8", 0.125),
        ("(12.5)", 12.5),  # the template's "(insert answer here)" copied with its parentheses
        ("a decrease of 5.2%", -5.2),  # magnitudes are compared, as in QwenLong-L1
        ("$1,234 million (up from $1,000 million)", 1234.0),  # the number the answer starts with
        ("1.2 \\times 10^{3}", 1200.0),
    ],
)
def test_docmath_equal_numbers_score_1(answer, gold):
    assert docmath_correct(answer, gold)


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("12.6", 12.5),  # 0.8% off
        ("12.52", 12.5),  # 0.16% off: just outside the tolerance
        ("12.4%", 12.5),
        ("13%", 0.125),  # rounding a percentage to a whole number is not the gold
        ("1,240", 1234.5678),
        ("125.5", 12.5),  # off by a power of ten *and* a bit
        ("0.1", 0.125),
        ("2019", 12.5),  # a year in place of the answer
        ("none of the above", 12.5),
        ("", 12.5),
        ("-$5", 5.0),  # unreadable to math-verify, as to QwenLong-L1's regular expression
    ],
)
def test_docmath_near_misses_score_0(answer, gold):
    assert not docmath_correct(answer, gold)


# --- LongBench v2: THUDM/LongBench pred.py ---------------------------------------------------------------------------

V2_DIFFER = [
    # pred.py line 60: "The correct answer is" as written; other statements are not read
    ("the correct answer is (B)", "B", 0.0, 100.0),
    ("Therefore, the answer is (B).", "B", 0.0, 100.0),
    ("Answer: B", "B", 0.0, 100.0),
    ("(B) A storm closed the harbour", "B", 0.0, 100.0),
    # pred.py lines 107-109: no reasoning is dropped, and the first statement is taken
    ("<think>The correct answer is (A)? Let me check.</think>The correct answer is (B)", "B", 0.0, 100.0),
    # pred.py line 98: an empty output is left out
    ("", "B", None, 0.0),
]
V2_AGREE = [
    ("The correct answer is (C)", "C", 100.0),
    ("The correct answer is C", "C", 100.0),  # pred.py line 64
    ("**The correct answer is (D)**", "D", 100.0),  # pred.py line 59: asterisks removed
    # Regressions: the first statement is the answer; what follows it explains (pred.py's re.search, line 60)
    ("The correct answer is (B). The answer A is wrong because the log says so.", "B", 100.0),
    ("The correct answer is (B), not answer (D).", "B", 100.0),
    ("The correct answer is (A)", "B", 0.0),
    ("I think the storm did it.", "B", 0.0),
]


@pytest.mark.parametrize(("raw", "gold", "official", "lenient"), V2_DIFFER)
def test_longbench_v2_official_and_lenient_differ(raw, gold, official, lenient):
    assert _value(longbench_v2_official(raw, [gold]), "accuracy") == official
    assert longbench_v2_lenient(raw, [gold]).metrics["accuracy"] == lenient


@pytest.mark.parametrize(("raw", "gold", "accuracy"), V2_AGREE)
def test_longbench_v2_official_and_lenient_agree(raw, gold, accuracy):
    official, lenient = longbench_v2_official(raw, [gold]), longbench_v2_lenient(raw, [gold])
    assert official.metrics["accuracy"] == lenient.metrics["accuracy"] == accuracy
    assert official.pred == lenient.pred
