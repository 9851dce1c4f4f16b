"""`tasks/longbench_v2.py`: LongBench v2's loader on a fixture in its `data.json` layout, its prompt, decoding, and how
its option letters are read."""

import pytest

from depo_trl.evaluation.scoring import extract_choice
from depo_trl.evaluation.tasks import TASKS, Decoding
from depo_trl.evaluation.tasks.longbench_v2 import load_longbench_v2

from .. import FIXTURES


@pytest.mark.parametrize(
    ("raw", "choice"),
    [
        ("The correct answer is (B)", "B"),  # LongBench v2's format
        ("The correct answer is C", "C"),
        ("Therefore, the answer is (A).", "A"),  # the training template's
        ("**The correct answer is (D)**", "D"),
        ("Answer: B", "B"),
        ("The answer is: (C) It was postponed", "C"),
        ("The answer choice is [D].", "D"),
        ("The answer is option A, since the log says so.", "A"),
        ("Option A is wrong and B too. The correct answer is C.", "C"),  # the answer statement, not the options
        # The first statement: what follows it is explanation (an "answer A" without "is" states nothing)
        ("The correct answer is (B). The answer A is wrong because the log says so.", "B"),
        ("The correct answer is (B), not answer (D).", "B"),
        ("The correct answer is (C).\n\nExplanation: the answer is not (A), since ...", "C"),
        ("<think>the answer is A</think>The correct answer is (D)", "D"),
        ("\\boxed{C}", "C"),
        ("B", "B"),
        ("(B) A storm closed the harbour", "B"),
        ("B.", "B"),
        # Unparsable: no option given, an article rather than an option, a lowercase letter, nothing at all
        ("I think the storm did it.", None),
        ("A storm closed the harbour.", None),
        ("The answer is b", None),
        ("The answer is Bob.", None),
        ("", None),
    ],
)
def test_longbench_v2_lenient_option_parsing(raw, choice):
    assert extract_choice(raw) == choice
    score = TASKS["longbench_v2"].score("lenient", raw, ["B"], "longbench")
    assert score.pred == choice and score.metrics == {"accuracy": 100.0 if choice == "B" else 0.0}


def test_longbench_v2_loader():
    v2 = load_longbench_v2(FIXTURES)
    assert [e.answers for e in v2] == [["B"], ["C"], ["A"]]
    assert v2[0].question.endswith("Choices:\n(A) The keeper was ill\n(B) A storm closed the harbour\n"
                                   "(C) The lighthouse was repaired\n(D) It was winter")  # fmt: skip


def test_longbench_v2_prompt_budget_and_decoding():
    v2 = load_longbench_v2(FIXTURES)[0]
    for style in ("depo", "longbench"):  # LongBench v2's prompts/0shot.txt: the only format its pred.py reads
        assert TASKS["longbench_v2"].prompt(v2, style) == (
            "Please read the following text and answer the question below.\n\n<text>\n"
            f"{v2.context}\n</text>\n\nWhat is the correct answer to this question: {v2.question}\n\n"
            'Format your response as follows: "The correct answer is (insert answer here)".'
        )
        assert TASKS["longbench_v2"].max_new_tokens(style) == 128
    assert TASKS["longbench_v2"].decoding == Decoding(temperature=0.1, seed=0)
