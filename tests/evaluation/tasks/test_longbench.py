"""`tasks/longbench.py`: LongBench v1's loader, from `--data-dir` and from the Hub's pinned `data.zip`, and LongBench's
prompts and answer budgets beside the training template."""

import json
import os
import zipfile

import huggingface_hub
import pytest

from depo_trl.data.template import render_prompt
from depo_trl.evaluation.tasks import TASKS
from depo_trl.evaluation.tasks.longbench import DATASETS, LONGBENCH_REVISION, load_longbench
from depo_trl.user_errors import UsageError

from .. import FIXTURES


LONGBENCH_DIR = os.path.join(FIXTURES, "longbench")


def fixture_records(dataset: str) -> list[dict]:
    with open(os.path.join(LONGBENCH_DIR, f"{dataset}.jsonl"), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_longbench_loader_reads_data_dir():
    for dataset in DATASETS:
        examples = load_longbench(dataset, LONGBENCH_DIR)
        records = fixture_records(dataset)
        assert [e.id for e in examples] == [r["_id"] for r in records]
        assert [e.answers for e in examples] == [r["answers"] for r in records]
        assert examples[0].question == records[0]["input"] and examples[0].context == records[0]["context"]


def test_longbench_loader_reads_the_pinned_zip_from_the_hub(tmp_path, monkeypatch):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zipped:  # LongBench's data.zip: data/<dataset>.jsonl
        for dataset in DATASETS:
            zipped.write(os.path.join(LONGBENCH_DIR, f"{dataset}.jsonl"), f"data/{dataset}.jsonl")
    asked = []

    def hub_download(repo_id, filename, repo_type, revision):
        asked.append((repo_id, filename, repo_type, revision))
        return str(archive)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_download)
    monkeypatch.setattr("depo_trl.evaluation.tasks.base.hub_offline", lambda: False)
    assert [e.id for e in load_longbench("qasper", str(tmp_path))] == [r["_id"] for r in fixture_records("qasper")]
    assert asked == [("THUDM/LongBench", "data.zip", "dataset", LONGBENCH_REVISION)]


def test_longbench_offline_without_the_file_names_the_zip(tmp_path):
    with pytest.raises(UsageError, match=f"--data-dir {tmp_path}: no qasper.jsonl there, and the Hub is unreachable"):
        load_longbench("qasper", str(tmp_path))


def test_prompts_and_answer_budgets():
    example = load_longbench("hotpotqa", LONGBENCH_DIR)[0]
    hotpotqa = TASKS["longbench_hotpotqa"]
    assert hotpotqa.max_new_tokens("longbench") == 32 and hotpotqa.max_new_tokens("depo") == 1024
    assert hotpotqa.prompt(example, "depo") == render_prompt(example.context, example.question)
    assert hotpotqa.prompt(example, "longbench").startswith("Answer the question based on the given passages.")
    assert hotpotqa.prompt(example, "longbench").endswith(f"Question: {example.question}\nAnswer:")
    assert TASKS["longbench_qasper"].max_new_tokens("longbench") == 128
