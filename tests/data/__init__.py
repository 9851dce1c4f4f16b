"""Tests of `depo_trl/data/`, one file per module: `test_<module>.py` for `depo_trl/data/<module>.py`. The source
fixtures (samples of MuSiQue, HotpotQA and 2WikiMultihopQA in their own formats) are in `tests/fixtures/` (see its
SOURCES.md); `conftest.py` has a tiny model whose tokenizer knows their words, and this module the build command as
the tests run it."""

import json
import os
import re

from datasets import load_from_disk

from depo_trl.data.build import main as build_main
from depo_trl.data.sources import from_hotpotqa, from_musique


FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
INPUTS = {
    "musique": (os.path.join(FIXTURES, "musique_sample.jsonl"), from_musique),
    "hotpotqa": (os.path.join(FIXTURES, "hotpotqa_distractor_sample.json"), from_hotpotqa),
    "2wikimqa": (os.path.join(FIXTURES, "2wikimultihopqa_sample.json"), from_hotpotqa),
}
SHORT_BUDGET, LONG_BUDGET = 700, 2500


def run_build(tmp_path, model_dir, source="musique", seed=0, input_path=None, **overrides):
    output_dir = str(tmp_path / f"{source}-seed{seed}")
    options = {"--short-budget": SHORT_BUDGET, "--long-budget": LONG_BUDGET, **overrides}
    argv = ["--source", source, "--input", input_path or INPUTS[source][0], "--tokenizer", model_dir]
    argv += ["--seed", str(seed), "--output-dir", output_dir, "--no-progress"]
    for flag, value in options.items():
        argv += [flag, str(value)]
    build_main(argv)
    with open(os.path.join(output_dir, "stats.json")) as handle:
        return load_from_disk(output_dir)["train"], json.load(handle)


def parse_passages(content: str) -> list[tuple[str, str]]:
    """(title, text) of each passage in a rendered prompt, parsed independently of the builder."""
    body = content.split("<text>\n", 1)[1].split("\n</text>", 1)[0]
    blocks = re.split(r"(?:^|\n\n)Passage \d+:\n", body)[1:]
    return [tuple(block.split("\n", 1)) for block in blocks]
