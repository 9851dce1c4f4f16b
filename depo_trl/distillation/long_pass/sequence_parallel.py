"""Sequence parallelism for the long pass: the ranks of a group compute each forward together, each holding a
contiguous 1/sp of the packed row (DeepSpeed's Ulysses, as ALST trains long sequences).

Generation never sees the long context, so DePO splits only the long pass: every rank keeps its own rollouts for the
proxy term, and the `sp` ranks of a group (consecutive ranks) run the union of their windows' forwards, each forward's
row split along the sequence. Around each attention call DeepSpeed's `UlyssesSPAttentionHF` exchanges the shards for a
share of the heads (an all-to-all of queries, keys and values, and one of the output), so the shared-prefix attention
(`attention.py`) sees the whole row for `heads / sp` heads; everything else in a layer is per token. The completion
log-probabilities of a forward are gathered over the group ([`gather_sequence`]) and each rank computes its own
rollouts' loss from them: the gather's backward hands each shard the gradient of every rank's loss, so the group's
gradient is the unsplit row's, whatever the loss (token weights, sequence-level ratios, normalisations).

Memory per rank: a forward of `L` tokens holds `ceil(L / sp)` tokens' activations, plus the all-to-all buffers of one
layer. Compute: the same FLOPs per token, plus four all-to-alls per layer and forward (eight with the recomputation
under layer checkpointing), each moving `tokens x hidden / sp` values per rank.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from transformers import PretrainedConfig

from ...user_errors import UsageError
from ..rollouts import Rollouts


if TYPE_CHECKING:
    from ...config import DePOConfig


def launched_size() -> int:
    """The sequence-parallel size of an `accelerate launch` whose config has a `parallelism_config` section (the
    variables Accelerate's `ParallelismConfig` reads), 1 otherwise."""
    if os.environ.get("ACCELERATE_USE_PARALLELISM_CONFIG", "false").lower() != "true":
        return 1
    return int(os.environ.get("PARALLELISM_CONFIG_SP_SIZE", "1"))


def configuration_problem(args: "DePOConfig", size: int) -> str | None:
    """Why the configuration cannot split its long pass over `size` ranks, or None."""
    if size == 1:
        return None
    if args.distillation == "none" or args.rollout_context != "short":
        return (
            f"parallelism_config_sp_size {size}: sequence parallelism splits DePO's long-context pass, and "
            f"rollout_context={args.rollout_context!r} with distillation={args.distillation!r} has none (the Long and "
            "Short-Long baselines generate from the long context, which cannot be split); launch them without it"
        )
    if not args.share_long_prefix:
        return (
            f"parallelism_config_sp_size {size}: sequence parallelism splits packed rows; set share_long_prefix: true"
        )
    return None


def model_problem(config: PretrainedConfig, size: int, processes: int) -> str | None:
    """Why the model cannot split its long pass over `size` of `processes` ranks, or None."""
    implementation = getattr(config, "_attn_implementation", None)
    if implementation != "sdpa" and "flash" not in str(implementation):
        return (
            f"parallelism_config_sp_size {size}: sequence parallelism runs SDPA or flash-attention, not "
            f"{implementation!r}; set attn_implementation"
        )
    allowed = allowed_sizes(config, processes)
    if size not in allowed:
        text = config.get_text_config()
        key_value_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        return (
            f"parallelism_config_sp_size {size}: Ulysses splits the {text.num_attention_heads} query heads "
            f"({key_value_heads} key/value heads) of this model over the group, within {processes} "
            f"processes; use one of {allowed}"
        )
    return None


def allowed_sizes(config: PretrainedConfig, processes: int) -> list[int]:
    """The sequence-parallel sizes a model allows on `processes` ranks: Ulysses splits the query heads over the group
    (it replicates key/value heads when there are fewer than the group, or splits them when they divide by it)."""
    text = config.get_text_config()
    heads, kv_heads = text.num_attention_heads, getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    return [
        size
        for size in range(1, processes + 1)
        if processes % size == 0 and heads % size == 0 and (kv_heads % size == 0 or size % kv_heads == 0)
    ]


class _GatherSequence(torch.autograd.Function):
    """All-gather of equal shards along dimension 1; the backward sums every rank's gradient of the whole and keeps
    this rank's slice (an all-reduce, which gloo and NCCL both run)."""

    @staticmethod
    def forward(ctx, shard: torch.Tensor, group: dist.ProcessGroup, rank: int) -> torch.Tensor:
        ctx.group, ctx.rank, ctx.width = group, rank, shard.size(1)
        parts = [torch.empty_like(shard) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, shard.contiguous(), group=group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor):
        gradient = gradient.contiguous()
        dist.all_reduce(gradient, group=ctx.group)
        return gradient[:, ctx.rank * ctx.width : (ctx.rank + 1) * ctx.width], None, None


@dataclass
class SequenceParallelGroup:
    """This rank's sequence-parallel group: `size` consecutive ranks (`members`), this one the `rank`-th."""

    size: int
    rank: int
    members: list[int]
    group: dist.ProcessGroup

    @classmethod
    def create(cls, size: int, process_index: int, num_processes: int) -> "SequenceParallelGroup":
        """Make the groups (a collective: every rank makes every group, in the same order) and return this rank's."""
        if num_processes % size:
            raise ValueError(f"{num_processes} processes do not split into sequence-parallel groups of {size}.")
        import deepspeed.comm

        if not deepspeed.comm.is_initialized():  # Ulysses exchanges through DeepSpeed's communication layer
            deepspeed.comm.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)
        mine = None
        for first in range(0, num_processes, size):
            members = list(range(first, first + size))
            group = dist.new_group(members)
            if process_index in members:
                mine = cls(size, process_index - first, members, group)
        return mine

    @classmethod
    def for_model(
        cls, config: PretrainedConfig, size: int, accelerator, shares_prefix: bool
    ) -> "SequenceParallelGroup | None":
        """This rank's group of `size` for a model (None for a size of 1), or a one-line
        [`~depo_trl.user_errors.UsageError`] when the model cannot split its rows that way (`shares_prefix`: its long
        pass packs rows, which a group splits; the pass without sharing is not split)."""
        if size == 1:
            return None
        problem = model_problem(config, size, accelerator.num_processes)
        if not problem and not shares_prefix:
            problem = (
                f"parallelism_config_sp_size {size}: sequence parallelism splits packed rows, and this model's long "
                "pass cannot pack them (see the share_long_prefix warning above); launch without it"
            )
        if problem:
            raise UsageError(problem + ".")
        return cls.create(size, accelerator.process_index, accelerator.num_processes)

    def padded_length(self, length: int) -> int:
        """`length` rounded up to a multiple of the group's size, so every rank holds an equal shard."""
        return -(-length // self.size) * self.size

    def shard(self, row: torch.Tensor, padding_value: int) -> torch.Tensor:
        """This rank's contiguous share of `row` (`(1, L)`), padded at the end to a multiple of the group's size."""
        length = self.padded_length(row.size(1))
        row = torch.nn.functional.pad(row, (0, length - row.size(1)), value=padding_value)
        width = length // self.size
        return row[:, self.rank * width : (self.rank + 1) * width]

    def gather_sequence(self, shard: torch.Tensor) -> torch.Tensor:
        """The group's shards of a row, in order (`(1, padded length)`), differentiable (see the module docstring)."""
        return _GatherSequence.apply(shard, self.group, self.rank)

    def union(self, rollouts: Rollouts, rows: torch.Tensor) -> tuple[Rollouts, torch.Tensor, int]:
        """The group's windows as one: every member's rollouts `rows` (a prompt's ids sent once), in member order, the
        union's indices of them, and where this rank's rows start in it. Completions are padded to the longest."""
        prompts: dict[int, int] = {}  # a prompt's tensor, sent once: its rollouts share it
        payload = {"prompts": [], "prompt_of": [], "completions": [], "loss_masks": []}
        for row in rows.tolist():
            ids = rollouts.long_prompt_ids[row]
            if id(ids) not in prompts:
                prompts[id(ids)] = len(payload["prompts"])
                payload["prompts"].append(ids.cpu())
            length = rollouts.completion_lengths[row]
            payload["prompt_of"].append(prompts[id(ids)])
            payload["completions"].append(rollouts.completion_ids[row, :length].cpu())
            payload["loss_masks"].append(rollouts.loss_mask[row, :length].cpu())
        gathered: list[dict] = [None] * self.size
        dist.all_gather_object(gathered, payload, group=self.group)
        device = rows.device
        long_prompt_ids, completions, loss_masks, offset = [], [], [], 0
        for member, sent in enumerate(gathered):
            if member == self.rank:
                offset = len(completions)
            shared = [ids.to(device) for ids in sent["prompts"]]
            long_prompt_ids += [shared[index] for index in sent["prompt_of"]]
            completions += sent["completions"]
            loss_masks += sent["loss_masks"]
        width = max((len(ids) for ids in completions), default=1)
        completion_ids = torch.zeros((len(completions), width), dtype=rollouts.completion_ids.dtype)
        completion_mask = torch.zeros((len(completions), width), dtype=rollouts.completion_mask.dtype)
        loss_mask = torch.zeros((len(completions), width), dtype=rollouts.loss_mask.dtype)
        for index, (ids, mask) in enumerate(zip(completions, loss_masks)):
            completion_ids[index, : len(ids)], completion_mask[index, : len(ids)] = ids, 1
            loss_mask[index, : len(ids)] = mask
        union = Rollouts(long_prompt_ids, completion_ids.to(device), completion_mask.to(device), loss_mask.to(device))
        return union, torch.arange(len(completions), device=device), offset


class UlyssesAttention:
    """The attention of a packed row split over a group: DeepSpeed's `UlyssesSPAttentionHF` around the full-row
    attention of `attention.py`, one instance per attention implementation (it holds the function it calls)."""

    def __init__(self, sequence_parallel: SequenceParallelGroup, config: PretrainedConfig):
        self.sequence_parallel = sequence_parallel
        self.config = config.get_text_config()
        self._by_function: dict[Callable, torch.nn.Module] = {}

    def __call__(self, full_row_attention: Callable, module, query, key, value, **kwargs):
        """Exchange the shards for a share of the heads, run `full_row_attention(module, q, k, v, mask, **kwargs)` on
        the whole row, and exchange back: `(1, L / sp, heads, dim)`."""
        from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

        if full_row_attention not in self._by_function:
            text = self.config
            self._by_function[full_row_attention] = UlyssesSPAttentionHF(
                attn=full_row_attention,
                batch_size=1,
                attn_head_count=text.num_attention_heads,
                attn_head_size=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
                kv_head_count=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
                num_hidden_layers=text.num_hidden_layers,
                process_group=self.sequence_parallel.group,
                seq_length_is_variable=True,
            )
        # Ulysses sets the module's key/value grouping for its share of the heads; the proxy's calls need the model's
        groups = getattr(module, "num_key_value_groups", None)
        try:
            return self._by_function[full_row_attention](module, query, key, value, None, **kwargs)
        finally:
            if groups is not None:
                module.num_key_value_groups = groups
