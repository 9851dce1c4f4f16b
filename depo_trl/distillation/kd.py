"""DePO's conditional distillation (`distillation: kd`, paper Eq. 10 + 12)."""

import torch

from ..losses import (
    accumulated_token_normalizer,
    conditional_kd_loss,
    distillation_mask,
    kd_gradient_surrogate,
    kd_token_weights,
)
from .base import Accumulation, Distillation, GenerationBatch, WindowRecord
from .rollouts import Rollouts


class KDDistillation(Distillation):
    """The same policy, conditioned on the long prompt, trained towards the short-context rollouts whose reward
    passed `distillation_reward_threshold`; their short-context log-probabilities are a frozen teacher.

    Only those rollouts enter the long pass, weighted `1 / N_KD` (`N_KD`: their tokens in the generation batch, over
    all processes, spread like TRL's DAPO normaliser over the accumulation). The pass contributes the gradient
    ([`~depo_trl.losses.kd_gradient_surrogate`]); each micro-batch completes the value from the teacher its own proxy
    pass computed.
    """

    name = "kd"
    value_metric = "depo/kd_loss"

    def __init__(
        self,
        rollouts: Rollouts,
        rewards: torch.Tensor,
        threshold: float,
        tokens_in_batch: torch.Tensor,
        fraction: float,
    ):
        super().__init__(rollouts)
        self.rewards = rewards  # (B,); an unscored rollout's NaN never passes the threshold
        self.threshold = threshold
        self.tokens_in_batch = tokens_in_batch  # N_KD, all processes
        self.fraction = fraction  # share of the generation batch's rollouts distilled, all processes

    @classmethod
    def from_generation_batch(cls, rollouts: Rollouts, batch: GenerationBatch) -> "KDDistillation":
        threshold = batch.args.distillation_reward_threshold
        distilled_tokens = distillation_mask(rollouts.loss_mask, batch.rewards, threshold).sum().float()
        fraction = (batch.all_rewards >= threshold).float().mean().item()
        return cls(rollouts, batch.rewards, threshold, batch.gather(distilled_tokens).sum(), fraction)

    def token_weights(self, micro_batches: list[torch.Tensor], accumulation: Accumulation) -> torch.Tensor:
        rows = torch.cat(micro_batches)
        normalizer = accumulated_token_normalizer(
            self.tokens_in_batch, accumulation.processes, accumulation.steps, accumulation.steps_per_generation
        )
        return kd_token_weights(self.rollouts.loss_mask[rows], self.rewards[rows], self.threshold, normalizer)

    def enters_pass(self, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return (weights > 0).any(-1)

    def forward_loss(self, rows: torch.Tensor, long_logps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return kd_gradient_surrogate(long_logps, weights)

    def micro_batch_value(self, record: WindowRecord, rows: torch.Tensor, short_logps: torch.Tensor) -> torch.Tensor:
        return conditional_kd_loss(record.long_logps[rows], short_logps, record.weights[rows])

    def logp_gap_mask(self, record: WindowRecord, rows: torch.Tensor) -> torch.Tensor:
        return distillation_mask(self.rollouts.loss_mask[rows], self.rewards[rows], self.threshold)

    def generation_metrics(self) -> dict[str, float]:
        return {"depo/kd_fraction": self.fraction, "depo/kd_tokens": self.tokens_in_batch.item()}
