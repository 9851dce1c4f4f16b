"""The long pass: completion log-probabilities under the long prompts for a window's rollouts, whatever the variant.

The rollouts are planned into forwards (`plan.py`: packed rows sharing each long prompt, `packed_row.py`, or padded
batches without sharing) of the size the memory model gives (`memory.py`), which also decides how they run
(`memory.plan_pass`, with `checkpointing.py`). Every process runs as many forwards and runs them alike, since under
ZeRO-3 or FSDP each forward (and each recomputation) gathers parameters collectively. With sequence parallelism the
ranks of a group run the union of their windows, each forward split over them (`sequence_parallel.py`).
"""

import functools
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from transformers.utils import logging
from trl.trainer.utils import pad

from ..rollouts import Rollouts
from .checkpointing import backbone, checkpointed_forward, uses_layer_checkpointing, without_layer_checkpointing
from .memory import (
    LongPassMemory,
    PassPlan,
    adapter_activation_bytes,
    available_memory,
    forward_size,
    head_kept_output_share,
    plan_pass,
)
from .packed_row import pack_row, packed_row_log_probs, self_attention_layers
from .plan import forward_tokens, one_prompt_forward_tokens, packed_row_tokens, plan_forwards
from .sequence_parallel import SequenceParallelGroup, UlyssesAttention


logger = logging.get_logger(__name__)

# `(model, input_ids, attention_mask, logits_to_keep)` -> completion log-probs `(rows, logits_to_keep)`: TRL's helper
NaiveLogProbs = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]


# A padding forward's prompt: the last tokens of rollout 0's long prompt
PADDING_PROMPT_TOKENS = 2


def padding_rollouts(rollouts: Rollouts) -> Rollouts:
    """One rollout of three tokens (the last two of rollout 0's long prompt and its first completion token): what a
    process runs, with no weight, for each forward it has fewer than the busiest one. Under ZeRO-3 or FSDP every model
    call gathers the parameters collectively, whatever its length, so the smallest input keeps the processes in
    step."""
    prompt = rollouts.long_prompt_ids[0][-PADDING_PROMPT_TOKENS:]
    completion = rollouts.completion_ids[:1, :1]
    mask = torch.ones_like(completion)
    return Rollouts([prompt], completion, mask, mask)


@dataclass(frozen=True)
class WindowPlan:
    """How a window's forwards run on this process: its `forwards` (groups of rollout indices, [`plan_forwards`]) of up
    to `tokens_per_forward` tokens, padded to the `count` every process runs; the tokens held for the backward by the
    process that holds most (`held_tokens`, which the decision `how` is made for) and by this one (`own_held_tokens`,
    its padding forwards included); the memory models without and with the model's layer checkpointing (None without
    a memory reading) and the usable bytes."""

    forwards: list[list[list[int]]]
    tokens_per_forward: int
    count: int
    held_tokens: int
    own_held_tokens: int
    how: PassPlan
    memory: tuple[LongPassMemory, LongPassMemory | None] | None
    available: int
    layer_checkpointing: bool
    sequence_parallel: int = 1

    @property
    def tokens_per_rank(self) -> int:
        """The largest share of a forward one rank holds: the whole forward, or its shard under sequence
        parallelism (`held_tokens` and `own_held_tokens` count shards too)."""
        return -(-self.tokens_per_forward // self.sequence_parallel)

    @property
    def memory_model(self) -> LongPassMemory | None:
        """The memory model of the way the forwards run."""
        if self.memory is None:
            return None
        plain, checkpointed = self.memory
        return plain if self.how == PassPlan.WITHOUT_LAYER_CHECKPOINTS else checkpointed or plain

    def predicted_peak_bytes(self) -> float | None:
        """This process's peak during the pass as the memory model predicts it ([`LongPassMemory.peak_bytes`]; None
        without a memory model)."""
        used = self.memory_model
        if used is None:
            return None
        return used.peak_bytes(self.how, self.own_held_tokens, self.tokens_per_rank)


def fit_width(logps: torch.Tensor, width: int) -> torch.Tensor:
    """`logps` `(n, T')` cut or right-padded to `T = width` columns (a union's completions are as wide as the group's
    longest; a rollout's own tokens fit in its own batch's width)."""
    if logps.size(1) >= width:
        return logps[:, :width]
    return torch.nn.functional.pad(logps, (0, width - logps.size(1)))


class LongPass:
    """Runs a window's long pass for a [`~depo_trl.distillation.Distillation`]: plans its forwards, agrees them across
    processes, runs each (recomputed in the backward, or held until it), and sums the losses the variant makes of them.
    With `sequence_parallel`, this rank's group runs the union of its members' windows, each forward split over it.

    Args:
        accelerator: the trainer's; its processes agree on the forwards.
        naive_log_probs: TRL's log-prob helper, for the pass without sharing.
        pad_token_id: left padding of long prompts without sharing.
        share_prefix: pack each prompt's rollouts into one row (`packed_row.py`).
        requested_tokens: `distillation_forward_tokens`; None: the memory model's.
        memory_fraction: share of the free memory the pass may fill.
        rollouts_per_prompt: `num_generations`, for the memory model.
        sequence_parallel: this rank's sequence-parallel group, or None.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        naive_log_probs: NaiveLogProbs,
        pad_token_id: int,
        share_prefix: bool,
        requested_tokens: int | None,
        memory_fraction: float,
        rollouts_per_prompt: int,
        sequence_parallel: SequenceParallelGroup | None = None,
    ):
        self.accelerator = accelerator
        self.naive_log_probs = naive_log_probs
        self.pad_token_id = pad_token_id
        self.share_prefix = share_prefix
        self.requested_tokens = requested_tokens
        self.memory_fraction = memory_fraction
        self.rollouts_per_prompt = rollouts_per_prompt
        self.sequence_parallel = sequence_parallel
        self._ulysses: UlyssesAttention | None = None
        self._announced: tuple[bool, PassPlan] | None = None

    def plan(self, model: torch.nn.Module, rollouts: Rollouts, rows: torch.Tensor) -> WindowPlan:
        """How the forwards of the window's rollouts `rows` run on this process, agreed with the others."""
        device = self.accelerator.device
        order = rows.tolist()
        lengths, all_keys = rollouts.completion_lengths, rollouts.prompt_keys
        prompt_lengths = [len(rollouts.long_prompt_ids[r]) for r in order]
        completion_lengths = [lengths[r] for r in order]
        keys = [all_keys[r] for r in order]
        # Unwrapped once: accelerate's unwrap reads installed packages' metadata on every call
        unwrapped = self.accelerator.unwrap_model(model)
        layer_checkpointing = uses_layer_checkpointing(unwrapped)
        size, memory, available = self._forward_size(
            unwrapped, layer_checkpointing, keys, prompt_lengths, completion_lengths
        )
        planned = plan_forwards(keys, prompt_lengths, completion_lengths, size, self.share_prefix)
        own = sum(
            self._per_rank(forward_tokens(f, prompt_lengths, completion_lengths, self.share_prefix)) for f in planned
        )
        padding_tokens = self._per_rank(forward_tokens([[0]], [PADDING_PROMPT_TOKENS], [1], self.share_prefix))
        # Every process runs the agreed number of forwards, and runs them alike: as what the process that holds most
        # fits. A process with fewer forwards runs padding forwards, held like the others
        per_process = self.accelerator.gather(torch.tensor([[len(planned), own, padding_tokens]], device=device))
        count = int(per_process[:, 0].max())
        held_per_process = per_process[:, 1] + (count - per_process[:, 0]) * per_process[:, 2]
        held = int(held_per_process.max())
        if memory is None:  # no memory reading: the model's own checkpointing, every forward but the last recomputed
            how = PassPlan.RECOMPUTED if count > 1 else PassPlan.HELD
        else:
            how = plan_pass(*memory, held, self._per_rank(size), count, available)  # what one rank holds
        forwards = [[[order[position] for position in group] for group in forward] for forward in planned]
        return WindowPlan(
            forwards, size, count, held, int(held_per_process[self.accelerator.process_index]), how, memory, available,
            layer_checkpointing, self.sequence_parallel.size if self.sequence_parallel else 1,
        )  # fmt: skip

    def _shards_parameters(self) -> bool:
        """Whether each forward gathers the parameters (ZeRO-3 or FSDP), the LM head's weight among them."""
        state = self.accelerator.state
        plugin = getattr(state, "deepspeed_plugin", None)
        return (plugin is not None and plugin.zero_stage == 3) or getattr(state, "fsdp_plugin", None) is not None

    def _per_rank(self, tokens: int) -> int:
        """Tokens of a forward of `tokens` one rank holds: all of them, or a shard under sequence parallelism."""
        return -(-tokens // self.sequence_parallel.size) if self.sequence_parallel else tokens

    def run(
        self,
        model: torch.nn.Module,
        rollouts: Rollouts,
        rows: torch.Tensor,
        forward_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The sum of `forward_loss(rollout indices, their log-probs (n, T))` over the forwards of `rows`, and the
        detached log-probs `(B, T)` of every rollout (zero outside `rows`)."""
        device = self.accelerator.device
        own_rollouts, own_rows = rollouts, rows.tolist()
        local_index = {row: row for row in own_rows}  # the planned rollout -> this rank's rollout
        if self.sequence_parallel is not None:  # the group's windows as one, each forward split over the group
            rollouts, rows, offset = self.sequence_parallel.union(own_rollouts, rows)
            local_index = {offset + position: row for position, row in enumerate(own_rows)}
        plan = self.plan(model, rollouts, rows)
        self._announce(plan)
        unwrapped = self.accelerator.unwrap_model(model)
        padding = padding_rollouts(own_rollouts)  # in a group, shards of equal length whatever their tokens
        long_logps = torch.zeros(own_rollouts.loss_mask.shape, dtype=torch.float32, device=device)
        width = long_logps.size(1)
        layers = without_layer_checkpointing if plan.how == PassPlan.WITHOUT_LAYER_CHECKPOINTS else nullcontext
        losses = []
        with layers(unwrapped):
            for index in range(plan.count):
                # The last forward is not recomputed: the backward reaches it first, so holding it raises no peak
                recomputed = plan.how == PassPlan.RECOMPUTED and index < plan.count - 1
                if index >= len(plan.forwards):
                    losses.append(self._forward(model, unwrapped, padding, [[0]], recomputed).sum() * 0.0)
                    continue
                order = [r for group in plan.forwards[index] for r in group]
                logps = self._forward(model, unwrapped, rollouts, plan.forwards[index], recomputed)
                # This rank's rollouts of the forward (under sequence parallelism, the union's rows it owns)
                mine = [position for position, r in enumerate(order) if r in local_index]
                loss = logps.sum() * 0.0  # every rank's backward runs through the forward's gathers
                if mine:
                    forward_rows = torch.tensor([local_index[order[p]] for p in mine], device=device)
                    own_logps = fit_width(logps[mine], width)
                    long_logps[forward_rows] = own_logps.detach().float()
                    loss = loss + forward_loss(forward_rows, own_logps)
                losses.append(loss)
        # No process has anything to compute: every process skips the pass alike
        loss = torch.stack(losses).sum() if losses else torch.zeros((), device=device)
        return loss, long_logps

    def _forward_size(
        self, unwrapped, layer_checkpointing: bool, keys, prompt_lengths, completion_lengths
    ) -> tuple[int, tuple[LongPassMemory, LongPassMemory | None] | None, int]:
        """Tokens per forward, the memory models (without and, if the model uses it, with its layer checkpointing)
        and the usable bytes, from values agreed across processes (the largest window, group and smallest forward;
        the least memory). Without a memory reading (devices other than CUDA and CPU): the requested size, or one
        prompt with its rollouts, and no memory model."""
        window = plan_forwards(keys, prompt_lengths, completion_lengths, None, self.share_prefix)
        window_tokens = sum(forward_tokens(f, prompt_lengths, completion_lengths, self.share_prefix) for f in window)
        largest_group = one_prompt_forward_tokens(keys, prompt_lengths, completion_lengths, self.share_prefix)
        smallest = max(
            (
                packed_row_tokens(p, [c]) if self.share_prefix else p + max(completion_lengths)
                for p, c in zip(prompt_lengths, completion_lengths)
            ),
            default=0,
        )
        memory = available_memory(self.accelerator.device)
        available = -1 if memory is None else int(memory * self.memory_fraction)
        # Per rank: a split row's completions follow its prompt, so one rank's shard may hold all of them. In
        # millionths, so that every process agrees on the largest share as on the other sizes
        kept_share = math.ceil(
            1e6
            * head_kept_output_share(self.accelerator.device, sum(completion_lengths), self._per_rank(window_tokens))
        )
        local = torch.tensor(
            [[window_tokens, largest_group, smallest, -available, kept_share]], device=self.accelerator.device
        )
        agreed = self.accelerator.gather(local).max(dim=0).values.tolist()
        window_tokens, largest_group, smallest, available = agreed[0], agreed[1], agreed[2], -agreed[3]
        if available < 0:
            return self.requested_tokens or max(largest_group, 1), None, available
        implementation = getattr(unwrapped.config, "_attn_implementation", None)
        compute_bytes = 2 if self.accelerator.mixed_precision in ("bf16", "fp16") else unwrapped.dtype.itemsize
        shapes = functools.partial(
            LongPassMemory.of_model,
            unwrapped.config,
            # The residual stream, which checkpointing keeps, stays in the weights' dtype under autocast
            dtype_bytes=max(compute_bytes, unwrapped.dtype.itemsize),
            rollouts_per_prompt=self.rollouts_per_prompt,
            keys_repeated_per_head=implementation == "sdpa",
            padded_row_tokens=None if self.share_prefix else smallest,
            eager_attention=implementation == "eager",
            adapter_bytes=adapter_activation_bytes(unwrapped, compute_bytes),
            trainable_head=unwrapped.get_output_embeddings().weight.requires_grad,
            sequence_parallel=self.sequence_parallel.size if self.sequence_parallel else 1,
            gathered_head=self._shards_parameters(),
            kept_output_share=agreed[4] / 1e6,
        )
        plain = shapes(layer_checkpointing=False)
        checkpointed = shapes(layer_checkpointing=True) if layer_checkpointing else None
        sizing = checkpointed or plain
        if self.requested_tokens:
            return self.requested_tokens, (plain, checkpointed), available
        # The memory model counts what one rank holds: a forward's shard under sequence parallelism
        local = forward_size(
            sizing, *(self._per_rank(tokens) for tokens in (window_tokens, largest_group, smallest)), available
        )
        parts = self.sequence_parallel.size if self.sequence_parallel else 1
        return min(local * parts, window_tokens), (plain, checkpointed), available

    def _announce(self, plan: WindowPlan) -> None:
        """Say once what the pass does, and again when a window makes it run its forwards another way."""
        decision = (plan.count > 1, plan.how)
        if self._announced == decision or not self.accelerator.is_main_process:
            return
        self._announced = decision
        forwards = (
            f"{plan.count} forward{'s' if plan.count > 1 else ''} of up to {plan.tokens_per_forward} tokens "
            f"({plan.held_tokens} in all)"
        )
        if plan.sequence_parallel > 1:
            forwards += (
                f", each split over a sequence-parallel group of {plan.sequence_parallel} ranks (up to "
                f"{plan.tokens_per_rank} tokens a rank; the counts are per rank)"
            )
        held_as = (
            "under the model's layer checkpointing (each layer runs twice)" if plan.layer_checkpointing else "as is"
        )
        what = {
            PassPlan.WITHOUT_LAYER_CHECKPOINTS: "held for the backward, each layer run once (the window fits without "
            "layer checkpoints)",
            PassPlan.HELD: f"held for the backward {held_as}",
            PassPlan.RECOMPUTED: "all but the last recomputed in the backward, since holding them would not fit",
        }[plan.how]
        used = plan.memory_model
        if used is None:
            model = "no memory reading on this device"
        else:
            model = (
                f"{plan.available / 2**30:.1f} GiB usable, {used.held / 2**10:.0f} KiB held and "
                f"{used.working / 2**10:.0f} KiB working per token, {used.fixed / 2**30:.2f} GiB for the LM head's "
                "gradient"
            )
        logger.warning(
            f"Long pass: {forwards}, {what} (memory model: {model}; distillation_forward_tokens and "
            "distillation_memory_fraction set it)."
        )

    def _forward(self, model, unwrapped, rollouts, groups: list[list[int]], recompute: bool) -> torch.Tensor:
        """Completion-token log-probs `(rollouts, T)` of `groups` (each a prompt's rollouts), in their order. With
        `recompute`, the backbone's activations are recomputed during the backward instead of kept."""
        with checkpointed_forward(backbone(unwrapped)) if recompute else nullcontext():
            if not self.share_prefix:
                return self._padded_forward(model, rollouts, [r for group in groups for r in group])
            return self._packed_forward(model, unwrapped.config.get_text_config(), rollouts, groups)

    def _padded_forward(self, model, rollouts, order: list[int]) -> torch.Tensor:
        lengths = rollouts.completion_lengths
        # Completions are padded to the generation batch's longest; this forward's longest is enough
        width = max(max(lengths[r] for r in order), 1)
        prompts = [rollouts.long_prompt_ids[r] for r in order]
        prompt_ids = pad(prompts, padding_value=self.pad_token_id, padding_side="left")
        prompt_mask = pad([torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left")
        input_ids = torch.cat([prompt_ids, rollouts.completion_ids[order, :width]], dim=1)
        attention_mask = torch.cat([prompt_mask, rollouts.completion_mask[order, :width]], dim=1)
        logps = self.naive_log_probs(model, input_ids, attention_mask, width)
        return torch.nn.functional.pad(logps, (0, rollouts.completion_ids.size(1) - width))

    def _packed_forward(self, model, config, rollouts, groups: list[list[int]]) -> torch.Tensor:
        lengths = rollouts.completion_lengths
        packed = pack_row(
            [
                (
                    rollouts.long_prompt_ids[group[0]],
                    [(r, rollouts.completion_ids[r, : lengths[r]]) for r in group],
                )
                for group in groups
            ]
        )
        # MoE: the load-balancing loss would read the attention mask, here a placeholder, and is not used
        router = {"output_router_logits": False} if getattr(config, "output_router_logits", False) else {}
        if self.sequence_parallel is not None:
            if self._ulysses is None:
                self._ulysses = UlyssesAttention(self.sequence_parallel, config)
            packed.layout.ulysses = self._ulysses
        with self.accelerator.autocast():
            log_probs = packed_row_log_probs(
                model, packed, self_attention_layers(config), sequence_parallel=self.sequence_parallel, **router
            )
        order = [r for group in groups for r in group]
        position_of = {rollout: position for position, rollout in enumerate(order)}
        logps = log_probs.new_zeros((len(order), rollouts.completion_ids.size(1)))
        target = packed.rollout.apply_(position_of.__getitem__).to(logps.device)
        return logps.index_put((target, packed.token.to(logps.device)), log_probs[0, packed.position - 1])
