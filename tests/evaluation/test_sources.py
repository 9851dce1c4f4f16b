"""`sources.py`: each kind of source fetched with the network replaced by local files and a local HTTP server: a zip
member copied out, a download cut short resumed from where it stopped, a page in place of an archive refused, and
never a half file under the name a loader reads."""

import json
import os
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import datasets
import huggingface_hub
import pytest

from depo_trl.evaluation.sources import HubFile, HubSplit, WebFile

from . import FIXTURES


TWO_WIKI = os.path.join(FIXTURES, "2wikimultihopqa_sample.json")


def zip_with(path: Path, members: dict[str, str]) -> Path:
    """A zip archive at `path` holding each local file `members[name]` as `name`."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, source in members.items():
            archive.write(source, name)
    return path


class ArchiveServer(ThreadingHTTPServer):
    """Serves `payload` at any path, honouring `Range: bytes=N-`; while `cut` is set, it sends half of what it says it
    sends and closes the connection, as a dropped transfer does."""

    def __init__(self, payload: bytes):
        super().__init__(("127.0.0.1", 0), ArchiveHandler)
        self.payload, self.cut, self.ranges = payload, False, []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/data.zip?dl=1"


class ArchiveHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        asked = self.headers.get("Range")
        self.server.ranges.append(asked)
        start = int(asked.removeprefix("bytes=").removesuffix("-")) if asked else 0
        body = self.server.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header(
                "Content-Range", f"bytes {start}-{len(self.server.payload) - 1}/{len(self.server.payload)}"
            )
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.server.cut else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def archive_server(tmp_path):
    archive = zip_with(tmp_path / "release.zip", {"data/dev.json": TWO_WIKI})
    server = ArchiveServer(archive.read_bytes())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def web_file(url: str) -> WebFile:
    return WebFile(name="2wikimqa_dev.json", url=url, member="data/dev.json", published_by="a test")


def test_a_member_of_a_published_zip_lands_under_its_name_alone(tmp_path):
    archive = zip_with(tmp_path / "release.zip", {"data/dev.json": TWO_WIKI, "data/train.json": TWO_WIKI})
    data = tmp_path / "data"
    data.mkdir()
    web_file(archive.as_uri()).fetch(str(data / "2wikimqa_dev.json"))
    assert (data / "2wikimqa_dev.json").read_bytes() == Path(TWO_WIKI).read_bytes()
    assert os.listdir(data) == ["2wikimqa_dev.json"]  # no archive, no temporary file left


def test_a_download_cut_short_is_resumed_and_never_under_its_name(archive_server, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    target, partial = data / "2wikimqa_dev.json", data / "2wikimqa_dev.json.download"
    archive_server.cut = True
    with pytest.raises(OSError, match="the transfer stopped at .* run again to resume"):
        web_file(archive_server.url).fetch(str(target))
    assert not target.exists() and 0 < partial.stat().st_size < len(archive_server.payload)
    have = partial.stat().st_size
    archive_server.cut = False
    web_file(archive_server.url).fetch(str(target))
    assert archive_server.ranges == [None, f"bytes={have}-"]  # the second try asked only for the rest
    assert target.read_bytes() == Path(TWO_WIKI).read_bytes() and os.listdir(data) == [target.name]
    assert "2wikimqa_dev.json: 100%" in capsys.readouterr().err  # the progress bar


def test_a_page_in_place_of_the_archive_is_refused_and_not_kept(tmp_path):
    page = tmp_path / "quota.html"
    page.write_text("<html>Too many users have viewed or downloaded this file recently.</html>")
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(ValueError, match="sent something other than a zip archive"):
        web_file(page.as_uri()).fetch(str(data / "2wikimqa_dev.json"))
    assert os.listdir(data) == []


def test_hub_files_come_from_the_pinned_revision(tmp_path, monkeypatch):
    archive = zip_with(
        tmp_path / "data.zip", {"data/qasper.jsonl": os.path.join(FIXTURES, "longbench", "qasper.jsonl")}
    )
    served = {"data.zip": archive, "data.json": Path(FIXTURES, "longbench_v2.json")}
    asked = []

    def hub_download(repo_id, filename, repo_type, revision):
        asked.append((repo_id, filename, repo_type, revision))
        return str(served[filename])

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_download)
    member = HubFile(
        name="qasper.jsonl", repo_id="o/lb", filename="data.zip", revision="abc", member="data/qasper.jsonl"
    )
    member.fetch(str(tmp_path / "qasper.jsonl"))
    assert (tmp_path / "qasper.jsonl").read_bytes() == Path(FIXTURES, "longbench", "qasper.jsonl").read_bytes()
    whole = HubFile(name="longbench_v2.json", repo_id="o/lb2", filename="data.json", revision="def")
    whole.fetch(str(tmp_path / "longbench_v2.json"))
    assert (tmp_path / "longbench_v2.json").read_bytes() == served["data.json"].read_bytes()
    assert asked == [("o/lb", "data.zip", "dataset", "abc"), ("o/lb2", "data.json", "dataset", "def")]
    assert member.records() == [json.loads(line) for line in (tmp_path / "qasper.jsonl").read_text().splitlines()]


def test_a_hub_split_is_written_as_json_lines(tmp_path, monkeypatch):
    rows = [{"question_id": "q1", "ground_truth": 12.5, "paragraphs": ["Revenue grew."]}]
    monkeypatch.setattr(datasets, "load_dataset", lambda repo_id, config, split: list(rows) if split == "t" else None)
    HubSplit(name="docmath/t.jsonl", repo_id="o/docmath", split="t").fetch(str(tmp_path / "t.jsonl"))
    assert [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()] == rows


def test_an_archive_without_the_member_is_refused_and_not_kept(tmp_path):
    archive = zip_with(tmp_path / "release.zip", {"data/train.json": TWO_WIKI})
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(ValueError, match="the archive has no data/dev.json"):
        web_file(archive.as_uri()).fetch(str(data / "2wikimqa_dev.json"))
    assert os.listdir(data) == []
