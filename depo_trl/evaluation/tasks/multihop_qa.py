"""Moderate-context multi-hop QA (Table 2's 2Wiki, HotpotQA and MuSiQue columns): each dev question with only its own
paragraphs (gold and the dataset's distractors), asked in the training template (`--prompt-style depo`) or in
LongBench's prompt (`--prompt-style longbench`).

Data, each read through the data builder's source adapters (`depo_trl/data/sources.py`):

- 2WikiMultihopQA: `2wikimqa_dev.json`, the `dev.json` of the dataset's release (its GitHub README's `data.zip`);
- HotpotQA: `hotpotqa_dev.jsonl`, the distractor setting's validation split of the Hub's hotpotqa/hotpot_qa, which the
  task also reads straight from the Hub (`hotpotqa_dev.json`, the original's file, is read too);
- MuSiQue: `musique_dev.jsonl`, MuSiQue-Ans's `musique_ans_v1.0_dev.jsonl` from the release its GitHub README links.

Scoring (`longbench.qa_formats`): QwenLong-L1's rules for answers in the template (`scoring.TEMPLATE_QA`), LongBench's
eval.py for answers to its prompts (`scoring.LONGBENCH_QA`).
"""

from ...data.sources import QAExample, adapt, adapt_numbered, numbered_records
from ...data.template import format_passages
from ..sources import DataFile, HubSplit, WebFile
from .base import EvalExample, EvalTask, hub_records, missing_data
from .longbench import qa_formats


DATA: dict[str, DataFile] = {
    "2wikimqa": WebFile(
        name="2wikimqa_dev.json",
        also=("2wikimqa_dev.jsonl", "2wikimultihopqa_sample.json"),
        url="https://www.dropbox.com/s/npidmtadreo6df2/data.zip?dl=1",
        member="data/dev.json",
        published_by="github.com/Alab-NII/2wikimultihop README at 13800e5be57df1b4040b9b1588c6c811779e69e9",
    ),
    "hotpotqa": HubSplit(
        name="hotpotqa_dev.jsonl",
        also=("hotpotqa_dev.json", "hotpotqa_distractor_sample.json"),
        repo_id="hotpotqa/hotpot_qa",
        config="distractor",
        split="validation",
    ),
    "musique": WebFile(
        name="musique_dev.jsonl",
        also=("musique_dev.json", "musique_sample.jsonl"),
        # Google Drive's direct download of the file the README links (`confirm=t` skips its virus-scan page)
        url=(
            "https://drive.usercontent.google.com/download?id=1tGdADlNjWFaHLeZZGShh2IRcpO6Lv24h&export=download"
            "&confirm=t"
        ),
        member="data/musique_ans_v1.0_dev.jsonl",
        published_by="github.com/StonyBrookNLP/musique README at 922ac98f19a201998dbdae6d7f2887a5258dbdeb",
    ),
}
LABELS = {"2wikimqa": "2Wiki", "hotpotqa": "HotpotQA", "musique": "MuSiQue"}  # in Table 2's order


def moderate_examples(source: str, data_dir: str | None) -> list[QAExample]:
    """Dev rows of a multi-hop QA dataset (`hotpotqa`, `2wikimqa`, `musique`) through the data builder's source
    adapters: from `--data-dir`, else from the Hub where the dataset is there."""
    data = DATA[source]
    if (path := data.find(data_dir)) is not None:
        examples, _ = adapt_numbered(source, numbered_records(path, argument="--data-dir"), f"--data-dir {path}")
        return examples
    if not isinstance(data, HubSplit):
        raise missing_data(data, data_dir, source)
    examples, _ = adapt(source, hub_records(data, data_dir, source), data.repo_id)
    return examples


def load_moderate(source: str, data_dir: str | None) -> list[EvalExample]:
    """Each question with only its own paragraphs (gold and the dataset's distractors), in the dataset's order."""
    return [
        EvalExample(e.id, format_passages([*e.gold, *e.own_distractors]), e.question, e.answers)
        for e in moderate_examples(source, data_dir)
    ]


def _task(source: str) -> EvalTask:
    return EvalTask(
        source,
        LABELS[source],
        "moderate",
        (DATA[source],),
        lambda data_dir, _: load_moderate(source, data_dir),
        qa_formats(source),
    )


TASKS = [_task(source) for source in LABELS]
