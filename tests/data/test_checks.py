"""The checks of a training set before DePO trains on it (`depo_trl/data/checks.py`): the columns a configuration
needs, and long prompts over `max_long_prompt_length`."""

import logging

import pytest
from datasets import Dataset

from depo_trl.model_utils import load_tokenizer

from ..helpers import make_rows, make_trainer


def test_missing_long_prompt_column_is_a_clear_error(tiny_model_dir, tiny_dataset, tmp_path):
    short_only = tiny_dataset.remove_columns("long_prompt")
    with pytest.raises(ValueError, match="no `long_prompt` column"):
        make_trainer(tiny_model_dir, short_only, tmp_path, distillation="kd")
    with pytest.raises(ValueError, match="no `long_prompt` column"):
        make_trainer(tiny_model_dir, short_only, tmp_path, rollout_context="mixed", distillation="none")
    make_trainer(tiny_model_dir, short_only, tmp_path, distillation="none")  # the 'Short' baseline needs none


def test_overlong_rows_are_dropped_with_one_warning(tiny_model_dir, tmp_path, caplog):
    rows = make_rows(num_rows=4, num_distractors=2) + make_rows(num_rows=4, num_distractors=12, seed=1)
    dataset = Dataset.from_list(rows)
    tokenizer = load_tokenizer(tiny_model_dir)
    texts = [
        tokenizer.apply_chat_template(row["long_prompt"], tokenize=False, add_generation_prompt=True) for row in rows
    ]
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    limit = max(lengths[:4])
    assert min(lengths[4:]) > limit
    with caplog.at_level(logging.WARNING, logger="depo_trl"):
        trainer = make_trainer(tiny_model_dir, dataset, tmp_path, max_long_prompt_length=limit)
    assert len(trainer.train_dataset) == 4
    assert trainer.train_dataset["id"] == [row["id"] for row in rows[:4]]
    warnings = [record.message for record in caplog.records if "max_long_prompt_length" in record.message]
    assert warnings == [f"Dropped 4 of 8 train rows whose long prompt exceeds max_long_prompt_length={limit} tokens."]
    with pytest.raises(ValueError, match="every train row has a longer long prompt"):
        make_trainer(tiny_model_dir, dataset, tmp_path, max_long_prompt_length=min(lengths) - 1)
