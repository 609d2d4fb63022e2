"""rlft.rl.core: response masks, KL estimators, per-token rewards and masked whitening."""

import math

import pytest
import torch

from rlft.rl.core import (
    kl_penalty,
    last_token_index,
    masked_mean,
    masked_var,
    masked_whiten,
    per_token_rewards,
    response_mask_from_tokens,
)

EOS, PAD = 2, 0

# --- response mask ----------------------------------------------------------------------------


def test_response_mask_keeps_the_first_eos_and_drops_what_follows():
    responses = torch.tensor(
        [
            [5, 6, EOS, PAD, PAD],  # ended, padded
            [5, EOS, 7, EOS, 8],  # tokens after the first EOS are not part of the response
            [5, 6, 7, 8, 9],  # cut at the length limit: all real, no EOS
            [EOS, EOS, EOS, EOS, EOS],  # pad == EOS: the first one stays real
        ]
    )

    mask, ended = response_mask_from_tokens(responses, eos_token_id=EOS)

    assert mask.dtype == torch.bool
    assert mask.int().tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert ended.tolist() == [True, True, False, True]


def test_response_mask_with_several_eos_ids():
    responses = torch.tensor([[5, 9, 2, 2], [5, 2, 9, 9]])
    mask, ended = response_mask_from_tokens(responses, eos_token_id=[9, 2])
    assert mask.int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0]]
    assert ended.tolist() == [True, True]


# --- KL estimators ----------------------------------------------------------------------------


def test_kl_estimators_on_hand_values():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.0, -0.5]], dtype=torch.float64)
    log_r = ref - logp  # [-0.5, 1.0, 0.0]

    torch.testing.assert_close(
        kl_penalty(logp, ref, kind="k1"), torch.tensor([[0.5, -1.0, 0.0]], dtype=torch.float64)
    )
    k3 = [math.exp(x) - 1 - x for x in [-0.5, 1.0, 0.0]]  # exp(ref - logp) - 1 - (ref - logp)
    torch.testing.assert_close(kl_penalty(logp, ref, kind="k3"), torch.tensor([k3], dtype=torch.float64))
    torch.testing.assert_close(kl_penalty(logp, ref, kind="abs"), log_r.abs())
    torch.testing.assert_close(kl_penalty(logp, ref, kind="mse"), 0.5 * log_r**2)
    assert kl_penalty(logp, ref).tolist() == kl_penalty(logp, ref, kind="k1").tolist()  # k1 by default


def test_k3_is_never_negative_and_clamped():
    logp = torch.tensor([[0.0, 0.0, -50.0]])
    ref = torch.tensor([[-3.0, 3.0, 0.0]])
    k3 = kl_penalty(logp, ref, kind="k3")
    assert (k3 >= 0).all() and torch.isfinite(k3).all()
    assert k3[0, 2].item() == pytest.approx(math.exp(10.0) - 1 - 10.0)  # log-ratio 50 clamped to 10


def test_unknown_kl_estimator_lists_the_choices():
    with pytest.raises(ValueError, match="k1, k3, abs, mse"):
        kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), kind="k2")


# --- per-token rewards ------------------------------------------------------------------------


def test_score_on_the_last_real_token_kl_penalty_everywhere_real():
    scores = torch.tensor([1.0, -2.0, 0.5])
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 1.0, 1.0], [0.5, -0.5, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])

    rewards = per_token_rewards(scores, kl, mask, beta=0.1)

    expected = torch.tensor(
        [
            [-0.01, -0.02, -0.03, -0.04 + 1.0],
            [-0.1, -0.1 - 2.0, 0.0, 0.0],
            [-0.05 + 0.5, 0.0, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(rewards, expected)
    assert last_token_index(mask).tolist() == [3, 1, 0]


def test_missing_eos_penalty_is_subtracted_from_the_score_of_unfinished_responses():
    scores = torch.tensor([1.0, 1.0])
    kl = torch.zeros(2, 3)
    mask = torch.ones(2, 3)
    ended = torch.tensor([True, False])

    rewards = per_token_rewards(scores, kl, mask, beta=0.05, missing_eos_penalty=1.5, ended_with_eos=ended)

    assert rewards.tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, -0.5]]
    with pytest.raises(ValueError, match="ended_with_eos"):
        per_token_rewards(scores, kl, mask, beta=0.05, missing_eos_penalty=1.0)
    with pytest.raises(ValueError, match=">= 0"):
        per_token_rewards(scores, kl, mask, beta=0.05, missing_eos_penalty=-1.0, ended_with_eos=ended)


def test_rewards_need_a_real_token_per_rollout():
    with pytest.raises(ValueError, match=r"rollouts \[1\]"):
        per_token_rewards(torch.zeros(2), torch.zeros(2, 2), torch.tensor([[1, 0], [0, 0]]), beta=0.1)


# --- masked statistics and whitening ----------------------------------------------------------


def test_masked_mean_and_var_ignore_padding():
    x = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("inf"), 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, mask).item() == 2.0
    assert masked_mean(x, mask, dim=1).tolist() == [1.5, 3.0]
    assert masked_var(x, mask).item() == pytest.approx(2 / 3)  # biased: ((1-2)^2 + 0 + (3-2)^2) / 3
    assert masked_var(x, mask, unbiased=True).item() == pytest.approx(1.0)
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0  # nothing real: 0, not NaN


def test_whitening_gives_mean_zero_variance_one_on_real_positions_and_leaves_padding():
    generator = torch.Generator().manual_seed(0)
    x = 3.0 + 5.0 * torch.randn(8, 10, generator=generator, dtype=torch.float64)
    mask = torch.arange(10)[None, :] < torch.randint(1, 11, (8, 1), generator=generator)

    whitened = masked_whiten(x, mask)

    assert masked_mean(whitened, mask).item() == pytest.approx(0.0, abs=1e-9)
    assert masked_var(whitened, mask).item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(whitened[~mask], x[~mask])


def test_reward_whitening_keeps_the_mean():
    generator = torch.Generator().manual_seed(1)
    x = 3.0 + 5.0 * torch.randn(8, 10, generator=generator, dtype=torch.float64)
    mask = torch.rand(8, 10, generator=generator) < 0.7

    whitened = masked_whiten(x, mask, shift_mean=False)

    assert masked_mean(whitened, mask).item() == pytest.approx(masked_mean(x, mask).item())
    assert masked_var(whitened, mask).item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(whitened[~mask], x[~mask])
