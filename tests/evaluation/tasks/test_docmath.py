"""`tasks/docmath.py`: DocMath-Eval's loader on fixtures in its format, QwenLong-L1's 200 test questions, its prompt,
and how its answers are read."""

import os
import shutil

import pytest

from depo_trl.evaluation.tasks import TASKS
from depo_trl.evaluation.tasks.docmath import load_docmath
from depo_trl.user_errors import UsageError

from .. import FIXTURES


def test_docmath_scores_the_extracted_answer():
    raw = "Revenue rose from $1,000 to $1,125.\n\nTherefore, the answer is **12.5%**."
    for mode in ("official", "lenient"):
        assert TASKS["docmath"].score(mode, raw, ["12.5"], "depo").metrics == {"accuracy": 100.0}
        assert TASKS["docmath"].score(mode, raw, ["12.0"], "longbench").metrics == {"accuracy": 0.0}
    assert TASKS["docmath"].score("lenient", raw, ["12.5"], "depo").pred == "12.5%"
    assert TASKS["docmath"].score("official", raw, ["12.5"], "depo").pred == "12.5"  # QwenLong-L1 reads digits only


def test_docmath_loader_subsets_and_qwenlong_test_questions(tmp_path):
    # With QwenLong-L1's test prompts beside the subsets: only the questions those prompts hold
    examples = load_docmath(FIXTURES)
    assert [e.id for e in examples] == ["complong-testmini-0", "simplong-testmini-0", "simpshort-testmini-0"]
    assert examples[2].answers == ["12.5"] and examples[2].context.startswith("Revenue grew")
    shutil.copytree(os.path.join(FIXTURES, "docmath"), tmp_path / "docmath")
    os.remove(tmp_path / "docmath" / "docmath_all_test_200.jsonl")
    assert len(load_docmath(str(tmp_path))) == 4  # the four testmini subsets
    os.remove(tmp_path / "docmath" / "compshort_testmini.jsonl")
    with pytest.raises(UsageError, match=f"--data-dir {tmp_path}: docmath/ has no compshort_testmini.jsonl") as error:
        load_docmath(str(tmp_path))
    assert "depo_trl.evaluation.fetch" in str(error.value) and "yale-nlp/DocMath-Eval" in str(error.value)


def test_docmath_is_asked_in_qwenlong_l1_words_whatever_the_style():
    docmath = load_docmath(FIXTURES)[0]
    qwenlong = (  # QwenLong-L1's template_0shot (eval/docmath.py, eval/frames.py)
        "Please read the following text and answer the question below.\n\n<text>\n{doc}\n</text>\n\n{q}\n\n"
        'Format your response as follows: "Therefore, the answer is (insert answer here)".'
    )
    for style in ("depo", "longbench"):
        assert TASKS["docmath"].prompt(docmath, style) == qwenlong.format(doc=docmath.context, q=docmath.question)
        assert TASKS["docmath"].max_new_tokens(style) == 1024
    assert TASKS["docmath"].decoding.as_record() == {"do_sample": False}
