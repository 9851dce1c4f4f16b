"""`frames.py`: building FRAMES's `frames.jsonl` (the articles each question links to) without the network."""

import json
import os

import pytest
import requests

from depo_trl.evaluation import frames
from depo_trl.evaluation.frames import article_title, with_articles
from depo_trl.evaluation.tasks.frames import load_frames

from . import FIXTURES


def test_frames_preparation_without_network():
    assert article_title("https://en.wikipedia.org/wiki/James_A._Garfield#Family") == "James A. Garfield"
    assert article_title("https://en.wikipedia.org/wiki/Caf%C3%A9_au_lait") == "Café au lait"
    calls = []

    def fetch(title):
        calls.append(title)
        return None if title == "Gone Page" else {"title": title, "text": f"About {title}."}

    rows = [
        {"Prompt": "q1", "Answer": "a1",
         "wiki_links": "['https://en.wikipedia.org/wiki/Kesh', 'https://en.wikipedia.org/wiki/Gone_Page']"},
        {"Prompt": "q2", "Answer": "a2", "wiki_links": ["https://en.wikipedia.org/wiki/Kesh"]},
    ]  # fmt: skip
    out = list(with_articles(rows, fetch))
    assert out[0][0]["wiki_items"] == [{"title": "Kesh", "text": "About Kesh."}] and out[0][1] == ["Gone Page"]
    assert out[1][0]["wiki_items"] == [{"title": "Kesh", "text": "About Kesh."}] and out[1][1] == []
    assert calls == ["Kesh", "Gone Page"]  # each article fetched once


def fixture_rows() -> list[dict]:
    with open(os.path.join(FIXTURES, "frames.jsonl"), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture
def benchmark_rows(tmp_path) -> str:
    """The FRAMES fixture's rows as the benchmark has them: without the articles."""
    path = tmp_path / "frames-benchmark.jsonl"
    rows = ({key: value for key, value in row.items() if key != "wiki_items"} for row in fixture_rows())
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_the_built_file_is_what_the_task_reads(benchmark_rows, tmp_path, monkeypatch, capsys):
    expected = load_frames(FIXTURES)
    articles = {item["title"]: item for row in fixture_rows() for item in row["wiki_items"]}
    monkeypatch.setattr(frames, "fetch_article", lambda title, session: articles.get(title))
    frames.main(["--input", benchmark_rows, "--output", str(tmp_path / "data" / "frames.jsonl")])
    assert "Wrote 2 questions" in capsys.readouterr().out
    assert load_frames(str(tmp_path / "data")) == expected
    assert os.listdir(tmp_path / "data") == ["frames.jsonl"]


def test_a_failed_build_leaves_no_file(benchmark_rows, tmp_path, monkeypatch, capsys):
    def unreachable(title, session):
        raise requests.ConnectionError("Wikipedia is unreachable")

    monkeypatch.setattr(frames, "fetch_article", unreachable)
    with pytest.raises(SystemExit) as stopped:
        frames.main(["--input", benchmark_rows, "--output", str(tmp_path / "frames.jsonl")])
    assert stopped.value.code == 2 and "Wikipedia is unreachable" in capsys.readouterr().err
    assert not (tmp_path / "frames.jsonl").exists() and not (tmp_path / "frames.jsonl.tmp").exists()
