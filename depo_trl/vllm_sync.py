"""DePO's vLLM generation backend: TRL's, with requests to a server that give up after `vllm_request_timeout`, and
weights synced, as `vllm_weight_sync` says, by TRL's transfer or by vLLM's own `reload_weights`.

TRL's client waits as long as a server holds the connection open: a server that stops answering (hung, swapped out,
paused) would stall training for good. Every request here gives up after `vllm_request_timeout` seconds and is not
retried on that timeout (a connection refused still gets TRL's retries, about a minute); either failure ends the run
with one line naming the server.

TRL pushes the trainer's weights into vLLM with NCCL (server mode) or with the colocated engine's `load_weights`.
Neither runs on a CPU (NCCL needs CUDA; vLLM's CPU build repacks its linear weights, which `load_weights` then cannot
fill), and NCCL needs a network route from the trainer to the server. vLLM's `reload_weights` needs neither: a
colocated engine reloads from the parameters in memory, a server from a safetensors checkpoint that the trainer writes
to a folder both can read, asked for through the `/collective_rpc` endpoint of vLLM's dev mode (which
`depo_trl.scripts.vllm_server` turns on, with the worker method of `depo_trl.vllm_worker`).
"""

import functools
import os
import shutil
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


class BoundedVLLMClient(VLLMClient):
    """TRL's vLLM client whose requests give up after `request_timeout` seconds, with a one-line error naming the
    server; the only changes w.r.t. `VLLMClient`."""

    def __init__(self, *args, request_timeout: float, **kwargs):
        self.request_timeout = request_timeout
        super().__init__(*args, **kwargs)
        # A read that timed out is not tried again: the server had `request_timeout` to answer
        for adapter in self.session.adapters.values():
            adapter.max_retries = adapter.max_retries.new(read=0)

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
        self._synced_folder: str | None = None
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
                f"{response.status_code}: {response.text[:300]}); start it with `python -m depo_trl.scripts.vllm_server`, "
                "which adds the reload method to vLLM's workers, and make vllm_weight_sync_dir readable at the same path "
                "on the server."
            )
        client.reset_prefix_cache()
        if self._synced_folder is not None:  # the server has read the new weights: the old ones are not needed
            shutil.rmtree(self._synced_folder, ignore_errors=True)
        self._synced_folder = folder


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
