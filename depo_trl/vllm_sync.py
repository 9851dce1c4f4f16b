"""Weight sync to vLLM through vLLM's own `reload_weights` (`vllm_weight_sync: reload`).

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

import torch
import trl.trainer.grpo_trainer as grpo_trainer_module
from safetensors.torch import save_file
from trl.generation.vllm_client import VLLMClient
from trl.generation.vllm_generation import VLLMGeneration

from .vllm_worker import reload_trained_weights


# Tensors are written in files of about this size, so the host holds one file's worth of weights at a time
SHARD_BYTES = 2 * 2**30
# A 7B checkpoint reloads from a local disk in well under a minute; a server that takes longer is reported as stuck
RELOAD_TIMEOUT_SECONDS = 600.0


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


class ReloadWeightsVLLMGeneration(VLLMGeneration):
    """TRL's vLLM generation backend; the only change w.r.t. `VLLMGeneration` is how weights reach the engine:
    through vLLM's `reload_weights` (see the module docstring), and so a server gets no NCCL communicator."""

    def __init__(self, *args, weights_dir: str, **kwargs):
        self.weights_dir = os.path.abspath(weights_dir)
        self._synced_folder: str | None = None
        self._syncs = 0
        super().__init__(*args, **kwargs)

    def _init_vllm(self):
        if self.mode != "server":
            return super()._init_vllm()
        # TRL's server set-up (the client on the main process, every process waiting for it) without the NCCL
        # weight-transfer group, which `reload_weights` does not use
        if self.accelerator.is_main_process:
            base_url = self.server_base_url or f"http://{self.server_host}:{self.server_port}"
            self.vllm_client = VLLMClient(
                base_url=base_url, group_port=self.group_port, connection_timeout=self.server_timeout
            )
        self.accelerator.wait_for_everyone()

    def sync_weights(self):
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
        response = client.session.post(
            f"{client.base_url}/collective_rpc",
            json={"method": "reload_trained_weights", "kwargs": {"weights_path": folder}},
            timeout=RELOAD_TIMEOUT_SECONDS,
        )
        if response.status_code != 200:
            raise RuntimeError(
                f"The vLLM server at {client.base_url} did not reload the weights from {folder} "
                f"(HTTP {response.status_code}: {response.text[:300]}). Start it with `python -m "
                "depo_trl.scripts.vllm_server`, which adds the reload method to vLLM's workers and enables the "
                "/collective_rpc endpoint, and make the folder readable at the same path on the server "
                "(vllm_weight_sync_dir)."
            )
        client.reset_prefix_cache()
        if self._synced_folder is not None:  # the server has read the new weights: the old ones are not needed
            shutil.rmtree(self._synced_folder, ignore_errors=True)
        self._synced_folder = folder


@contextmanager
def vllm_weight_sync(weight_sync: str, weights_dir: str) -> Iterator[None]:
    """While open, the GRPOTrainer being built gets the vLLM backend of `weight_sync` (`"trl"`: TRL's own).

    GRPOTrainer builds its `VLLMGeneration` inside `__init__` with no hook to choose the class, so the trainer module's
    name is pointed at [`ReloadWeightsVLLMGeneration`] for the duration of the construction.
    """
    if weight_sync == "trl":
        yield
        return
    original = grpo_trainer_module.VLLMGeneration
    grpo_trainer_module.VLLMGeneration = functools.partial(ReloadWeightsVLLMGeneration, weights_dir=weights_dir)
    try:
        yield
    finally:
        grpo_trainer_module.VLLMGeneration = original
