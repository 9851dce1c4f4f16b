"""Shared fixtures: a tiny Qwen2 model and a locally trained word-level tokenizer, and a small short/long dataset.

Everything is built offline from code; no test downloads anything.
"""

import os

import pytest
from datasets import Dataset

from depo_trl.models.tiny import build_tiny_qwen2, build_word_level_tokenizer, save_model_and_tokenizer

from .helpers import CITIES, NAMES, TEMPLATE_WORDS, make_rows


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# Under `make test` the suite inherits make's own variables, with which every `make` a test runs as a user would
# ("make vllm-serve") reports itself as a sub-make ("make[1]: Entering directory ..."): a user's shell has none
for variable in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS"):
    os.environ.pop(variable, None)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    corpus = [TEMPLATE_WORDS, " ".join(NAMES), " ".join(CITIES), "user assistant system"]
    return build_word_level_tokenizer(corpus)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    model = build_tiny_qwen2(tiny_tokenizer, hidden_size=32, num_hidden_layers=2)
    return save_model_and_tokenizer(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture
def tiny_dataset():
    return Dataset.from_list(make_rows())
