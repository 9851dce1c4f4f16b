"""DePO-IW: importance-weighted off-policy RL on the long context (`distillation: iw`, paper Eq. 13)."""

import torch
from trl import GRPOTrainer

from ..losses import (
    IW_REDUCTIONS,
    accumulated_token_normalizer,
    importance_clip_mask,
    importance_log_weights,
    importance_weighted_loss,
    iw_token_weights,
)
from ..user_errors import UsageError
from .base import Accumulation, ClippedObjective, Distillation, GenerationBatch, WindowRecord
from .rollouts import Rollouts


class IWDistillation(Distillation):
    """Off-policy clipped RL on the long context with the short-context rollouts and their advantages: the ratio of
    the long-context policy to the short-context behaviour policy (`old_logps`), clipped like the proxy.

    Every rollout is in the term (its advantage carries the sign), but one whose advantage is zero has a term of
    exactly zero, and so does not enter the long pass. When vLLM sampled the rollouts, `correction` (TRL's
    importance-sampling ratio times its off-policy mask) multiplies the term as it does the proxy's.
    """

    name = "iw"
    value_metric = "depo/iw_loss"

    def __init__(
        self,
        rollouts: Rollouts,
        advantages: torch.Tensor,
        old_logps: torch.Tensor,
        correction: torch.Tensor | None,
        tokens_in_batch: torch.Tensor,
        objective: ClippedObjective,
    ):
        super().__init__(rollouts)
        self.advantages = advantages  # (B,)
        self.old_logps = old_logps  # (B, T): behaviour log-probs under the short prompt (pi_old)
        self.correction = correction  # (B, T) or (B, 1), or None
        self.tokens_in_batch = tokens_in_batch  # loss tokens, all processes (the DAPO normaliser)
        self.objective = objective

    @classmethod
    def check_config(cls, args) -> None:
        """The term follows the proxy's token normalisation, which is defined for the losses of `IW_REDUCTIONS`."""
        super().check_config(args)
        if args.loss_type not in IW_REDUCTIONS:
            raise UsageError(
                f"distillation='iw' follows the proxy's token normalisation, which is defined for loss_type in "
                f"{IW_REDUCTIONS}; got loss_type={args.loss_type!r}."
            )

    @classmethod
    def from_generation_batch(cls, rollouts: Rollouts, batch: GenerationBatch) -> "IWDistillation":
        """`pi_old` is TRL's old log-probabilities when it computed them, else one no-grad pass over the batch. The
        rollouts TRL's off-policy mask (`off_policy_mask_threshold`) drops for the sampler's drift from `pi_old` are
        decided here, once, on the short context: measured against the long-context policy, the KL would count the
        context gap this term learns, and drop most negative-advantage rollouts."""
        output = batch.output
        old_logps = output.get("old_per_token_logps")
        if old_logps is None:
            old_logps = batch.behaviour_logps()
        correction = output.get("importance_sampling_ratio")
        threshold = batch.args.off_policy_mask_threshold
        if threshold is not None:
            off_policy_mask = GRPOTrainer.get_off_policy_mask(
                output["advantages"].unsqueeze(-1),
                old_logps,
                output.get("sampling_per_token_logps", old_logps),
                rollouts.loss_mask,
                threshold,
            )
            correction = off_policy_mask if correction is None else correction * off_policy_mask
        tokens_in_batch = batch.gather(rollouts.loss_mask.sum().float()).sum()
        return cls(rollouts, output["advantages"], old_logps, correction, tokens_in_batch, batch.proxy)

    def token_weights(self, micro_batches: list[torch.Tensor], accumulation: Accumulation) -> torch.Tensor:
        mask, loss_type = self.rollouts.loss_mask, self.objective.loss_type
        if loss_type == "dapo":  # the generation batch's tokens, spread over the accumulation like TRL's DAPO
            normalizer = accumulated_token_normalizer(
                self.tokens_in_batch, accumulation.processes, accumulation.steps, accumulation.steps_per_generation
            )
            return iw_token_weights(mask[torch.cat(micro_batches)], loss_type, normalizer)
        # GRPO and BNPO normalise within each micro-batch, as TRL's proxy loss does
        weights = [iw_token_weights(mask[rows], loss_type) for rows in micro_batches]
        return torch.cat(weights) / accumulation.steps

    def enters_pass(self, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return (weights > 0).any(-1) & (self.advantages[rows] != 0)

    def forward_loss(self, rows: torch.Tensor, long_logps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        objective = self.objective
        return importance_weighted_loss(
            long_logps,
            self.old_logps[rows],
            self.advantages[rows],
            self.rollouts.loss_mask[rows],
            weights,
            objective.epsilon_low,
            objective.epsilon_high,
            objective.level,
            delta=objective.delta,
            correction=None if self.correction is None else self.correction[rows],
        )

    def window_metrics(self, record: WindowRecord, rows: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """`depo/iw_clip_ratio`: the share of the window's ratios where the clip binds, as TRL's `clip_ratio/*`
        count them (a ratio with zero advantage never binds, so the rollouts that skipped the pass count unclipped)."""
        loss_mask = self.rollouts.loss_mask[rows].float()
        level = self.objective.level
        log_weights = importance_log_weights(record.long_logps[rows], self.old_logps[rows], loss_mask, level)
        clipped = importance_clip_mask(
            log_weights, self.advantages[rows], self.objective.epsilon_low, self.objective.epsilon_high
        )
        clipped &= record.in_pass[rows].unsqueeze(-1)
        counted = (loss_mask.sum(-1, keepdim=True) > 0).float() if level == "sequence" else loss_mask
        return {"depo/iw_clip_ratio": ((clipped.float() * counted).sum(), counted.sum())}

    def logp_gap_mask(self, record: WindowRecord, rows: torch.Tensor) -> torch.Tensor:
        return self.rollouts.loss_mask[rows] * record.in_pass[rows].unsqueeze(-1)

    def generation_metrics(self) -> dict[str, float]:
        return {"depo/iw_tokens": self.tokens_in_batch.item()}
