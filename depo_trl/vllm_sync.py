"""DePO's vLLM generation backend: TRL's, with requests to a server that give up after `vllm_request_timeout`, and
weights synced, as `vllm_weight_sync` says, by TRL's transfer or by vLLM's own `reload_weights`.

TRL's client waits as long as a server holds the connection open: a server that stops answering (hung, swapped out,
paused) would stall training for good. Every request here gives up after `vllm_request_timeout` seconds and is not
retried on that timeout (a connection refused still gets TRL's retries, about a minute); either failure ends the run
with one line naming the server. The client's start waits for `/health` at most `vllm_server_timeout` seconds, also
when the server holds the request without a word or answers it with an error (TRL's check waits for those forever).

TRL pushes the trainer's weights into vLLM with NCCL (server mode) or with the colocated engine's `load_weights`.
Neither runs on a CPU (NCCL needs CUDA; vLLM's CPU build repacks its linear weights, which `load_weights` then cannot
fill), and NCCL needs a network route from the trainer to the server. vLLM's `reload_weights` needs neither: a
colocated engine reloads from the parameters in memory, a server from a safetensors checkpoint that the trainer writes
to a folder both can read, asked for through the `/collective_rpc` endpoint of vLLM's dev mode (which
`depo_trl.scripts.vllm_server` turns on, with the worker method of `depo_trl.vllm_worker`). The folder is removed as
soon as the server has reloaded from it: vLLM copies the weights into the model and does not read them again, so no
checkpoint's worth of files stays behind in `output_dir` (15 GB at 7B) between syncs or after training.
"""

import functools
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

import requests
import torch
import trl.trainer.grpo_trainer as grpo_trainer_module
from safetensors.torch import save_file
from trl.generation.vllm_client import VLLMClient
from trl.generation.vllm_generation import VLLMGeneration
from urllib3.exceptions import ReadTimeoutError

from .user_errors import UsageError
from .vllm_worker import reload_trained_weights


# Tensors are written in files of about this size, so the host holds one file's worth of weights at a time
SHARD_BYTES = 2 * 2**30
# The folders the weights of one sync are written to, under vllm_weight_sync_dir
SYNC_FOLDER = re.compile(r"sync-\d+(\.tmp)?")


def write_safetensors_folder(named_tensors: Iterable[tuple[str, torch.Tensor]], folder: str) -> str:
    """Write `(name, tensor)` pairs into a folder of safetensors files of about [`SHARD_BYTES`] each, replacing what
    was there: the files are written to `<folder>.tmp`, which is renamed to `folder` once complete, so nothing reads a
    half-written checkpoint under that name."""
    staging = f"{folder}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    shard: dict[str, torch.Tensor] = {}
    shard_bytes, shard_index = 0, 0

    def flush():
        nonlocal shard, shard_bytes, shard_index
        save_file(shard, os.path.join(staging, f"model-{shard_index:05d}.safetensors"))
        shard, shard_bytes, shard_index = {}, 0, shard_index + 1

    for name, tensor in named_tensors:
        # A copy on the host: under ZeRO-3 the gathered parameter is released once the iterator moves on
        shard[name] = tensor.detach().to("cpu", copy=True).contiguous()
        shard_bytes += shard[name].numel() * shard[name].element_size()
        if shard_bytes >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    return folder


def remove_synced_weights(weights_dir: str) -> None:
    """Remove the `sync-N` folders (and their `.tmp` staging) that [`DePOVLLMGeneration`] wrote to `weights_dir`,
    including those a killed run left, then `weights_dir` itself once empty; nothing else there is touched."""
    if not os.path.isdir(weights_dir):
        return
    for name in os.listdir(weights_dir):
        if SYNC_FOLDER.fullmatch(name):
            shutil.rmtree(os.path.join(weights_dir, name), ignore_errors=True)
    if not os.listdir(weights_dir):
        os.rmdir(weights_dir)


class BoundedVLLMClient(VLLMClient):
    """TRL's vLLM client whose start gives up after `connection_timeout` seconds and whose requests give up after
    `request_timeout` seconds, each with a one-line error naming the server; the only changes w.r.t. `VLLMClient`."""

    def __init__(self, *args, request_timeout: float, **kwargs):
        self.request_timeout = request_timeout
        super().__init__(*args, **kwargs)
        # A read that timed out is not tried again: the server had `request_timeout` to answer
        for adapter in self.session.adapters.values():
            adapter.max_retries = adapter.max_retries.new(read=0)

    def check_server(self, total_timeout: float = 0.0, retry_interval: float = 2.0) -> None:
        """Wait until `/health` answers 200, at most `total_timeout` seconds (`vllm_server_timeout`) whatever the
        server does: TRL's check has no request timeout and retries a non-200 answer without a deadline, so a server
        that holds the request or answers with an error kept it waiting forever."""
        url = f"{self.base_url}/health"
        deadline = time.monotonic() + total_timeout
        while True:
            try:
                # Plain requests, as TRL's check: the session's retries would run past the deadline
                response = requests.get(url, timeout=max(deadline - time.monotonic(), retry_interval))
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except requests.exceptions.Timeout:
                last = "no answer"
            except requests.exceptions.RequestException as error:
                last = f"unreachable, {type(error).__name__}"
            if time.monotonic() >= deadline:
                raise UsageError(
                    f"vllm_server {self.base_url}: /health did not answer 200 within {total_timeout:g} s "
                    f"(vllm_server_timeout; last try: {last}); start the server "
                    "(python -m depo_trl.scripts.vllm_server --config <recipe>) and wait for 'Application startup "
                    "complete', or raise vllm_server_timeout while it loads."
                )
            time.sleep(min(retry_interval, max(deadline - time.monotonic(), 0.0)))

    def _get(self, url: str, **kwargs) -> dict:
        return self._bounded(super()._get, url, **kwargs)

    def _post(self, url: str, **kwargs) -> dict:
        return self._bounded(super()._post, url, **kwargs)

    def _bounded(self, send, url: str, **kwargs):
        kwargs.setdefault("timeout", self.request_timeout)
        resume = "then start the run again: it resumes from its last checkpoint"
        try:
            return send(url, **kwargs)
        except requests.exceptions.ConnectionError as error:
            # A read timeout that exhausts the retries arrives as a ConnectionError around urllib3's error
            reason = getattr(error.args[0], "reason", None) if error.args else None
            if not isinstance(error, requests.exceptions.Timeout) and not isinstance(reason, ReadTimeoutError):
                raise UsageError(
                    f"vllm_server {self.base_url}: unreachable ({type(reason or error).__name__}, after TRL's "
                    f"retries); start the server (python -m depo_trl.scripts.vllm_server --config <recipe>), {resume}."
                ) from None
        except requests.exceptions.Timeout:
            pass
        raise UsageError(
            f"vllm_server {self.base_url}: no answer to {urlparse(url).path} within {kwargs['timeout']:g} s "
            f"(vllm_request_timeout); check the server (its log, its GPU), restart it if it hangs, {resume}."
        )


class DePOVLLMGeneration(VLLMGeneration):
    """TRL's vLLM generation backend; the only changes w.r.t. `VLLMGeneration`: a server is reached through
    [`BoundedVLLMClient`], and with `weight_sync="reload"` weights reach the engine through vLLM's `reload_weights`
    (see the module docstring), without TRL's NCCL communicator."""

    def __init__(self, *args, weight_sync: str, weights_dir: str, request_timeout: float, **kwargs):
        self.weight_sync = weight_sync
        self.weights_dir = os.path.abspath(weights_dir)
        self.request_timeout = request_timeout
        self._syncs = 0
        super().__init__(*args, **kwargs)

    def _init_vllm(self):
        if self.mode != "server":
            return super()._init_vllm()
        # TRL's server set-up (the client on the main process, every process waiting for it), with the bounded
        # client, and TRL's NCCL communicator only for TRL's transfer
        if self.accelerator.is_main_process:
            base_url = self.server_base_url or f"http://{self.server_host}:{self.server_port}"
            self.vllm_client = BoundedVLLMClient(
                base_url=base_url,
                group_port=self.group_port,
                connection_timeout=self.server_timeout,
                request_timeout=self.request_timeout,
            )
            if self.weight_sync == "trl":
                self.vllm_client.init_communicator(device=self.accelerator.device)
        self.accelerator.wait_for_everyone()

    def sync_weights(self):
        if self.weight_sync == "trl":
            return super().sync_weights()
        # Every process walks the parameters: under ZeRO-3 or FSDP gathering each one is a collective
        named_parameters = self._iter_named_params()
        if self.mode == "colocate":
            self.llm.collective_rpc(reload_trained_weights, kwargs={"weights_iterator": named_parameters})
            self.llm.reset_prefix_cache()
            return
        if not self.accelerator.is_main_process:
            for _ in named_parameters:
                pass
            return
        self._syncs += 1
        folder = write_safetensors_folder(named_parameters, os.path.join(self.weights_dir, f"sync-{self._syncs}"))
        client = self.vllm_client
        response = client._bounded(
            client.session.post,
            f"{client.base_url}/collective_rpc",
            json={"method": "reload_trained_weights", "kwargs": {"weights_path": folder}},
        )
        if response.status_code != 200:
            raise UsageError(
                f"vllm_server {client.base_url}: did not reload the weights from {folder} (HTTP "
                f"{response.status_code}: {response.text[:300]}); start it with "
                "`python -m depo_trl.scripts.vllm_server`, which adds the reload method to vLLM's workers, and make "
                "vllm_weight_sync_dir readable at the same path on the server."
            )
        client.reset_prefix_cache()
        # The server has copied the weights into its model (its reload_weights reads the folder once, and nothing in
        # vLLM reads it again), so the folder goes now rather than at the end of training: nothing stays behind
        # for a push of output_dir to upload, also when the run is killed between two syncs
        remove_synced_weights(self.weights_dir)


@contextmanager
def depo_vllm_generation(weight_sync: str, weights_dir: str, request_timeout: float) -> Iterator[None]:
    """While open, a GRPOTrainer being built gets [`DePOVLLMGeneration`] as its vLLM backend.

    GRPOTrainer builds its `VLLMGeneration` inside `__init__` with no hook to choose the class, so the trainer module's
    name is pointed at the subclass for the duration of the construction.
    """
    original = grpo_trainer_module.VLLMGeneration
    grpo_trainer_module.VLLMGeneration = functools.partial(
        DePOVLLMGeneration, weight_sync=weight_sync, weights_dir=weights_dir, request_timeout=request_timeout
    )
    try:
        yield
    finally:
        grpo_trainer_module.VLLMGeneration = original
