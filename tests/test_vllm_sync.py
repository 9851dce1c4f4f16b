"""depo_trl/vllm_sync.py without vLLM: the client's start is bounded whatever the server does, and the weight-sync
folder neither stays behind nor reaches the Hub."""

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import trl.generation.vllm_client as vllm_client_module
from huggingface_hub.utils import filter_repo_objects
from transformers import Trainer, TrainingArguments

from depo_trl.config import DePOConfig
from depo_trl.models.tiny import build_tiny_qwen2, build_word_level_tokenizer
from depo_trl.user_errors import UsageError
from depo_trl.vllm_sync import BoundedVLLMClient, remove_synced_weights, write_safetensors_folder


class StubServer(BaseHTTPRequestHandler):
    """`/health` as the test's `answer` says: "silent" holds every request without a word, a number is the status
    every request gets (with the model list for 200)."""

    answer: str | int = 200

    def do_GET(self):
        if self.answer == "silent":
            time.sleep(30)
            return
        body = json.dumps({"data": [{"id": "stub"}]}).encode()
        self.send_response(self.answer)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_server(request):
    """A loopback HTTP server in a thread, answering as the test's parameter says; its base URL."""
    handler = type("Handler", (StubServer,), {"answer": request.param})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def vllm_taken_as_installed(monkeypatch):
    # TRL's client refuses to start without vLLM importable; nothing here needs vLLM itself
    monkeypatch.setattr(vllm_client_module, "is_vllm_available", lambda *args, **kwargs: True)


@pytest.mark.parametrize(
    ("stub_server", "last_try"), [("silent", "no answer"), (500, "HTTP 500")], indirect=["stub_server"]
)
def test_the_client_start_ends_within_the_server_timeout_with_one_line(stub_server, last_try):
    started = time.monotonic()
    with pytest.raises(UsageError) as error:
        BoundedVLLMClient(base_url=stub_server, connection_timeout=3, request_timeout=60)
    elapsed = time.monotonic() - started
    assert 3 <= elapsed < 6, elapsed  # the timeout, give or take one try (TRL's check waited for ever)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"vllm_server {stub_server}: /health did not answer 200 within 3 s ")
    assert f"(vllm_server_timeout; last try: {last_try})" in message


@pytest.mark.parametrize("stub_server", [200], indirect=True)
def test_the_client_starts_on_a_server_that_answers(stub_server):
    client = BoundedVLLMClient(base_url=stub_server, connection_timeout=3, request_timeout=60)
    assert client.model == "stub"


def test_only_the_sync_folders_are_removed(tmp_path):
    weights_dir = tmp_path / "_vllm_weights"
    for name in ("sync-3", "sync-7.tmp"):  # the last sync's folder, and one a killed run left half-written
        write_safetensors_folder([("w", torch.ones(2))], str(weights_dir / name))
    remove_synced_weights(str(weights_dir))
    assert not weights_dir.exists()

    (weights_dir / "sync-1").mkdir(parents=True)
    (weights_dir / "notes.txt").write_text("someone else's")
    remove_synced_weights(str(weights_dir))
    assert sorted(os.listdir(weights_dir)) == ["notes.txt"]
    remove_synced_weights(str(tmp_path / "missing"))  # nothing to do


def files_a_push_uploads(output_dir: str, monkeypatch) -> list[str]:
    """The files `Trainer.push_to_hub` uploads from `output_dir`: its own `upload_folder` call, with the patterns it
    passes, applied the way huggingface_hub's `upload_folder` applies them; no network."""
    calls = []

    class Hub:
        def upload_folder(self, **kwargs):
            calls.append(kwargs)

    monkeypatch.setattr("transformers.trainer.hf_api", Hub)
    model = build_tiny_qwen2(build_word_level_tokenizer(["a tiny model"]), hidden_size=8, num_attention_heads=2)
    trainer = Trainer(model=model, args=TrainingArguments(output_dir, report_to=[], use_cpu=True))
    trainer.hub_model_id = "someone/model"  # as init_hf_repo would have set it
    trainer.push_to_hub()
    [upload] = calls
    files = [
        os.path.relpath(os.path.join(folder, name), upload["folder_path"]).replace(os.sep, "/")
        for folder, _, names in os.walk(upload["folder_path"])
        for name in names
    ]
    patterns = {"allow_patterns": upload.get("allow_patterns"), "ignore_patterns": upload.get("ignore_patterns")}
    return sorted(filter_repo_objects(files, **patterns))


def test_the_weight_sync_folder_is_never_pushed(tmp_path, monkeypatch):
    output_dir = str(tmp_path / "run")
    weights_dir = DePOConfig(output_dir, use_cpu=True, report_to=[]).vllm_weight_sync_dir
    assert os.path.dirname(weights_dir) == output_dir
    write_safetensors_folder([("w", torch.ones(2))], os.path.join(weights_dir, "sync-4"))  # as a kill leaves it
    uploaded = files_a_push_uploads(output_dir, monkeypatch)
    assert "model.safetensors" in uploaded and "config.json" in uploaded
    assert not [name for name in uploaded if "vllm_weights" in name]
