"""`tasks/multihop_qa.py`: the moderate-context multi-hop QA loaders on each dataset's fixture, and the Hub fallback
that only HotpotQA has."""

import pytest

from depo_trl.evaluation.tasks.multihop_qa import load_moderate, moderate_examples
from depo_trl.user_errors import UsageError

from .. import FIXTURES


@pytest.mark.parametrize("source", ["2wikimqa", "hotpotqa", "musique"])
def test_each_question_has_only_its_own_paragraphs(source):
    examples = moderate_examples(source, FIXTURES)
    evaluated = load_moderate(source, FIXTURES)
    assert [e.id for e in evaluated] == [e.id for e in examples] and evaluated
    for example, asked in zip(examples, evaluated):
        paragraphs = [*example.gold, *example.own_distractors]
        assert all(f"{p.title}\n{p.text}" in asked.context for p in paragraphs)
        assert asked.question == example.question and asked.answers == example.answers


def test_a_dataset_without_a_hub_copy_names_its_release(tmp_path):
    with pytest.raises(UsageError, match=f"--data-dir {tmp_path}: no musique_dev.jsonl there .task musique.") as error:
        moderate_examples("musique", str(tmp_path))
    assert "github.com/StonyBrookNLP/musique" in str(error.value) and "--tasks musique" in str(error.value)
    with pytest.raises(UsageError, match="no hotpotqa_dev.jsonl there, and the Hub is unreachable .offline mode."):
        moderate_examples("hotpotqa", str(tmp_path))
