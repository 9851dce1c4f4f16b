"""A vLLM server that stops answering ends the run, within `vllm_request_timeout`, with one line naming it.

The server here answers what a trainer asks when it starts (health, models, server info) and then never answers
again, as a hung or paused server does: TRL's client alone would wait for it forever.
"""

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ..helpers import ROOT, free_port, run_environment


pytest.importorskip("vllm", reason="use_vllm needs vLLM importable: make test-vllm")

STARTUP_ANSWERS = {
    "/health": {},
    "/v1/models": {"data": [{"id": "stub"}]},
    "/server_info": {"vllm_config": {"model_config": {"logprobs_mode": "processed_logprobs"}}},
}


class HangingServer(BaseHTTPRequestHandler):
    """Answers the start-up requests, then holds every other request open without a word."""

    hung = threading.Event()

    def do_GET(self):
        path = self.path.split("?")[0]
        if path not in STARTUP_ANSWERS:
            return self.hang()
        body = json.dumps(STARTUP_ANSWERS[path]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.hang()

    def hang(self):
        HangingServer.hung.set()
        time.sleep(120)

    def log_message(self, *args):
        pass


@pytest.fixture
def hanging_server():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), HangingServer)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_stops_answering_ends_the_run_with_one_line(hanging_server, tmp_path):
    command = [
        os.path.join(os.path.dirname(sys.executable), "depo-train"), "--config", "recipes/tiny/depo.yaml",
        "--output_dir", str(tmp_path / "run"), "--use_vllm", "true", "--vllm_mode", "server",
        "--vllm_server_host", "127.0.0.1", "--vllm_server_port", str(hanging_server),
        "--vllm_weight_sync", "reload", "--vllm_request_timeout", "3",
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=run_environment())
    elapsed = time.monotonic() - started
    assert HangingServer.hung.is_set()
    assert result.returncode == 2, result.stderr[-3000:]
    # The line may follow a progress bar's carriage return
    errors = [line[line.index("depo-train: error:") :] for line in result.stderr.splitlines() if ": error:" in line]
    assert errors == [
        f"depo-train: error: vllm_server http://127.0.0.1:{hanging_server}: no answer to /collective_rpc within 3 s "
        "(vllm_request_timeout); check the server (its log, its GPU), restart it if it hangs, then start the run "
        "again: it resumes from its last checkpoint."
    ]
    assert "Traceback" not in result.stderr
    assert elapsed < 120, elapsed  # the start-up (model, data) and 3 s, not the server's 120 s silence
