"""The data tests' model: tiny, with a word-level tokenizer trained on every fixture text."""

import pytest

from depo_trl.data.sources import Paragraph, read_records
from depo_trl.data.template import format_passages, render_prompt
from depo_trl.models.tiny import build_tiny_qwen2, build_word_level_tokenizer, save_model_and_tokenizer

from . import INPUTS


@pytest.fixture(scope="session")
def fixture_model_dir(tmp_path_factory):
    """A tiny model whose word-level tokenizer was trained on every fixture text and the prompt template."""
    texts = [render_prompt(format_passages([Paragraph("", "")]), "")]
    for path, adapter in INPUTS.values():
        for record in read_records(path):
            example = adapter(record)
            texts += [example.question, *example.answers]
            texts += [f"{p.title} {p.text}" for p in (*example.gold, *example.own_distractors)]
    tokenizer = build_word_level_tokenizer(texts)
    model = build_tiny_qwen2(tokenizer)
    return save_model_and_tokenizer(model, tokenizer, tmp_path_factory.mktemp("fixture-model"))
