"""A saved tiny model + word-level tokenizer must load back through the code users run (`load_tokenizer`)."""

import json
import os

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from depo_trl.model_utils import load_tokenizer


SENTENCE = "alba was born in rome ."


def test_word_level_tokenizer_round_trips_where_auto_tokenizer_does_not(tiny_model_dir, tiny_tokenizer):
    with open(os.path.join(tiny_model_dir, "config.json")) as handle:
        assert json.load(handle)["model_type"] == "qwen2"
    expected = tiny_tokenizer(SENTENCE)["input_ids"]
    assert len(expected) == 6 and tiny_tokenizer.unk_token_id not in expected

    loaded = load_tokenizer(tiny_model_dir)
    assert loaded(SENTENCE)["input_ids"] == expected
    assert loaded.chat_template == tiny_tokenizer.chat_template
    assert loaded.pad_token == "<|endoftext|>" and loaded.eos_token == "<|im_end|>"
    # The trap `load_tokenizer` exists for: the model type picks Qwen2's BPE class, which splits nothing useful.
    assert AutoTokenizer.from_pretrained(tiny_model_dir)(SENTENCE)["input_ids"] != expected


def test_tiny_model_loads_back_and_matches_the_tokenizer(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = load_tokenizer(tiny_model_dir)
    assert model.config.vocab_size == len(tokenizer)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


QWEN2_TOKENIZER = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "tokenizers", "qwen2-1.5b-instruct"
)


@pytest.mark.skipif(
    not os.path.isdir(QWEN2_TOKENIZER), reason="the shared Qwen2 tokenizer sample is not beside the repo"
)
def test_real_bpe_tokenizer_still_goes_through_auto_tokenizer():
    tokenizer = load_tokenizer(QWEN2_TOKENIZER)
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    assert tokenizer("hello world")["input_ids"] == [14990, 1879]  # ids documented in shared/data/SOURCES.md
