"""What every long-context term shares: the rollouts it reads, the optimizer window it runs on, and the template of a
window's pass. A variant (`kd.py`, `iw.py`) says which rollouts enter the pass, with what token weights, what loss a
forward's log-probabilities make, and what it logs."""

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..losses import IWLevel, IWReduction
from ..user_errors import UsageError
from .long_pass import LongPass
from .rollouts import Rollouts


if TYPE_CHECKING:
    from ..config import DePOConfig


@dataclass(frozen=True)
class ClippedObjective:
    """The proxy loss's settings, as TRL's GRPOTrainer resolved them: token normalisation (`loss_type`),
    importance-sampling level, clip range and two-sided cap (`delta`)."""

    loss_type: IWReduction
    level: IWLevel
    epsilon_low: float
    epsilon_high: float
    delta: float | None


@dataclass
class GenerationBatch:
    """What a term may read of one process's generation batch, as the trainer hands it over."""

    output: dict[str, Any]  # TRL's `_generate_and_score_completions` output for this process
    rewards: torch.Tensor  # (B,) TRL's weighted reward sum; NaN where no reward function scored the rollout
    all_rewards: torch.Tensor  # the same for every process's rollouts
    args: "DePOConfig"
    proxy: ClippedObjective
    gather: Callable[[torch.Tensor], torch.Tensor]  # all processes' values, concatenated
    behaviour_logps: Callable[[], torch.Tensor]  # (B, T) under the short prompt with the sampling weights (pi_old)


@dataclass(frozen=True)
class Accumulation:
    """How a generation batch's gradient is summed: over `processes`, the `steps` micro-batches of an optimizer step,
    and `steps_per_generation` optimizer steps' worth of micro-batches per generation (1 and 1 in evaluation)."""

    processes: int
    steps: int
    steps_per_generation: int


@dataclass
class WindowRecord:
    """What a window's pass produced, for the micro-batches of the window: per rollout, its token weights in the term
    and its long-context log-probabilities (detached; zero for rollouts that did not enter the pass)."""

    weights: torch.Tensor  # (B, T) float32
    long_logps: torch.Tensor  # (B, T) float32
    in_pass: torch.Tensor  # (B,) bool


@dataclass
class Window:
    """An optimizer window's micro-batches of one generation batch: the rollouts of each, and, once the window's first
    micro-batch has run the pass, its record. Every micro-batch of the window holds the same object."""

    rollouts_per_micro_batch: list[torch.Tensor]
    record: WindowRecord | None = field(default=None, repr=False)


class Distillation(ABC):
    """DePO's long-context term for one process's generation batch: built when the batch is generated, run once per
    optimizer window (TRL shuffles a generation batch's rollouts over the window's micro-batches; the pass regroups
    them by prompt), its value completed per micro-batch.

    Every weight carries the normalisation of TRL's per-micro-batch loss, so the window's summed gradient is that of
    per-micro-batch losses, whatever the split.
    """

    #: The name in `DePOConfig.distillation` and in the registry
    name: ClassVar[str]
    #: The metric the term's value (before `distillation_coef`) is logged under
    value_metric: ClassVar[str]

    def __init__(self, rollouts: Rollouts):
        self.rollouts = rollouts

    @classmethod
    def check_config(cls, args: "DePOConfig") -> None:
        """Raise a [`~depo_trl.user_errors.UsageError`] when `args` has settings this variant cannot use; called by
        `DePOConfig.__post_init__` for the configured variant. A variant with settings of its own extends it."""
        steps, accumulation = args.steps_per_generation, args.gradient_accumulation_steps
        if steps % accumulation and accumulation % steps:
            raise UsageError(
                f"The long-context pass runs once per optimizer window of a generation batch, so one of "
                f"steps_per_generation ({steps}) and gradient_accumulation_steps ({accumulation}) must divide the "
                "other."
            )

    @classmethod
    @abstractmethod
    def from_generation_batch(cls, rollouts: Rollouts, batch: GenerationBatch) -> "Distillation":
        """The term of a freshly generated batch."""

    @abstractmethod
    def token_weights(self, micro_batches: list[torch.Tensor], accumulation: Accumulation) -> torch.Tensor:
        """Weights `(rollouts of the window, T)` such that `sum(weights * per-token term)` is the window's loss."""

    @abstractmethod
    def enters_pass(self, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Which of the window's rollouts `rows` (with their `weights`) the long pass computes: those whose term can
        have a gradient."""

    @abstractmethod
    def forward_loss(self, rows: torch.Tensor, long_logps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The term's share from one forward of the pass: `rows`' log-probabilities under their long prompts."""

    @abstractmethod
    def generation_metrics(self) -> dict[str, float]:
        """Metrics of the whole generation batch (all processes), logged once when it is generated."""

    def window_metrics(self, record: WindowRecord, rows: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Metrics of a window, as this process's `(sum, count)`: the trainer reduces them over processes once per
        window, never inside a forward (a recomputed forward runs again in the backward)."""
        return {}

    def micro_batch_value(self, record: WindowRecord, rows: torch.Tensor, short_logps: torch.Tensor) -> torch.Tensor:
        """The value a micro-batch adds to the term beyond the window's pass, from the short-context log-probabilities
        its proxy pass computed (no gradient)."""
        return torch.zeros((), device=short_logps.device)

    @abstractmethod
    def logp_gap_mask(self, record: WindowRecord, rows: torch.Tensor) -> torch.Tensor:
        """The tokens of `rows` over which `depo/logp_gap` (short minus long log-probability) is measured."""

    def run_window(
        self, model, long_pass: LongPass, window: Window, accumulation: Accumulation
    ) -> tuple[torch.Tensor, WindowRecord]:
        """The window's pass: the loss whose gradient is the term's over the window (and, for a term whose value the
        pass knows, its value), and the window's record, which the window's micro-batches read."""
        rows = torch.cat(window.rollouts_per_micro_batch)
        size = self.rollouts.loss_mask.shape
        weights = torch.zeros(size, dtype=torch.float32, device=rows.device)
        weights[rows] = self.token_weights(window.rollouts_per_micro_batch, accumulation).float()
        in_pass = torch.zeros(size[0], dtype=torch.bool, device=rows.device)
        in_pass[rows] = self.enters_pass(rows, weights[rows])
        loss, long_logps = long_pass.run(
            model,
            self.rollouts,
            in_pass.nonzero().squeeze(-1),
            lambda forward_rows, logps: self.forward_loss(forward_rows, logps, weights[forward_rows]),
        )
        return loss, WindowRecord(weights=weights, long_logps=long_logps, in_pass=in_pass)
