"""DePO's distillation terms as pure tensor functions (docs/design.md, "The method"): the maths the trainer calls.

Both losses are weighted token sums, `sum_t weights_t * term_t`. The weights carry every normalisation (over distilled
tokens, over rows, over accumulation steps and processes), so the same rollouts can be regrouped across micro-batches
(the long pass runs once per optimizer window) without changing the gradient.

Shapes: per-token log-probabilities, masks and weights are `(B, T)` (rows = rollouts, T = completion tokens);
per-rollout values (rewards, advantages) are `(B,)`.
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


def kd_token_weights(
    completion_mask: torch.Tensor,
    rewards: torch.Tensor,
    threshold: float,
    normalizer: float | torch.Tensor,
) -> torch.Tensor:
    """Weights of L_KD: `1 / normalizer` on the distilled tokens ([`distillation_mask`]), 0 elsewhere; with the number
    of distilled tokens as `normalizer`, the mean over them, and a batch without a correct rollout weighs nothing."""
    return distillation_mask(completion_mask, rewards, threshold).float() / normalizer


def _weighted_sum(terms: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # `where` rather than a product: a non-finite value on a token of weight 0 must not leak into the sum
    return torch.where(weights > 0, terms * weights, torch.zeros_like(terms)).sum()


def conditional_kd_loss(long_logps: torch.Tensor, short_logps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """DePO's conditional distillation loss L_KD (paper Eq. 10 + 12): `sum_t weights_t * (sg(short_t) - long_t)`.

    The short-context log-probabilities are a frozen teacher: the gradient is `-weights * grad long_logps`. With
    [`kd_token_weights`], the value is the mean gap over the tokens of rollouts whose reward passed the threshold.
    """
    return _weighted_sum(short_logps.detach() - long_logps, weights)


def kd_gradient_surrogate(long_logps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The long pass's share of L_KD: `sum_t weights_t * (sg(long_t) - long_t)`, zero in value, with L_KD's gradient
    `-weights * grad long_logps`.

    L_KD's value needs the short-context teacher, which each micro-batch's proxy pass computes later on; the long pass
    runs before it, once per optimizer window, and contributes only the gradient. [`conditional_kd_loss`] with the
    teacher then gives each micro-batch's value.
    """
    return conditional_kd_loss(long_logps, long_logps, weights)


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


def iw_token_weights(
    completion_mask: torch.Tensor, loss_type: IWReduction, normalizer: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Weights of TRL's reductions, `(B, T)`: summing `weights * per_token_loss` gives the loss.

    `"grpo"`: `1 / (row length * rows)`; `"bnpo"` / `"dapo"`: `1 / normalizer` (default: the number of masked tokens).
    """
    if loss_type not in IW_REDUCTIONS:
        raise ValueError(f"Unknown loss_type {loss_type!r} for DePO-IW: use one of {IW_REDUCTIONS}.")
    mask = completion_mask.float()
    if loss_type == "grpo":
        return mask / mask.sum(-1, keepdim=True).clamp(min=1.0) / max(mask.size(0), 1)
    if normalizer is None:
        normalizer = mask.sum().clamp(min=1.0)
    return mask / normalizer


def importance_weighted_loss(
    long_logps: torch.Tensor,
    old_short_logps: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    weights: torch.Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    level: IWLevel = "token",
    delta: float | None = None,
    correction: torch.Tensor | None = None,
) -> torch.Tensor:
    """DePO-IW loss (paper Eq. 13): off-policy clipped RL on the long context with short-context rollouts,
    `sum_t weights_t * correction_t * term_t` with the terms of [`importance_weighted_terms`].

    `weights` normalise like the proxy's `loss_type` ([`iw_token_weights`]); `correction` is TRL's correction for
    rollouts that vLLM sampled (importance-sampling ratio times off-policy mask, `(B, T)` or `(B, 1)`), if any.
    """
    terms = importance_weighted_terms(
        long_logps, old_short_logps, advantages, completion_mask, epsilon_low, epsilon_high, level, delta
    )
    if correction is not None:
        terms = terms * correction
    return _weighted_sum(terms, weights)


def accumulated_token_normalizer(
    tokens_in_batch: torch.Tensor, num_processes: int, accumulation_steps: int, steps_per_generation: int
) -> torch.Tensor:
    """Divisor of a token sum such that, averaged over processes and summed over the accumulation steps of every
    optimizer step of a generation batch, the sums make the mean over the batch's `tokens_in_batch` tokens (TRL's
    DAPO normalisation): `tokens / processes * accumulation_steps / steps_per_generation`."""
    return tokens_in_batch.clamp(min=1.0) / num_processes * accumulation_steps / steps_per_generation
