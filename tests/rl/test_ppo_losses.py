"""rlft.rl.core losses and log-prob helpers on hand-made tensors."""

import math

import pytest
import torch

from rlft.rl.core import (
    entropy_from_logits,
    explained_variance,
    logprobs_from_logits,
    policy_loss,
    value_loss,
)

# --- policy loss ------------------------------------------------------------------------------


def policy_case():
    """Five real tokens (clip 0.2) and one padding token with an absurd log-ratio.

    token  A    ratio   -A*ratio   -A*clip(ratio)   max     clipping active?
    0      +1   1.1     -1.1       -1.1             -1.1    no (inside the range)
    1      +1   1.5     -1.5       -1.2             -1.2    yes
    2      -1   0.5      0.5        0.8              0.8    yes
    3      -1   1.5      1.5        1.2              1.5    no (max keeps the unclipped term)
    4      +1   0.5     -0.5       -0.8             -0.5    no
    loss = (-1.1 - 1.2 + 0.8 + 1.5 - 0.5) / 5 = -0.1; clipfrac = 2 / 5
    """
    ratios = torch.tensor([[1.1, 1.5, 0.5, 1.5, 0.5, 1.0]], dtype=torch.float64)
    old_logp = torch.full((1, 6), -2.0, dtype=torch.float64)
    logp = old_logp + ratios.log()
    logp[0, 5] = 1000.0  # padding: exp(1000 + 2) would be inf
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    return logp, old_logp, advantages, mask, ratios


def test_policy_loss_inside_and_outside_the_clip_range():
    logp, old_logp, advantages, mask, ratios = policy_case()
    logp.requires_grad_(True)

    loss, stats = policy_loss(logp, old_logp, advantages, mask, clip=0.2)

    torch.testing.assert_close(loss, torch.tensor(-0.1, dtype=torch.float64))
    torch.testing.assert_close(stats["clipfrac"], torch.tensor(0.4, dtype=torch.float64))
    expected_kl = 0.5 * sum(math.log(r) ** 2 for r in [1.1, 1.5, 0.5, 1.5, 0.5]) / 5
    torch.testing.assert_close(stats["approx_kl"].item(), expected_kl)
    assert not stats["clipfrac"].requires_grad

    loss.backward()
    # d(-A * ratio)/d logp = -A * ratio where the unclipped term is taken, 0 where clipping is active;
    # the mean divides by the 5 real tokens; padding gets no gradient (and no NaN)
    expected = torch.tensor([[-1.1, 0.0, 0.0, 1.5, -0.5, 0.0]], dtype=torch.float64) / 5
    torch.testing.assert_close(logp.grad, expected)


def test_policy_loss_at_ratio_one_is_minus_the_mean_advantage():
    advantages = torch.tensor([[0.5, -1.5, 2.0], [1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    logp = torch.randn(2, 3)

    loss, stats = policy_loss(logp, logp.clone(), advantages, mask, clip=0.2)

    torch.testing.assert_close(loss, torch.tensor(-(0.5 - 1.5 + 2.0 + 1.0) / 4))
    assert stats["clipfrac"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0


def test_policy_loss_rejects_a_non_positive_clip():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="clip"):
        policy_loss(x, x, x, torch.ones(1, 2), clip=0.0)


# --- value loss -------------------------------------------------------------------------------


def value_case():
    """Three real tokens (old values 0, clip 0.2) and one padding token.

    token  v     R    (v - R)^2   clipped v   (clipped - R)^2   max    clipped error larger?
    0      0.1   1    0.81        0.1         0.81              0.81   no (inside the range)
    1      0.5   1    0.25        0.2         0.64              0.64   yes
    2      0.5   0    0.25        0.2         0.04              0.25   no
    loss = 0.5 * (0.81 + 0.64 + 0.25) / 3; vf_clipfrac = 1 / 3
    """
    values = torch.tensor([[0.1, 0.5, 0.5, 7.0]], dtype=torch.float64)
    old_values = torch.zeros(1, 4, dtype=torch.float64)
    returns = torch.tensor([[1.0, 1.0, 0.0, -7.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    return values, old_values, returns, mask


def test_value_loss_clipped_by_hand():
    values, old_values, returns, mask = value_case()

    loss, stats = value_loss(values, old_values, returns, mask, clip=0.2)

    torch.testing.assert_close(loss.item(), 0.5 * (0.81 + 0.64 + 0.25) / 3)
    torch.testing.assert_close(stats["vf_clipfrac"].item(), 1 / 3)


def test_value_loss_without_clipping_is_half_the_squared_error():
    values, old_values, returns, mask = value_case()

    loss, stats = value_loss(values, old_values, returns, mask, clip=None)

    torch.testing.assert_close(loss.item(), 0.5 * (0.81 + 0.25 + 0.25) / 3)
    assert stats["vf_clipfrac"].item() == 0.0


def test_value_loss_gradient_stops_where_clipping_is_active():
    values, old_values, returns, mask = value_case()
    values.requires_grad_(True)

    loss, _ = value_loss(values, old_values, returns, mask, clip=0.2)
    loss.backward()

    # d/dv 0.5 * (v - R)^2 / 3 = (v - R) / 3 where the unclipped error is kept; 0 on token 1 and padding
    expected = torch.tensor([[(0.1 - 1.0) / 3, 0.0, 0.5 / 3, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(values.grad, expected)


# --- log-probs, entropy, explained variance ---------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_logprobs_equal_a_naive_log_softmax_gather(temperature):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=generator, requires_grad=True)
    tokens = torch.randint(0, 11, (3, 5), generator=generator)

    logp = logprobs_from_logits(logits, tokens, temperature=temperature)
    naive = torch.log_softmax(logits / temperature, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)

    assert logp.shape == (3, 5)
    torch.testing.assert_close(logp, naive)
    (grad,) = torch.autograd.grad(logp.sum(), logits)
    (naive_grad,) = torch.autograd.grad(naive.sum(), logits)
    torch.testing.assert_close(grad, naive_grad)


def test_logprobs_are_finite_for_huge_logits_and_float32_for_bf16():
    # exp(1e4) overflows float32; the max-shifted logsumexp does not (float32 keeps ~1e-3 at 1e4)
    logits = torch.tensor([[[1e4, 1e4 - 1.0, -1e4]]])
    logp = logprobs_from_logits(logits, torch.tensor([[1]]))
    expected = torch.tensor([[-1.0 - math.log1p(math.exp(-1.0))]])
    torch.testing.assert_close(logp, expected, atol=1e-3, rtol=0)
    logp = logprobs_from_logits(logits.double(), torch.tensor([[1]]))
    torch.testing.assert_close(logp, expected.double())

    low = torch.randn(2, 3, 7).to(torch.bfloat16)
    tokens = torch.randint(0, 7, (2, 3))
    logp = logprobs_from_logits(low, tokens)
    assert logp.dtype == torch.float32
    naive = torch.log_softmax(low.float(), dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(logp, naive)


def test_logprobs_reject_zero_temperature():
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_logits(torch.zeros(1, 1, 3), torch.zeros(1, 1, dtype=torch.long), temperature=0.0)


def test_entropy_uniform_and_one_hot():
    vocab = 8
    logits = torch.zeros(1, 3, vocab)
    logits[0, 1] = torch.tensor([100.0] + [0.0] * (vocab - 1))  # (nearly) one-hot: entropy ~ 0
    logits[0, 2] = float("nan")  # padding
    mask = torch.tensor([[1, 1, 0]])

    entropy = entropy_from_logits(logits, mask)

    torch.testing.assert_close(entropy, torch.tensor((math.log(vocab) + 0.0) / 2), atol=1e-6, rtol=0)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert explained_variance(returns.clone(), returns, mask).item() == 1.0
    # predicting the mean of the real returns (3) explains nothing
    mean_only = torch.full_like(returns, 3.0)
    assert explained_variance(mean_only, returns, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert explained_variance(-returns, returns, mask).item() < 0
    assert math.isnan(explained_variance(returns, torch.ones_like(returns), mask).item())
