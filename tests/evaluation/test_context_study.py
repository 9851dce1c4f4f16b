"""The context-length study: the pairwise judge against a local OpenAI-compatible server, and the study end to end on a
tiny model with the MuSiQue fixture, on a CPU."""

import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from depo_trl.data.template import render_prompt
from depo_trl.evaluation.backends import make_backend
from depo_trl.evaluation.context_study import length_label, parse_lengths
from depo_trl.evaluation.context_study import main as study_main
from depo_trl.evaluation.judge import JudgeCache, JudgeClient, compare_lengths, parse_verdict
from depo_trl.models.tiny import build_tiny_qwen2, build_word_level_tokenizer, save_model_and_tokenizer
from depo_trl.user_errors import UsageError

from . import FIXTURES


MUSIQUE = os.path.join(FIXTURES, "musique_sample.jsonl")
_JUDGED = re.compile(r"\[Question\]\n(.*?)\n\n\[Answer A\]\n(.*?)\n\n\[Answer B\]\n(.*?)\n\nCompare", re.DOTALL)


def judge_reply(question: str, answer_a: str, answer_b: str) -> str:
    """The test judge: no verdict for a "malformed" question; the answer that says "fluent" when only one does;
    otherwise always the answer shown first (a pure position bias, which averaging both orders must cancel)."""
    if "malformed" in question:
        return "Both answers have their merits."
    if ("fluent" in answer_b) and ("fluent" not in answer_a):
        return "Answer B reads better.\nVerdict: B"
    return "Answer A reads better.\nVerdict: A"


@pytest.fixture
def judge_server():
    """A local `/v1/chat/completions` server: records every request, fails the first `transient` ones (503, then
    429), answers model `judge` by `judge_reply` and any other model with 404."""
    seen = SimpleNamespace(requests=[], transient=[503, 429], in_flight=0, max_in_flight=0, lock=threading.Lock())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with seen.lock:
                seen.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                seen.in_flight += 1
                seen.max_in_flight = max(seen.max_in_flight, seen.in_flight)
                status = seen.transient.pop(0) if seen.transient else 200
            time.sleep(0.02)  # long enough for concurrent requests to overlap
            if body["model"] != "judge":
                status, reply = 404, {"error": {"message": f"model {body['model']} not found"}}
            else:
                question, answer_a, answer_b = _JUDGED.search(body["messages"][0]["content"]).groups()
                content = judge_reply(question, answer_a, answer_b)
                reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
            payload = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            with seen.lock:
                seen.in_flight -= 1

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    seen.url = f"http://127.0.0.1:{server.server_port}/v1"
    yield seen
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("Fluency: A is better.\nVerdict: A", "A"),
        ("**Verdict:** tie", "TIE"),
        ("verdict: b.", "B"),
        ("Verdict: A\nOn reflection...\nVerdict: B", None),  # two different verdicts: not guessed
        ("Answer A is better.", None),
        ("Verdict: A or B", None),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_judge_asks_both_orders_averages_them_counts_malformed_and_caches(judge_server, tmp_path):
    questions = ["Where was alba born?", "Where was bruno born?", "A malformed one?"]
    answers = [  # answers[q][i]: question q at length i
        ["fluent one", "garbled two", "garbled three"],
        ["plain one", "plain two", "plain three"],
        ["x one", "x two", "x three"],
    ]
    client = JudgeClient(judge_server.url, "judge", api_key="test-key", backoff_s=0.01)
    result = compare_lengths(questions, answers, client, JudgeCache(str(tmp_path / "cache.jsonl")), concurrency=2)

    # 3 questions x 3 pairs x 2 orders, plus the two transient failures, each retried
    assert len(judge_server.requests) == 18 + 2 and result.requests == 18 and result.cached == 0
    assert judge_server.max_in_flight <= 2
    assert {request["auth"] for request in judge_server.requests} == {"Bearer test-key"}
    assert {request["path"] for request in judge_server.requests} == {"/v1/chat/completions"}
    asked = {_JUDGED.search(r["body"]["messages"][0]["content"]).groups() for r in judge_server.requests}
    for question, at_lengths in zip(questions, answers):
        for i, first in enumerate(at_lengths):
            for j, second in enumerate(at_lengths):
                assert (i == j) == ((question, first, second) not in asked)
    # Pair (0, 1) by hand. Length 0 shown as A: alba -> A ("fluent"), bruno -> A (position): 1.0. Length 0 shown
    # as B: alba -> B ("fluent"): 1.0, bruno -> A: 0.0, so 0.5. Mean of the orders: 0.75. Pair (1, 2): the position
    # bias alone, 1.0 and 0.0: 0.5. The malformed question's 6 replies count in neither.
    assert result.win_rate == [[None, 0.75, 0.75], [0.25, None, 0.5], [0.25, 0.5, None]]
    assert result.judged == [[0, 4, 4], [4, 0, 4], [4, 4, 0]]
    assert len(result.malformed_replies) == 6
    assert {reply["question"] for reply in result.malformed_replies} == {"A malformed one?"}

    again = compare_lengths(questions, answers, client, JudgeCache(str(tmp_path / "cache.jsonl")), concurrency=2)
    assert len(judge_server.requests) == 20, "the second run must be answered from the cache"
    assert (again.requests, again.cached, again.win_rate) == (0, 18, result.win_rate)
    assert len(again.malformed_replies) == 6


def test_judge_errors_are_one_line(judge_server, tmp_path):
    wrong_model = JudgeClient(judge_server.url, "no-such-model", backoff_s=0.01)
    with pytest.raises(UsageError, match="--judge-url .*: HTTP 404"):
        compare_lengths(["q"], [["a", "b"]], wrong_model, JudgeCache(str(tmp_path / "a.jsonl")))
    unreachable = JudgeClient("http://127.0.0.1:9/v1", "judge", max_retries=1, backoff_s=0.01)
    with pytest.raises(UsageError, match="no answer after 2 tries .*cached"):
        compare_lengths(["q"], [["a", "b"]], unreachable, JudgeCache(str(tmp_path / "b.jsonl")))


def test_lengths():
    assert parse_lengths("1k, 0.5k,2048,1024") == [512, 1024, 2048]
    assert [length_label(n) for n in (512, 1024, 1536, 32768, 1000)] == ["0.5K", "1K", "1.5K", "32K", "1000"]
    with pytest.raises(UsageError, match="--lengths 4k: the study compares lengths"):
        parse_lengths("4k")
    with pytest.raises(UsageError, match="--lengths 2x: not a length"):
        parse_lengths("1k,2x")


@pytest.fixture(scope="module")
def musique_model_dir(tmp_path_factory):
    """A tiny Qwen2 whose word-level vocabulary covers the MuSiQue fixture and the training template."""
    with open(MUSIQUE, encoding="utf-8") as handle:
        tokenizer = build_word_level_tokenizer([handle.read(), render_prompt("", "")])
    model = build_tiny_qwen2(tokenizer)
    return save_model_and_tokenizer(model, tokenizer, tmp_path_factory.mktemp("musique-model"))


def test_study_end_to_end_writes_curves_heat_map_and_resumes(musique_model_dir, judge_server, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPO_JUDGE_API_KEY", "study-key")
    output = tmp_path / "eval"
    argv = [
        "--model", musique_model_dir, "--input", MUSIQUE, "--lengths", "0.5k,1k", "--limit", "2", "--backend", "hf",
        "--max-new-tokens", "4", "--output-dir", str(output), "--judge-url", judge_server.url,
        "--judge-model", "judge",
    ]  # fmt: skip
    study_main(argv)
    folder = output / os.path.basename(musique_model_dir)
    for length in (512, 1024):
        rows = [json.loads(line) for line in (folder / "context_study" / f"{length}.jsonl").read_text().splitlines()]
        assert len(rows) == 2
        assert set(rows[0]) == {"id", "prompt_tokens", "raw", "pred", "answers", "f1", "em", "latency_s"}
        assert all(length // 2 < row["prompt_tokens"] <= length and row["latency_s"] > 0 for row in rows)
    study = json.loads((folder / "context_study.json").read_text())
    assert study["labels"] == ["0.5K", "1K"] and study["questions"] == 2
    assert study["latency_s"] == pytest.approx(
        [
            sum(json.loads(line)["latency_s"] for line in (folder / "context_study" / f"{n}.jsonl").open()) / 2
            for n in (512, 1024)
        ],
        abs=1e-4,
    )
    judge = study["judge"]
    assert judge["judged"] == [[0, 4], [4, 0]] and judge["malformed"] == 0
    assert judge["win_rate"][0][1] + judge["win_rate"][1][0] == pytest.approx(1.0)
    assert 1 <= judge["requests"] <= 4 and {r["auth"] for r in judge_server.requests} == {"Bearer study-key"}
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["context_study_f1"] == dict(zip(["0.5K", "1K"], study["f1"]))
    assert scores["context_study_latency_s"] == dict(zip(["0.5K", "1K"], study["latency_s"]))
    table = (output / "results.md").read_text()
    assert "Context-length study (MuSiQue), F1 x100 by prompt length (lenient reading):" in table
    assert "| Model | 0.5K | 1K |" in table
    assert (output / "context_study.png").stat().st_size > 0

    def no_generation(*args, **kwargs):
        raise AssertionError("the second run must not generate anything")

    monkeypatch.setattr("depo_trl.evaluation.context_study.make_backend", no_generation)
    asked = len(judge_server.requests)
    study_main(argv)
    assert len(judge_server.requests) == asked, "the second run must not ask the judge again"
    assert json.loads((folder / "context_study.json").read_text())["judge"]["cached"] == judge["requests"]

    # A kill in the middle of writing an answer, and one in the middle of writing a judge reply, cut their last lines
    # short: a third run answers that one question again and asks for that one reply again
    answers = folder / "context_study" / "1024.jsonl"
    for cache in (answers, output / "judge_cache.jsonl"):
        os.truncate(cache, os.path.getsize(cache) - 10)
    monkeypatch.setattr("depo_trl.evaluation.context_study.make_backend", make_backend)
    study_main(argv)
    assert len(judge_server.requests) == asked + 1
    assert len({json.loads(line)["id"] for line in answers.read_text().splitlines()}) == 2
    rerun = json.loads((folder / "context_study.json").read_text())["judge"]
    assert rerun == judge | {"requests": 1, "cached": judge["requests"] - 1}


def test_study_argument_errors(musique_model_dir, tmp_path, capsys):
    common = ["--model", musique_model_dir, "--input", MUSIQUE, "--output-dir", str(tmp_path / "out")]
    for extra, message in [
        (["--judge-url", "http://localhost:1/v1"], "--judge-model not given"),
        (["--judge-url", "localhost:1", "--judge-model", "j"], "--judge-url localhost:1: not an http(s) URL"),
        (["--lengths", "1k"], "--lengths 1k: the study compares lengths"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            study_main(common + extra)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
