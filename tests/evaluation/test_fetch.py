"""`fetch.py`, the command that fetches every task's data: offline it stops in one line naming each file and its
source; with the network replaced by local copies of the fixtures, every file lands where its loader reads it, the
loaders read what they read from the fixtures, and a run after a failed source fetches only that source."""

import json
import os
import subprocess
import sys
import urllib.request
import zipfile

import datasets
import huggingface_hub
import pytest

from depo_trl.evaluation import fetch
from depo_trl.evaluation import frames as frames_builder
from depo_trl.evaluation.fetch import data_files
from depo_trl.evaluation.tasks import ALL_TASKS, TASKS, multihop_qa
from depo_trl.model_utils import load_tokenizer

from . import FIXTURES


ROOT = os.path.dirname(os.path.dirname(FIXTURES))


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


class FakeNetwork:
    """The project's sources served from the fixtures: the Hub's files and splits, the two releases' zip archives
    behind their URLs, and FRAMES's benchmark rows and Wikipedia articles. `down` names sources that fail."""

    def __init__(self, folder, monkeypatch):
        self.down: set[str] = set()
        self.asked: list[str] = []
        longbench = folder / "LongBench-data.zip"
        with zipfile.ZipFile(longbench, "w") as archive:
            for name in ("2wikimqa", "hotpotqa", "musique", "narrativeqa", "qasper"):
                archive.write(os.path.join(FIXTURES, "longbench", f"{name}.jsonl"), f"data/{name}.jsonl")
        self.hub_files = {
            ("THUDM/LongBench", "data.zip"): str(longbench),
            ("THUDM/LongBench-v2", "data.json"): os.path.join(FIXTURES, "longbench_v2.json"),
            ("Tongyi-Zhiwen/docmath", "docmath_all_test_200.jsonl"): os.path.join(
                FIXTURES, "docmath", "docmath_all_test_200.jsonl"
            ),
        }
        self.urls = {}
        for source, member, fixture in (
            ("2wikimqa", "data/dev.json", "2wikimultihopqa_sample.json"),
            ("musique", "data/musique_ans_v1.0_dev.jsonl", "musique_sample.jsonl"),
        ):
            with zipfile.ZipFile(folder / f"{source}.zip", "w") as archive:
                archive.write(os.path.join(FIXTURES, fixture), member)
            self.urls[multihop_qa.DATA[source].url] = (folder / f"{source}.zip").as_uri()
        frames_rows = read_jsonl(os.path.join(FIXTURES, "frames.jsonl"))
        self.frames_rows = [{key: value for key, value in row.items() if key != "wiki_items"} for row in frames_rows]
        self.articles = {item["title"]: item for row in frames_rows for item in row["wiki_items"]}
        urlopen = urllib.request.urlopen
        monkeypatch.setattr(fetch, "hub_offline", lambda: False)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", self.hub_download)
        monkeypatch.setattr(datasets, "load_dataset", self.load_dataset)
        monkeypatch.setattr(urllib.request, "urlopen", lambda request, timeout: urlopen(self.open(request.full_url)))
        monkeypatch.setattr(frames_builder, "read_records", self.frames_benchmark)
        monkeypatch.setattr(frames_builder, "fetch_article", lambda title, session: self.articles.get(title))

    def serve(self, source: str) -> None:
        self.asked.append(source)
        if source in self.down:
            raise OSError(f"{source} is unreachable")

    def hub_download(self, repo_id, filename, repo_type, revision):
        self.serve(repo_id)
        return self.hub_files[repo_id, filename]

    def load_dataset(self, repo_id, config, split):
        self.serve(repo_id)
        if repo_id == "hotpotqa/hotpot_qa":
            with open(os.path.join(FIXTURES, "hotpotqa_distractor_sample.json"), encoding="utf-8") as handle:
                return json.load(handle)
        return read_jsonl(os.path.join(FIXTURES, "docmath", f"{split}.jsonl"))

    def open(self, url: str) -> str:
        self.serve(url)
        return self.urls[url]

    def frames_benchmark(self, source, split, argument):
        self.serve(source)
        return iter(self.frames_rows)


def test_offline_it_stops_in_one_line_naming_every_file_and_its_source(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    with pytest.raises(SystemExit) as stopped:
        fetch.main(["--data-dir", str(tmp_path / "data")])
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert stopped.value.code == 2 and len(errors) == 1
    files = data_files(ALL_TASKS)
    assert f"could not fetch {len(files)} of {len(files)} files (offline mode, HF_HUB_OFFLINE=1)" in errors[0]
    for data in files:
        assert f"{data.name} from {data.origin}" in errors[0]
    assert "unset HF_HUB_OFFLINE" in errors[0] and os.listdir(tmp_path / "data") == []


@pytest.mark.slow
def test_the_command_offline_exits_with_status_2_and_no_traceback(tmp_path):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache"), "DEPO_TRL_DEBUG": ""}
    command = [sys.executable, "-m", "depo_trl.evaluation.fetch", "--data-dir", str(tmp_path / "data")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=environment)
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert errors[0].startswith("python -m depo_trl.evaluation.fetch: error: --data-dir")


def test_every_file_lands_where_its_loader_reads_it(tmp_path, monkeypatch, eval_model_dir, fixture_data_dir, capsys):
    network = FakeNetwork(tmp_path, monkeypatch)
    data_dir = tmp_path / "data"
    musique = multihop_qa.DATA["musique"]
    network.down = {musique.url}
    with pytest.raises(SystemExit):  # one source down: the others are fetched, it is named
        fetch.main(["--data-dir", str(data_dir)])
    error = capsys.readouterr().err.splitlines()[-1]
    total = len(data_files(ALL_TASKS))
    assert f"fetch 1 of {total} files ({musique.url} is unreachable): musique_dev.jsonl from {musique.origin}" in error
    assert not (data_dir / "musique_dev.jsonl").exists()

    network.down, network.asked = set(), []
    fetch.main(["--data-dir", str(data_dir)])  # again: only what is missing
    assert network.asked == [musique.url]
    assert f"all {total} files of all are there" in capsys.readouterr().out
    fetched = sorted(str(path.relative_to(data_dir)) for path in data_dir.rglob("*") if path.is_file())
    assert fetched == sorted(data.name for data in data_files(ALL_TASKS))  # and nothing else: no archive, no part

    tokenizer = load_tokenizer(eval_model_dir)
    for task in TASKS.values():
        reference = task.load(fixture_data_dir, tokenizer)
        assert task.load(str(data_dir), tokenizer) == reference and reference, task.name
