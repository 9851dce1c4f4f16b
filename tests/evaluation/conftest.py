"""The evaluation tests' tiny model: a Qwen2 whose word-level vocabulary holds every benchmark fixture's words."""

import os

import pytest

from depo_trl.data.template import render_prompt
from depo_trl.models.tiny import build_tiny_qwen2, build_word_level_tokenizer, save_model_and_tokenizer

from . import FIXTURES


@pytest.fixture(scope="session")
def eval_model_dir(tmp_path_factory):
    texts = [render_prompt("", "")]
    for folder, _, names in os.walk(FIXTURES):
        texts += [
            open(os.path.join(folder, n), encoding="utf-8").read() for n in names if n.endswith(("json", "jsonl"))
        ]
    tokenizer = build_word_level_tokenizer(texts)
    model = build_tiny_qwen2(tokenizer, max_position_embeddings=8192)
    return save_model_and_tokenizer(model, tokenizer, tmp_path_factory.mktemp("eval-model"))
