"""Pure tensor functions for DePO's distillation terms (DESIGN.md section 1). No trainer state lives here.

Shapes: per-token log-probabilities and masks are `(B, T)` (rows = rollouts, T = completion tokens); per-rollout
values (rewards, advantages) are `(B,)`.
"""

from typing import Literal

import torch


IWLevel = Literal["token", "sequence"]
IWReduction = Literal["grpo", "bnpo", "dapo"]
IW_REDUCTIONS: tuple[str, ...] = ("grpo", "bnpo", "dapo")


def distillation_mask(completion_mask: torch.Tensor, rewards: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """Float mask `(B, T)` of the tokens DePO distils: completion tokens of rollouts with `reward >= threshold`.

    A NaN reward (unscorable rollout) never passes the threshold.
    """
    passed = (rewards >= threshold).to(completion_mask.dtype)
    return completion_mask * passed.unsqueeze(-1)


def conditional_kd_loss(
    long_logps: torch.Tensor,
    short_logps: torch.Tensor,
    completion_mask: torch.Tensor,
    rewards: torch.Tensor,
    threshold: float = 1.0,
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """DePO's conditional distillation loss L_KD (paper Eq. 10 + 12).

    `sum over distilled tokens of (short_logps.detach() - long_logps) / normalizer`, where the distilled tokens are the
    completion tokens of rollouts whose reward is at least `threshold`. The short-context log-probabilities are a
    frozen teacher: the gradient is `-grad long_logps / normalizer` on distilled tokens. `normalizer` defaults to the
    number of distilled tokens (at least 1), so a batch with no correct rollout gives exactly 0, never NaN.
    """
    weights = distillation_mask(completion_mask, rewards, threshold).to(long_logps.dtype)
    gap = short_logps.detach() - long_logps
    # `where` rather than a product: a non-finite log-prob on a masked-out token must not leak into the sum
    total = torch.where(weights > 0, gap * weights, torch.zeros_like(gap)).sum()
    if normalizer is None:
        normalizer = weights.sum().clamp(min=1.0)
    return total / normalizer


def importance_log_weights(
    long_logps: torch.Tensor,
    old_short_logps: torch.Tensor,
    completion_mask: torch.Tensor,
    level: IWLevel = "token",
) -> torch.Tensor:
    """Log importance weights of DePO-IW: long-context policy over the short-context behaviour policy.

    `"token"`: `log w_t = long_logps - old_short_logps`, shape `(B, T)`. `"sequence"` (GSPO): the masked mean of that
    log-ratio over the row's completion tokens, shape `(B, 1)`. `old_short_logps` is treated as a constant.
    """
    log_ratio = long_logps - old_short_logps.detach()
    if level == "token":
        return log_ratio
    if level == "sequence":
        mask = completion_mask.to(log_ratio.dtype)
        return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    raise ValueError(f"Unknown importance sampling level {level!r}: use 'token' or 'sequence'.")


def importance_clip_mask(
    log_weights: torch.Tensor, advantages: torch.Tensor, epsilon_low: float = 0.2, epsilon_high: float = 0.2
) -> torch.Tensor:
    """Boolean mask of the ratios where the PPO clip binds (ratio below `1 - epsilon_low` with a negative advantage, or
    above `1 + epsilon_high` with a positive one), the same definition as TRL's `clip_ratio/region_mean`."""
    ratio = torch.exp(log_weights)
    advantages = advantages.unsqueeze(-1)
    return ((ratio < 1 - epsilon_low) & (advantages < 0)) | ((ratio > 1 + epsilon_high) & (advantages > 0))


def importance_weighted_terms(
    long_logps: torch.Tensor,
    old_short_logps: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    level: IWLevel = "token",
    delta: float | None = None,
) -> torch.Tensor:
    """Per-token DePO-IW loss `-min(w * A, clip(w, 1 - epsilon_low, 1 + epsilon_high) * A)`, shape `(B, T)`; with
    `level="sequence"` each row's value is its sequence-level term, repeated over its tokens. `delta` (TRL's two-sided
    clipping) caps the unclipped ratio `w` at `delta`, as TRL does for the proxy loss."""
    log_weights = importance_log_weights(long_logps, old_short_logps, completion_mask, level)
    ratio = torch.exp(log_weights)
    clipped_ratio = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    if delta is not None:
        ratio = torch.clamp(ratio, max=delta)
    advantages = advantages.unsqueeze(-1)
    return (-torch.min(ratio * advantages, clipped_ratio * advantages)).expand_as(long_logps)


def importance_weighted_loss(
    long_logps: torch.Tensor,
    old_short_logps: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    level: IWLevel = "token",
    loss_type: IWReduction = "grpo",
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """DePO-IW loss (paper Eq. 13): off-policy clipped RL on the long context with short-context rollouts.

    `L = -min(w * A, clip(w, 1 - epsilon_low, 1 + epsilon_high) * A)` per token (or per sequence, broadcast over its
    tokens), with `w` from [`importance_log_weights`]. Reduction: `"grpo"` averages each row's masked token mean over
    rows; `"bnpo"` and `"dapo"` divide the masked token sum by `normalizer` (default: the number of masked tokens).
    """
    if loss_type not in IW_REDUCTIONS:
        raise ValueError(
            f"Unknown loss_type {loss_type!r} for the importance-weighted loss: use one of {IW_REDUCTIONS}."
        )
    per_token_loss = importance_weighted_terms(
        long_logps, old_short_logps, advantages, completion_mask, epsilon_low, epsilon_high, level
    )
    return (per_token_loss * iw_token_weights(completion_mask, loss_type, normalizer)).sum()


def iw_token_weights(
    completion_mask: torch.Tensor, loss_type: IWReduction, normalizer: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Weight of each token in the DePO-IW reduction, `(B, T)`: summing `weights * per_token_loss` gives the loss.

    `"grpo"`: `1 / (row length * rows)`; `"bnpo"` / `"dapo"`: `1 / normalizer` (default: the number of masked tokens).
    Weights make the reduction a plain sum, so rollouts can be regrouped (e.g. across micro-batches) exactly.
    """
    mask = completion_mask.float()
    if loss_type == "grpo":
        return mask / mask.sum(-1, keepdim=True).clamp(min=1.0) / max(mask.size(0), 1)
    if normalizer is None:
        normalizer = mask.sum().clamp(min=1.0)
    return mask / normalizer
