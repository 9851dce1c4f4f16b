"""The long pass's memory model: what it holds per token, how much the device has, and how the forwards run.

A window's rollouts are computed in forwards (`plan.py`). A forward either keeps what its backward needs until the
step's single backward ("held"), or is recomputed during that backward ("recomputed": only its inputs and its
backbone's output are kept). From the cheapest ([`plan_pass`]): held with the model's per-layer gradient checkpointing
off for the pass (each layer runs once), held under it (twice: the layer is recomputed in the backward), recomputed
(three times), all but the last forward (which the backward reaches first, so holding it does not raise the peak).
The byte counts are estimates from the model's shapes; `benchmarks/long_pass_memory.py`,
`benchmarks/long_pass_scaling.py` and `gpu_check/gpu_check.py` print them beside measured peaks.
"""

import enum
import os
from dataclasses import dataclass

import psutil
import torch
from transformers import PretrainedConfig
from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE, _use_triton
from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE


@dataclass(frozen=True)
class LongPassMemory:
    """Bytes per token of a forward's packed row.

    `held`: what a forward keeps for the backward. With the model's per-layer gradient checkpointing, each decoder
    layer's input (`layers x hidden`); without it, every layer's activations. Both add the hidden state TRL's fused LM
    head saves for a scored position.
    `working`: what a running forward needs on top, or the backward of one of its layers: with checkpointing, one
    layer's activations and their gradients; without it, one layer's gradients.
    `head_tile`: bytes per token of the logits tile TRL's fused LM head projects the row in, for up to
    `TOKEN_CHUNK_SIZE` tokens (`trl/kernels/chunked_logprob.py`: `[4096, min(vocab, 32768)]`, 256 MiB at 7B in bf16).
    `fixed`: bytes a forward's backward takes whatever its length: the fused head accumulates its weight's gradient in
    float32 and casts it to the weight's dtype (both live at once), beside the weight it gathers under ZeRO-3 or FSDP:
    4.4 GB at 7B in bf16 under ZeRO-3; only the gathered weight when the head is frozen (LoRA).
    `recomputed`: what a recomputed forward keeps until its backward instead of `held`: the backbone's output that
    TRL's fused LM head saves, averaged over the row's tokens (`of_model`'s `kept_output_share`).
    """

    held: float
    working: float
    fixed: float = 0.0
    head_tile: float = 0.0
    recomputed: float = 0.0

    def working_bytes(self, tokens: int) -> float:
        """What one running forward of `tokens` tokens needs beside the held parts: its working set and the head's
        logits tile."""
        return tokens * self.working + min(tokens, TOKEN_CHUNK_SIZE) * self.head_tile

    def peak_bytes(self, how: "PassPlan", held_tokens: int, tokens_per_forward: int) -> float:
        """The peak of a pass whose forwards (at most `tokens_per_forward` tokens each) hold `held_tokens` in all, a
        prompt counted once per forward it is in: what the forwards keep (recomputed: the last forward's held part,
        the others' `recomputed` part), one forward's working set and the fixed part."""
        if how == PassPlan.RECOMPUTED:
            others = max(held_tokens - tokens_per_forward, 0)
            kept = tokens_per_forward * self.held + others * self.recomputed
        else:
            kept = held_tokens * self.held
        return kept + self.working_bytes(tokens_per_forward) + self.fixed

    def most_tokens(self, per_token: float, budget: float) -> int:
        """The most tokens whose `per_token` bytes and the head's tile fit in `budget` bytes (0 if none)."""
        if budget <= 0:
            return 0
        tokens = budget / (per_token + self.head_tile)
        if tokens > TOKEN_CHUNK_SIZE:  # past one tile's rows the tile stops growing
            tokens = (budget - TOKEN_CHUNK_SIZE * self.head_tile) / per_token
        return int(tokens)

    @classmethod
    def of_model(
        cls,
        config: PretrainedConfig,
        dtype_bytes: int,
        layer_checkpointing: bool,
        rollouts_per_prompt: int,
        keys_repeated_per_head: bool,
        padded_row_tokens: int | None = None,
        eager_attention: bool = False,
        adapter_bytes: float = 0.0,
        trainable_head: bool = True,
        sequence_parallel: int = 1,
        gathered_head: bool = False,
        kept_output_share: float = 1.0,
    ) -> "LongPassMemory":
        """The estimate for a Llama-style decoder (`config`'s text model) computing in `dtype_bytes` per element (the
        residual stream's: float32 weights under bf16 autocast keep it in float32).

        `keys_repeated_per_head`: the attention expands grouped keys and values to every query head (SDPA with a
        mask does; flash-attention does not). `padded_row_tokens`: the forwards are padded batches of rows this long
        (the pass without sharing), whose attention builds per-row masks, and with `eager_attention` keeps
        `heads x row` scores per query token and layer. `adapter_bytes`: what the model's adapters save on top, per
        token and layer ([`adapter_activation_bytes`]). `trainable_head`: the LM head's weight takes a gradient.
        `gathered_head`: the LM head's weight is gathered for each forward and backward (ZeRO-3, FSDP).
        `sequence_parallel`: the row is split over a group of this many ranks; the counts are then per token a rank
        holds (its shard), and a layer's working set adds Ulysses' exchange buffers (`sequence_parallel.py`).
        `kept_output_share`: the share of a row's tokens whose backbone output the LM head keeps for its backward
        ([`head_kept_output_share`]).
        """
        text = config.get_text_config()
        hidden, heads, layers = text.hidden_size, text.num_attention_heads, text.num_hidden_layers
        head_dim = getattr(text, "head_dim", None) or hidden // heads
        key_width = (getattr(text, "num_key_value_heads", None) or heads) * head_dim
        intermediate = getattr(text, "intermediate_size", None) or 4 * hidden
        # Saved by one decoder layer for its backward, per token: both norms' inputs and outputs, q, k and v and their
        # rotated copies, the attention and o_proj outputs; the MLP's gate, up, activation and product
        layer = (9 * hidden + 3 * key_width + 4 * intermediate) * dtype_bytes + adapter_bytes
        if sequence_parallel > 1:
            # Ulysses' exchange around attention: queries, keys, values and the output, each copied into a contiguous
            # send buffer and received (key/value heads replicated when fewer than the group), for one layer at a time
            exchanged_key_width = max(key_width // head_dim, sequence_parallel) * head_dim
            layer += 2 * (2 * hidden + 2 * exchanged_key_width) * dtype_bytes
        mask = 0
        if padded_row_tokens is None:
            # The segments' attention call takes the prompt's keys and values once per rollout of the row: at most
            # `2 x rollouts` key widths per row token (query-head widths where they are repeated per head)
            layer += (
                2 * rollouts_per_prompt * (heads * head_dim if keys_repeated_per_head else key_width) * dtype_bytes
            )
        else:
            mask = padded_row_tokens  # a boolean `(row, row)` mask per row, built once per forward
            if eager_attention:
                layer += 2 * heads * padded_row_tokens * dtype_bytes  # the scores and their softmax
        # Beside the layers: the final norm's input and normalized copy, and the hidden state TRL's fused head saves
        # for a scored position
        head_input = 3 * hidden * dtype_bytes
        vocab = getattr(text, "vocab_size", None) or getattr(config, "vocab_size", 0)
        head_gradient = (
            vocab * hidden * ((4 + dtype_bytes if trainable_head else 0) + (dtype_bytes if gathered_head else 0))
        )
        head_tile = min(vocab, _CHUNKED_LOGPROB_CHUNK_SIZE) * dtype_bytes
        if layer_checkpointing:
            held, working = layers * hidden * dtype_bytes + head_input, 2 * layer + mask
        else:
            held, working = layers * layer + head_input, layer + mask
        return cls(
            held=held,
            working=working,
            fixed=head_gradient,
            head_tile=head_tile,
            recomputed=hidden * dtype_bytes * kept_output_share,
        )


def head_kept_output_share(device: torch.device, scored_tokens: int, row_tokens: int) -> float:
    """The share of `row_tokens` whose backbone output TRL's fused LM head keeps for its backward
    (`trl/trainer/utils.py`, the fused log-probs): where it runs its Triton kernel (CUDA, XPU) it copies out the
    `scored_tokens` positions; elsewhere it keeps a view of the whole output. None of an empty window."""
    if row_tokens <= 0:
        return 0.0
    if not _use_triton(device):
        return 1.0
    return min(scored_tokens / row_tokens, 1.0)


def lora_saved_bytes(in_features: int, rank: int, dropout: bool, dtype_bytes: int) -> int:
    """What one LoRA adapter on a linear layer saves for the backward per token, beyond what the layer it adapts
    saves: PEFT computes `lora_B(lora_A(dropout(x)))`, so it keeps its low-rank intermediate (`rank` values) and, with
    dropout, its own dropped-out copy of the input and the dropout's mask (`in_features x (dtype_bytes + 1)`). Without
    dropout `lora_A` saves `x`, which the layer keeps anyway."""
    return rank * dtype_bytes + (in_features * (dtype_bytes + 1) if dropout else 0)


def adapter_activation_bytes(model: torch.nn.Module, dtype_bytes: int) -> float:
    """What the model's active LoRA adapters save for the backward ([`lora_saved_bytes`]), per token and decoder layer
    (averaged over the layers). Zero for a model without adapters."""
    from peft.tuners.lora import LoraLayer

    total = 0.0
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            dropout = not isinstance(module.lora_dropout[adapter], torch.nn.Identity)
            total += lora_saved_bytes(module.in_features, module.r[adapter], dropout, dtype_bytes)
    return total / model.config.get_text_config().num_hidden_layers


def forward_size(
    memory: LongPassMemory,
    window_tokens: int,
    largest_group: int,
    smallest_forward: int,
    available_bytes: float,
) -> int:
    """Tokens per forward for a window of `window_tokens` (one forward's worth, each prompt once) in `available_bytes`.

    The whole window when it fits alone; else the largest forwards that fit beside every forward's held part, as long
    as they hold a prompt with all its rollouts (`largest_group`: a prompt split over forwards is held once per piece);
    else the largest forward that fits beside what the others keep when they are recomputed ([`holds`] says so).
    `smallest_forward` (one prompt with one completion) is the floor: a window that does not fit even that way still
    runs, and may run out of memory.
    """
    usable = available_bytes - memory.fixed
    # A forward of n tokens beside the rest of the window recomputed: n x (held + working) + (window - n) x recomputed
    alone = memory.most_tokens(
        memory.held + memory.working - memory.recomputed, usable - window_tokens * memory.recomputed
    )
    if alone >= window_tokens:
        return window_tokens
    beside_held = memory.most_tokens(memory.working, usable - window_tokens * memory.held)
    if beside_held >= largest_group:
        return beside_held
    return max(alone, smallest_forward)


def holds(memory: LongPassMemory, held_tokens: int, tokens_per_forward: int, available_bytes: float) -> bool:
    """Whether forwards of `tokens_per_forward` tokens, `held_tokens` in all (a prompt counted once per forward it is
    in), can all be kept for the backward: their held parts, one forward's working set and the fixed part fit."""
    return memory.peak_bytes(PassPlan.HELD, held_tokens, tokens_per_forward) <= available_bytes


class PassPlan(str, enum.Enum):
    """How a window's forwards run, from the cheapest: kept for the backward with the model's layer checkpointing off
    for them (each backbone runs once), kept as the model runs them (under its layer checkpointing, each layer
    twice), or recomputed in the backward, all but the last (once more)."""

    WITHOUT_LAYER_CHECKPOINTS = "held, without the model's layer checkpoints"
    HELD = "held"
    RECOMPUTED = "recomputed"


def plan_pass(
    plain: LongPassMemory,
    checkpointed: LongPassMemory | None,
    held_tokens: int,
    tokens_per_forward: int,
    forwards: int,
    available_bytes: float,
) -> PassPlan:
    """The cheapest way the forwards fit: `plain` is the memory model without layer checkpointing, `checkpointed`
    with it (None when the model does not checkpoint every layer). Layer checkpointing only saves memory, so where the
    window fits without it the pass turns it off; a single forward is never recomputed (it is the last), and one that
    fits no way runs as the model is configured."""
    if holds(plain, held_tokens, tokens_per_forward, available_bytes):
        return PassPlan.WITHOUT_LAYER_CHECKPOINTS
    if checkpointed is not None and (
        forwards == 1 or holds(checkpointed, held_tokens, tokens_per_forward, available_bytes)
    ):
        return PassPlan.HELD
    return PassPlan.HELD if forwards == 1 else PassPlan.RECOMPUTED


def available_memory(device: torch.device) -> int | None:
    """Bytes this process can still allocate on `device`: the driver's free memory plus what PyTorch's allocator
    holds unused (CUDA), or the system's available RAM shared among the node's processes (CPU); None elsewhere."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        return psutil.virtual_memory().available // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return None
