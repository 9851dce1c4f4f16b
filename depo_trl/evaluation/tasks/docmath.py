"""DocMath-Eval (Table 2's first column): numerical reasoning over financial reports with tables.

Data: its four testmini subsets as `docmath/<subset>_testmini.jsonl` under `--data-dir` (QwenLong-L1's layout;
`question_id, question, paragraphs, ground_truth, ...`), else the Hub's yale-nlp/DocMath-Eval (gated). With
`docmath/docmath_all_test_200.jsonl` beside them (QwenLong-L1's test prompts, from the Hub's Tongyi-Zhiwen/docmath),
only the 200 questions QwenLong-L1 evaluates, as the paper does. Asked in QwenLong-L1's words whatever
`--prompt-style` says; scored by QwenLong-L1's numeric rules (`scoring.DOCMATH`).
"""

import os

from ...data.sources import read_records
from ...user_errors import UsageError
from ..scoring import DOCMATH
from ..sources import HubFile, HubSplit
from .base import (
    TEMPLATE_MAX_NEW_TOKENS,
    EvalExample,
    EvalTask,
    PromptFormat,
    every_style,
    fetch_hint,
    hub_records,
    qwenlong_prompt,
)


SUBSETS = ("complong", "compshort", "simplong", "simpshort")
FOLDER = "docmath"
SUBSET_DATA = {
    subset: HubSplit(
        name=f"{FOLDER}/{subset}_testmini.jsonl",
        repo_id="yale-nlp/DocMath-Eval",
        split=f"{subset}_testmini",
        gated=True,
    )
    for subset in SUBSETS
}
# QwenLong-L1's held-out quarter of the testmini questions, as chat prompts; its eval/docmath.py reads it from where
# its README has Tongyi-Zhiwen/docmath downloaded
TEST_PROMPTS = HubFile(
    name=f"{FOLDER}/docmath_all_test_200.jsonl",
    repo_id="Tongyi-Zhiwen/docmath",
    filename="docmath_all_test_200.jsonl",
    revision="main",
)


def docmath_records(data_dir: str | None) -> list[dict]:
    """DocMath-Eval's four testmini subsets: `data_dir/docmath/<subset>_testmini.jsonl` or the Hub."""
    folder = os.path.join(data_dir, FOLDER) if data_dir is not None else None
    records: list[dict] = []
    for data in SUBSET_DATA.values():
        if folder is None or not os.path.isdir(folder):
            records += hub_records(data, data_dir, "docmath")
        elif (path := data.find(data_dir)) is not None:
            records += read_records(path, argument="--data-dir")
        else:
            raise UsageError(
                f"--data-dir {data_dir}: {FOLDER}/ has no {os.path.basename(data.name)}; put all four testmini "
                f"subsets there ({', '.join(f'{subset}_testmini.jsonl' for subset in SUBSETS)}): fetch them with "
                f"{fetch_hint(data_dir, 'docmath')}, or download this one from {data.origin}."
            )
    return records


def qwenlong_docmath_test(records: list[dict], prompts: list[str]) -> list[dict]:
    """The records QwenLong-L1 evaluates (its `search_item`): question and document both in one of the prompts."""
    # The question follows the document in each prompt: test it on the short tail first, the document only then
    tails = [(prompt.rsplit("</text>", 1)[-1], prompt) for prompt in prompts]
    return [
        record
        for record in records
        if any(
            record["question"].strip() in tail and "\n".join(record["paragraphs"]).strip() in prompt
            for tail, prompt in tails
        )
    ]


def load_docmath(data_dir: str | None) -> list[EvalExample]:
    """DocMath-Eval testmini, only QwenLong-L1's 200 test questions when their prompts are there; the gold is the
    number `ground_truth`."""
    records = docmath_records(data_dir)
    if (test_prompts := TEST_PROMPTS.find(data_dir)) is not None:
        rows = read_records(test_prompts, argument="--data-dir")
        records = qwenlong_docmath_test(records, [row["prompt"][0]["content"] for row in rows])
    examples = []
    for record in records:
        gold = record.get("ground_truth")
        if isinstance(gold, bool) or not isinstance(gold, (int, float)):
            raise UsageError(
                f"--data-dir {data_dir}: DocMath question {record.get('question_id')} has ground_truth "
                f"{gold!r}, not a number; use the testmini subsets (the test split hides it)."
            )
        document = "\n".join(record["paragraphs"]).strip()  # QwenLong-L1 joins paragraphs and tables with newlines
        examples.append(EvalExample(str(record["question_id"]), document, record["question"].strip(), [str(gold)]))
    return examples


TASK = EvalTask(
    "docmath",
    "DocMath",
    "moderate",
    (*SUBSET_DATA.values(), TEST_PROMPTS),
    lambda data_dir, _: load_docmath(data_dir),
    every_style(PromptFormat(qwenlong_prompt, TEMPLATE_MAX_NEW_TOKENS, DOCMATH)),
    metric="accuracy",
)
