"""The evaluation tests' tiny model, a Qwen2 whose word-level vocabulary holds every benchmark fixture's words, and
the fixtures as one `--data-dir` for every task."""

import os
import shutil

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


@pytest.fixture(scope="session")
def fixture_data_dir(tmp_path_factory) -> str:
    """Every task's fixture under the name its loader reads: `tests/fixtures` with LongBench's files beside the
    others (the fixtures keep them in `longbench/`, as LongBench's own folder is the `--data-dir` of its tasks)."""
    folder = tmp_path_factory.mktemp("data") / "eval"
    shutil.copytree(FIXTURES, folder, ignore=shutil.ignore_patterns("longbench", "lm_eval", "*.md"))
    for name in os.listdir(os.path.join(FIXTURES, "longbench")):
        shutil.copy(os.path.join(FIXTURES, "longbench", name), folder / name)
    return str(folder)
