"""FRAMES (Table 2's second column): questions answered from the Wikipedia articles they link to.

Data: `frames.jsonl` under `--data-dir`: google/frames-benchmark's rows (`Prompt`, `Answer`, ...) plus `wiki_items:
[{title, text}]`, the articles, as `python -m depo_trl.evaluation.frames` builds it (QwenLong-L1's
Tongyi-Zhiwen/frames has the same fields). The Hub's FRAMES has no article texts, so there is no Hub fallback. Asked in
QwenLong-L1's words whatever `--prompt-style` says; scored as QwenLong-L1's eval/frames.py scores answers in the
training template's format (`scoring.TEMPLATE_QA`).
"""

from ...data.sources import read_records
from ..frames import FRAMES_HUB_ID, build_frames
from ..scoring import TEMPLATE_QA
from ..sources import BuiltFile
from .base import (
    TEMPLATE_MAX_NEW_TOKENS,
    EvalExample,
    EvalTask,
    PromptFormat,
    every_style,
    missing_data,
    qwenlong_prompt,
)


DATA = BuiltFile(
    name="frames.jsonl",
    made_from=(
        f"the test split of the Hub dataset {FRAMES_HUB_ID} (no article texts) with the en.wikipedia.org articles "
        "each question links to, built by python -m depo_trl.evaluation.frames"
    ),
    build=build_frames,
)


def load_frames(data_dir: str | None) -> list[EvalExample]:
    """FRAMES questions with the articles they link to, from `data_dir/frames.jsonl`. The articles are the context,
    as QwenLong-L1 joins them."""
    path = DATA.find(data_dir)
    if path is None:
        raise missing_data(DATA, data_dir, "frames")
    return [
        EvalExample(
            str(index),
            "\n".join(f"{article['title']}\n{article['text']}" for article in record["wiki_items"]).strip(),
            record["Prompt"].strip(),
            [record["Answer"]],
        )
        for index, record in enumerate(read_records(path, argument="--data-dir"))
    ]


TASK = EvalTask(
    "frames",
    "Frames",
    "moderate",
    (DATA,),
    lambda data_dir, _: load_frames(data_dir),
    every_style(PromptFormat(qwenlong_prompt, TEMPLATE_MAX_NEW_TOKENS, TEMPLATE_QA)),
)
