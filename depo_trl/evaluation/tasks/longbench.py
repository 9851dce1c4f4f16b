"""LongBench v1's question answering sets (Table 2's extended-context half): 2WikiMultihopQA, HotpotQA and MuSiQue
with long contexts, NarrativeQA and Qasper; and LongBench's prompts, which the moderate-context QA tasks and RULER-QA
take under `--prompt-style longbench`.

Data: `<dataset>.jsonl` under `--data-dir` (LongBench's `input, context, answers, _id, ...`), else the Hub's
THUDM/LongBench `data.zip` at a pinned revision, whose `data/<dataset>.jsonl` the fetch command copies out. Scoring:
LongBench's `eval.py` for answers to its prompts, QwenLong-L1's `eval/*.py` for answers in the training template
(`scoring.LONGBENCH_QA`, `scoring.TEMPLATE_QA`).
"""

from ...data.sources import read_records
from ..scoring import LONGBENCH_QA, TEMPLATE_QA
from ..sources import HubFile
from .base import TEMPLATE_MAX_NEW_TOKENS, EvalExample, EvalTask, PromptFormat, hub_records, template_prompt


# The last commit that changed data.zip ("Upload data.zip", 2023-08-29); later commits change only the loading script,
# the README and a Parquet conversion
LONGBENCH_REVISION = "4a90f81c8db79f60c15f77dcd207a1099038c775"
DATASETS = {  # LongBench's name -> the task's column in results.md
    "2wikimqa": "LB-2Wiki",
    "hotpotqa": "LB-HotpotQA",
    "musique": "LB-MuSiQue",
    "narrativeqa": "NarrativeQA",
    "qasper": "Qasper",
}
DATA = {
    dataset: HubFile(
        name=f"{dataset}.jsonl",
        repo_id="THUDM/LongBench",
        filename="data.zip",
        revision=LONGBENCH_REVISION,
        member=f"data/{dataset}.jsonl",
    )
    for dataset in DATASETS
}

# LongBench v1's own instructions (THUDM/LongBench LongBench/config/dataset2prompt.json) and answer lengths
# (dataset2maxlen.json)
_MULTIHOP_PROMPT = (
    "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\n"
    "The following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me "
    "the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:"
)
LONGBENCH_PROMPTS = {
    "hotpotqa": _MULTIHOP_PROMPT,
    "2wikimqa": _MULTIHOP_PROMPT,
    "musique": _MULTIHOP_PROMPT,
    "narrativeqa": (
        "You are given a story, which can be either a novel or a movie script, and a question. Answer the question "
        "asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: "
        "{context}\n\nNow, answer the question based on the story asconcisely as you can, using a single phrase if "
        "possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:"
    ),
    "qasper": (
        "You are given a scientific article and a question. Answer the question as concisely as you can, using a "
        "single phrase or sentence if possible. If the question cannot be answered based on the information in the "
        'article, write "unanswerable". If the question is a yes/no question, answer "yes", "no", or '
        '"unanswerable". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the '
        "above article as concisely as you can, using a single phrase or sentence if possible. If the question "
        'cannot be answered based on the information in the article, write "unanswerable". If the question is a '
        'yes/no question, answer "yes", "no", or "unanswerable". Do not provide any explanation.\n\n'
        "Question: {input}\n\nAnswer:"
    ),
}
LONGBENCH_MAX_NEW_TOKENS = {"hotpotqa": 32, "2wikimqa": 32, "musique": 32, "narrativeqa": 128, "qasper": 128}


def qa_formats(longbench_dataset: str) -> dict[str, PromptFormat]:
    """A QA task's two styles: the training template, scored as QwenLong-L1 scores answers in that format; and
    LongBench's prompt for `longbench_dataset`, scored as LongBench's eval.py does."""
    longbench = LONGBENCH_PROMPTS[longbench_dataset]
    return {
        "depo": PromptFormat(template_prompt, TEMPLATE_MAX_NEW_TOKENS, TEMPLATE_QA),
        "longbench": PromptFormat(
            lambda example: longbench.format(context=example.context, input=example.question),
            LONGBENCH_MAX_NEW_TOKENS[longbench_dataset],
            LONGBENCH_QA,
        ),
    }


def load_longbench(dataset: str, data_dir: str | None) -> list[EvalExample]:
    """LongBench v1 records (`input, context, answers, _id`) from `data_dir/<dataset>.jsonl` or the Hub."""
    data = DATA[dataset]
    path = data.find(data_dir)
    records = (
        read_records(path, argument="--data-dir") if path else hub_records(data, data_dir, f"longbench_{dataset}")
    )
    return [EvalExample(str(r["_id"]), r["context"], r["input"], list(r["answers"])) for r in records]


def _task(dataset: str) -> EvalTask:
    return EvalTask(
        f"longbench_{dataset}",
        DATASETS[dataset],
        "extended",
        (DATA[dataset],),
        lambda data_dir, _: load_longbench(dataset, data_dir),
        qa_formats(dataset),
    )


TASKS = [_task(dataset) for dataset in DATASETS]
