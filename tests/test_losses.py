"""DePO's loss functions against values worked out by hand (docs/design.md, "The method")."""

import math

import pytest
import torch

from depo_trl.losses import (
    accumulated_token_normalizer,
    conditional_kd_loss,
    importance_clip_mask,
    importance_log_weights,
    importance_weighted_loss,
    importance_weighted_terms,
    iw_token_weights,
    kd_gradient_surrogate,
    kd_token_weights,
)


def kd_inputs():
    long_logps = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    short_logps = torch.tensor([[-0.5, -1.0, -9.0], [-1.0, -1.0, -1.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    return long_logps, short_logps, mask


def test_kd_loss_averages_the_gap_over_tokens_of_correct_rollouts():
    long_logps, short_logps, mask = kd_inputs()
    loss = conditional_kd_loss(long_logps, short_logps, kd_token_weights(mask, torch.tensor([1.0, 0.0]), 1.0, 2))
    # Row 0 passes; its two unmasked gaps are -0.5 - (-1.0) = 0.5 and -1.0 - (-2.0) = 1.0.
    assert loss.item() == pytest.approx((0.5 + 1.0) / 2)
    loss.backward()
    expected_grad = torch.tensor([[-0.5, -0.5, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(long_logps.grad, expected_grad)
    assert short_logps.grad is None  # the short-context teacher is frozen


def test_kd_loss_uses_the_given_normalizer_and_threshold():
    long_logps, short_logps, mask = kd_inputs()
    weights = kd_token_weights(mask, torch.tensor([0.7, 0.9]), 0.8, normalizer=10)
    loss = conditional_kd_loss(long_logps, short_logps, weights)
    # Only row 1 passes 0.8: three gaps of -1.0 - (-0.5) = -0.5, summed, over 10.
    assert loss.item() == pytest.approx(-1.5 / 10)


def test_kd_gradient_surrogate_is_zero_in_value_with_the_gradient_of_kd():
    long_logps, short_logps, mask = kd_inputs()
    weights = kd_token_weights(mask, torch.tensor([1.0, 1.0]), 1.0, normalizer=4.0)
    surrogate = kd_gradient_surrogate(long_logps, weights)
    assert surrogate.item() == 0.0
    surrogate.backward()
    torch.testing.assert_close(long_logps.grad, -weights)
    reference = long_logps.detach().clone().requires_grad_()
    conditional_kd_loss(reference, short_logps, weights).backward()
    torch.testing.assert_close(long_logps.grad, reference.grad)


@pytest.mark.parametrize("rewards", [[0.0, 0.5], [float("nan"), 0.0]])
def test_kd_loss_is_exactly_zero_without_correct_rollouts(rewards):
    long_logps, short_logps, mask = kd_inputs()
    loss = conditional_kd_loss(long_logps, short_logps, kd_token_weights(mask, torch.tensor(rewards), 1.0, 1.0))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(long_logps.grad, torch.zeros_like(long_logps))


def test_kd_loss_ignores_non_finite_values_on_masked_tokens():
    long_logps, short_logps, mask = kd_inputs()
    long_logps = long_logps.detach().clone()
    long_logps[0, 2] = float("-inf")
    loss = conditional_kd_loss(long_logps, short_logps, kd_token_weights(mask, torch.tensor([1.0, 0.0]), 1.0, 2))
    assert loss.item() == pytest.approx(0.75)


RATIOS = [[1.5, 0.5, 1.1], [0.7, 1.3, 1.0]]
IW_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
ADVANTAGES = torch.tensor([1.0, -2.0])


def iw_inputs():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.2, -3.0]])
    long_logps = (old + torch.log(torch.tensor(RATIOS))).requires_grad_(True)
    return long_logps, old


def test_iw_token_level_grpo_reduction_with_clipping_on_both_sides():
    long_logps, old = iw_inputs()
    loss = importance_weighted_loss(long_logps, old, ADVANTAGES, IW_MASK, iw_token_weights(IW_MASK, "grpo"), 0.2, 0.2)
    # Row 0, A=+1: ratio 1.5 clips at 1.2, 0.5 stays (below 0.8 but the advantage is positive), 1.1 stays.
    row0 = -(min(1.5, 1.2) + min(0.5, 0.8) + min(1.1, 1.2)) / 3
    # Row 1, A=-2: min(0.7 * -2, 0.8 * -2) = -1.6 (clipped low); min(1.3 * -2, 1.2 * -2) = -2.6 (unclipped).
    row1 = (1.6 + 2.6) / 2
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    loss.backward()
    # d/dlogp of -w*A is -A*w where the clip does not bind, 0 where it does; grpo weights 1/(tokens*rows).
    expected = torch.tensor([[0.0, -0.5 / 6, -1.1 / 6], [0.0, 2.6 / 4, 0.0]])
    torch.testing.assert_close(long_logps.grad, expected)


@pytest.mark.parametrize("loss_type", ["dapo", "bnpo"])
def test_iw_token_sum_reduction(loss_type):
    long_logps, old = iw_inputs()
    token_sum = -(1.2 + 0.5 + 1.1) + (1.6 + 2.6)
    loss = importance_weighted_loss(long_logps, old, ADVANTAGES, IW_MASK, iw_token_weights(IW_MASK, loss_type))
    assert loss.item() == pytest.approx(token_sum / 5, rel=1e-6)
    weights = iw_token_weights(IW_MASK, loss_type, normalizer=7.0)
    loss = importance_weighted_loss(long_logps, old, ADVANTAGES, IW_MASK, weights)
    assert loss.item() == pytest.approx(token_sum / 7, rel=1e-6)


def test_iw_sequence_level_uses_the_geometric_mean_ratio():
    long_logps, old = iw_inputs()
    weights = iw_token_weights(IW_MASK, "grpo")
    loss = importance_weighted_loss(long_logps, old, ADVANTAGES, IW_MASK, weights, 0.01, 0.01, "sequence")
    ratio0 = (1.5 * 0.5 * 1.1) ** (1 / 3)  # 0.938, A > 0: below 1 - eps, so the clip does not bind
    ratio1 = (0.7 * 1.3) ** (1 / 2)  # 0.954, A < 0: clipped to 0.99
    expected = (-min(ratio0 * 1.0, 0.99 * 1.0) + -min(ratio1 * -2.0, 0.99 * -2.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # Row 0: d(-s*A)/dlogp_t = -A * s / n_tokens, then the mean over 2 rows. Row 1 is clipped: no gradient.
    expected_grad = torch.tensor([[-ratio0 / 3 / 2] * 3, [0.0, 0.0, 0.0]])
    torch.testing.assert_close(long_logps.grad, expected_grad)


def test_iw_delta_caps_the_unclipped_ratio_like_trl_two_sided_clipping():
    long_logps, old = iw_inputs()
    terms = importance_weighted_terms(long_logps, old, ADVANTAGES, IW_MASK, 0.2, 0.2, "token", delta=1.25)
    # Row 1, A=-2: ratio 1.3 is capped at delta 1.25: -min(1.25 * -2, 1.2 * -2) = 2.5 instead of 2.6. Row 0, A=+1:
    # the clip at 1.2 binds before the cap does.
    torch.testing.assert_close(terms[1, 1], torch.tensor(2.5))
    torch.testing.assert_close(terms[0], torch.tensor([-1.2, -0.5, -1.1]))


def test_iw_zero_advantages_give_zero_loss_and_no_nan():
    long_logps, old = iw_inputs()
    loss = importance_weighted_loss(long_logps, old, torch.zeros(2), IW_MASK, iw_token_weights(IW_MASK, "dapo"))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(long_logps.grad, torch.zeros_like(long_logps))


def test_importance_weights_and_clip_mask():
    long_logps, old = iw_inputs()
    token_weights = importance_log_weights(long_logps, old, IW_MASK, "token")
    torch.testing.assert_close(token_weights.exp(), torch.tensor(RATIOS))
    sequence_weights = importance_log_weights(long_logps, old, IW_MASK, "sequence")
    assert sequence_weights.shape == (2, 1)
    assert sequence_weights[1, 0].item() == pytest.approx(math.log(0.7 * 1.3) / 2, rel=1e-6)
    clipped = importance_clip_mask(token_weights, ADVANTAGES, 0.2, 0.2)
    assert clipped.tolist() == [[True, False, False], [True, False, False]]


def test_bad_arguments_fail_clearly():
    long_logps, old = iw_inputs()
    with pytest.raises(ValueError, match="loss_type"):
        iw_token_weights(IW_MASK, "cispo")
    with pytest.raises(ValueError, match="importance sampling level"):
        importance_weighted_loss(
            long_logps, old, ADVANTAGES, IW_MASK, iw_token_weights(IW_MASK, "dapo"), level="segment"
        )


def test_iw_correction_scales_each_term():
    long_logps, old = iw_inputs()
    weights = iw_token_weights(IW_MASK, "dapo")
    plain = importance_weighted_loss(long_logps, old, ADVANTAGES, IW_MASK, weights)
    # Row 1 dropped (an off-policy mask), row 0 halved (an importance-sampling ratio)
    correction = torch.tensor([[0.5], [0.0]])
    corrected = importance_weighted_loss(long_logps, old, ADVANTAGES, IW_MASK, weights, correction=correction)
    row0 = importance_weighted_loss(long_logps, old, ADVANTAGES, IW_MASK, weights * torch.tensor([[1.0], [0.0]]))
    assert corrected.item() == pytest.approx(0.5 * row0.item(), rel=1e-6)
    assert plain.item() != pytest.approx(corrected.item())


def test_accumulated_normalizer_makes_the_batch_mean():
    # 40 tokens in the generation batch, 2 processes, 8 micro-batches per generation, 4 per optimizer step: each
    # optimizer step covers 20 tokens. Each process divides its token sum by n and the gradients are averaged over
    # the processes, (sum_0 + sum_1) / (2 n), which is the step's mean, sum / 20, for n = 10.
    normalizer = accumulated_token_normalizer(torch.tensor(40.0), 2, 4, 8)
    assert normalizer.item() == pytest.approx(10.0)
