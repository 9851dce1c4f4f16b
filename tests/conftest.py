"""Shared fixtures: a tiny Qwen2 model and a locally trained word-level tokenizer, and a small short/long dataset.

Everything is built offline from code; no test downloads anything.
"""

import os
import random

import pytest
from datasets import Dataset

from depo_trl.data.template import render_prompt
from depo_trl.model_utils import build_tiny_qwen2, build_word_level_tokenizer, save_model_and_tokenizer


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

NAMES = ["alba", "bruno", "carla", "dario", "elena", "fabio", "gina", "hugo"]
CITIES = ["paris", "rome", "oslo", "lima", "kyoto", "cairo", "quito", "perth"]
# The training template's words (rendered with empty passages and question), and those of the rows below
TEMPLATE_WORDS = (
    render_prompt("", "")
    + " Passage : was born in Where ? Therefore , the answer is / "
    + " ".join(str(number) for number in range(1, 13))
)


def make_rows(num_rows: int = 8, num_distractors: int = 6, seed: int = 0) -> list[dict]:
    """Rows with a short prompt (gold + one distractor) and a long prompt (plus `num_distractors` more)."""
    rng = random.Random(seed)
    rows = []
    for index in range(num_rows):
        person, city = NAMES[index % len(NAMES)], CITIES[index % len(CITIES)]
        gold = f"{person} was born in {city} ."
        others = [f"{rng.choice(NAMES)} was born in {rng.choice(CITIES)} ." for _ in range(num_distractors + 1)]
        question = f"Question : Where was {person} born ? Therefore , the answer is"
        short = [gold, others[0]]
        long = short + others[1:]
        rng.shuffle(short)
        rng.shuffle(long)
        rows.append(
            {
                "id": f"row-{index}",
                "prompt": [{"role": "user", "content": " ".join(short) + " " + question}],
                "long_prompt": [{"role": "user", "content": " ".join(long) + " " + question}],
                "answer": [city],
            }
        )
    return rows


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
