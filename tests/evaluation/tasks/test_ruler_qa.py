"""`tasks/ruler_qa.py`: RULER-QA's contexts fill the length with distractors around the gold paragraphs, and its
questions are asked in the very words of the training rows the data builder makes."""

import pytest

from depo_trl.data.builder import ContextBuilder
from depo_trl.evaluation.tasks import TASKS
from depo_trl.evaluation.tasks.multihop_qa import moderate_examples
from depo_trl.evaluation.tasks.ruler_qa import load_ruler
from depo_trl.model_utils import load_tokenizer

from .. import FIXTURES


@pytest.mark.parametrize("target", [4096, 8192])
def test_ruler_builder_invariants(eval_model_dir, target):
    tokenizer = load_tokenizer(eval_model_dir)
    first = load_ruler(target, FIXTURES, tokenizer)
    assert [e.context for e in first] == [e.context for e in load_ruler(target, FIXTURES, tokenizer)]
    gold = {e.id: e.gold for e in moderate_examples("hotpotqa", FIXTURES)}
    for example in first:
        assert all(f"{p.title}\n{p.text}" in example.context for p in gold[example.id])
        messages = [{"role": "user", "content": f"<text>\n{example.context}\n</text>"}]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert len(tokenizer(rendered)["input_ids"]) <= target
        assert len(tokenizer(rendered)["input_ids"]) > target // 4  # filled with distractors, not just the gold


def test_evaluation_prompts_are_the_training_prompts(eval_model_dir):
    """A RULER-QA question is asked in exactly the words of the training row the builder makes at that length."""
    tokenizer = load_tokenizer(eval_model_dir)
    examples = moderate_examples("hotpotqa", FIXTURES)
    builder = ContextBuilder(tokenizer, examples, short_budget=4096, long_budget=4096, seed=0)
    for evaluated in TASKS["ruler_qa_4k"].load(FIXTURES, tokenizer)[:3]:
        row = builder.build_row(next(e for e in examples if e.id == evaluated.id))
        assert TASKS["ruler_qa_4k"].prompt(evaluated, "depo") == row["prompt"][0]["content"]
