"""LongBench v2 (the paper's appendix C.3): 503 multiple-choice questions over contexts of 8K to 2M words.

Data: `longbench_v2.json` under `--data-dir` (the benchmark's `data.json`: `_id, question, choice_A..D, answer,
context, ...`), else THUDM/LongBench-v2's `data.json` on the Hub at a pinned revision. Asked in its own 0-shot prompt
whatever `--prompt-style` says (the only answer format its `pred.py` reads), sampled at temperature 0.1 as `pred.py`
and the paper do. Scoring: `pred.py`'s answer-letter extraction (`scoring.LONGBENCH_V2`).
"""

from ...data.sources import read_records
from ...data.template import INSTRUCTION
from ..scoring import LONGBENCH_V2
from ..sources import HubFile
from .base import Decoding, EvalExample, EvalTask, PromptFormat, every_style, hub_records


DATA = HubFile(
    name="longbench_v2.json",
    also=("longbench_v2.jsonl",),
    repo_id="THUDM/LongBench-v2",
    filename="data.json",
    revision="2b48e494f2c7a2f0af81aae178e05c7e1dde0fe9",
)
MAX_NEW_TOKENS = 128  # pred.py without chain of thought


def longbench_v2_question(record: dict) -> str:
    """The question and its four choices, as LongBench v2's prompt lays them out."""
    choices = "\n".join(f"({letter}) {record[f'choice_{letter}'].strip()}" for letter in "ABCD")
    return f"{record['question'].strip()}\nChoices:\n{choices}"


def longbench_v2_prompt(example: EvalExample) -> str:
    """LongBench v2's 0-shot prompt (THUDM/LongBench prompts/0shot.txt); the question carries the four choices."""
    return (
        f"{INSTRUCTION}\n\n<text>\n{example.context}\n</text>\n\nWhat is the correct answer to this question: "
        f'{example.question}\n\nFormat your response as follows: "The correct answer is (insert answer here)".'
    )


def load_longbench_v2(data_dir: str | None) -> list[EvalExample]:
    """LongBench v2's records from `data_dir/longbench_v2.json` (or `.jsonl`) or the Hub; the gold answer is the
    option letter."""
    path = DATA.find(data_dir)
    records = read_records(path, argument="--data-dir") if path else hub_records(DATA, data_dir, "longbench_v2")
    return [EvalExample(str(r["_id"]), r["context"].strip(), longbench_v2_question(r), [r["answer"]]) for r in records]


TASK = EvalTask(
    "longbench_v2",
    "LongBench v2",
    None,
    (DATA,),
    lambda data_dir, _: load_longbench_v2(data_dir),
    every_style(PromptFormat(longbench_v2_prompt, MAX_NEW_TOKENS, LONGBENCH_V2)),
    metric="accuracy",
    decoding=Decoding(temperature=0.1),  # as its pred.py and the paper's appendix C.3 sample
)
