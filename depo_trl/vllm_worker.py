"""What runs inside vLLM's workers when the trainer's weights are reloaded (`vllm_weight_sync: reload`).

A server started by `depo_trl.scripts.vllm_server` adds [`WeightReloadExtension`]'s method to its workers
(`--worker-extension-cls`), which the trainer calls by name through the `/collective_rpc` endpoint; a colocated engine
runs [`reload_trained_weights`] in process. Both are vLLM's own `reload_weights`, plus one repair: vLLM reloads layer
by layer, and a layer that loads no weights of its own keeps its processed kernel tensors. A tied output layer is such
a layer (its weight arrives as the embedding's); on vLLM's CPU build its matrix product runs on a prepacked copy of the
weight (`dispatch_cpu_unquantized_gemm`), which then still holds the initial weights: measured on SmolLM2-135M, the
served log-probabilities of a completion stayed up to 0.3 nats from the reloaded model's. Processing the output layer
again after the reload packs the new weight.
"""

from collections.abc import Iterable

import torch


def reload_trained_weights(
    worker, weights_iterator: Iterable[tuple[str, torch.Tensor]] | None = None, weights_path: str | None = None
) -> None:
    """Reload a vLLM worker's model from `weights_iterator` (in process) or the safetensors files in `weights_path`,
    then process a tied output layer again (see the module docstring)."""
    worker.model_runner.reload_weights(weights_iterator=weights_iterator, weights_path=weights_path)
    model = worker.model_runner.get_model()
    head = getattr(model, "lm_head", None)
    if head is not None and getattr(model.config, "tie_word_embeddings", False):
        head.quant_method.process_weights_after_loading(head)


class WeightReloadExtension:
    """Methods vLLM adds to its workers
    (`vllm serve --worker-extension-cls depo_trl.vllm_worker.WeightReloadExtension`), callable by name through
    `/collective_rpc`."""

    def reload_trained_weights(self, weights_path: str) -> None:
        """Reload the model from the safetensors files the trainer wrote to `weights_path`."""
        reload_trained_weights(self, weights_path=weights_path)
