"""`tasks/base.py`: LongBench's truncation in the middle, and the task's decoding record."""

from depo_trl.evaluation.tasks import Decoding, truncate_middle
from depo_trl.model_utils import load_tokenizer


def test_truncate_middle_keeps_both_ends(eval_model_dir):
    tokenizer = load_tokenizer(eval_model_dir)
    text = " ".join(["Passage"] * 5 + ["Question"] * 5)
    kept, length = truncate_middle(text, tokenizer, 4)
    assert kept.split() == ["Passage", "Passage", "Question", "Question"] and length == 4
    assert truncate_middle(text, tokenizer, 100) == (text, 10)


def test_decoding_records():
    assert Decoding().as_record() == {"do_sample": False}
    assert Decoding(temperature=0.1, seed=3).as_record() == {"do_sample": True, "temperature": 0.1, "seed": 3}
