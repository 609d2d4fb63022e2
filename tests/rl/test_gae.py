"""rlft.rl.core.gae: hand-computed trajectories and a plain Python reference on padded batches."""

import pytest
import torch

from rlft.rl.core import gae


def reference_gae(rewards, values, mask, *, gamma, lam):
    """GAE one rollout at a time in plain Python, over the real tokens only (V after the last = 0)."""
    advantages = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        real = [t for t in range(rewards.shape[1]) if mask[b, t]]
        next_value, next_advantage = 0.0, 0.0
        for t in reversed(real):
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            next_advantage = delta + gamma * lam * next_advantage
            next_value = values[b, t].item()
            advantages[b, t] = next_advantage
    returns = torch.where(mask, advantages + values, 0.0)
    return advantages, returns


def huang_reference_loop(rewards, values, mask, *, gamma, lam):
    """Huang et al.'s reference loop (summarize_from_feedback_details), on tensors zeroed on padding."""
    rewards, values = rewards * mask, values * mask
    last, reversed_advantages = 0.0, []
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_values = values[:, t + 1] if t < length - 1 else 0.0
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last = delta + gamma * lam * last
        reversed_advantages.append(last)
    advantages = torch.stack(reversed_advantages[::-1], dim=1)
    return advantages, advantages + values


def test_three_step_trajectory_by_hand():
    # One rollout, A = 4: three real tokens, then one padding position holding garbage (99).
    # gamma = lam = 0.5, V after the last real token = 0.
    #   delta_t = r_t + gamma * V_{t+1} - V_t        A_t = delta_t + gamma * lam * A_{t+1}
    #   delta_2 = 2 + 0.5 * 0 - 1 = 1                A_2 = 1
    #   delta_1 = 0 + 0.5 * 1 - 2 = -1.5             A_1 = -1.5 + 0.25 * 1 = -1.25
    #   delta_0 = 1 + 0.5 * 2 - 1 = 1                A_0 = 1 + 0.25 * (-1.25) = 0.6875
    #   returns R_t = A_t + V_t = [1.6875, 0.75, 2]
    rewards = torch.tensor([[1.0, 0.0, 2.0, 99.0]])
    values = torch.tensor([[1.0, 2.0, 1.0, 99.0]])
    mask = torch.tensor([[True, True, True, False]])

    advantages, returns = gae(rewards, values, mask, gamma=0.5, lam=0.5)

    assert advantages.tolist() == [[0.6875, -1.25, 1.0, 0.0]]
    assert returns.tolist() == [[1.6875, 0.75, 2.0, 0.0]]


def test_gamma_lam_one_gives_reward_to_go_and_lam_zero_gives_td_errors():
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[1.0, 2.0, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)

    # gamma = lam = 1: returns are the plain sums of future rewards [3, 2, 2]; A = R - V.
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert returns.tolist() == [[3.0, 2.0, 2.0]]
    assert advantages.tolist() == [[2.0, 0.0, 1.0]]

    # lam = 0: A_t = delta_t = r_t + gamma V_{t+1} - V_t = [1 + 2 - 1, 0 + 1 - 2, 2 - 1].
    advantages, _ = gae(rewards, values, mask, gamma=1.0, lam=0.0)
    assert advantages.tolist() == [[2.0, -1.0, 1.0]]


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0)])
def test_matches_python_reference_on_padded_batches(gamma, lam):
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(6, 9, generator=generator, dtype=torch.float64)
    values = torch.randn(6, 9, generator=generator, dtype=torch.float64)
    lengths = torch.tensor([1, 9, 4, 7, 2, 9])
    mask = torch.arange(9)[None, :] < lengths[:, None]  # (B, A): real tokens, then padding

    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)

    expected_advantages, expected_returns = reference_gae(rewards, values, mask, gamma=gamma, lam=lam)
    torch.testing.assert_close(advantages, expected_advantages)
    torch.testing.assert_close(returns, expected_returns)
    # and Huang et al.'s loop over zero-padded tensors gives the same on real tokens
    huang_advantages, huang_returns = huang_reference_loop(rewards, values, mask, gamma=gamma, lam=lam)
    torch.testing.assert_close(advantages[mask], huang_advantages[mask])
    torch.testing.assert_close(returns[mask], huang_returns[mask])


def test_masked_positions_inside_a_response_are_skipped():
    generator = torch.Generator().manual_seed(1)
    rewards = torch.randn(4, 8, generator=generator, dtype=torch.float64)
    values = torch.randn(4, 8, generator=generator, dtype=torch.float64)
    mask = torch.rand(4, 8, generator=generator) < 0.6
    mask[:, 0] = True

    advantages, returns = gae(rewards, values, mask, gamma=0.95, lam=0.9)

    expected_advantages, expected_returns = reference_gae(rewards, values, mask, gamma=0.95, lam=0.9)
    torch.testing.assert_close(advantages, expected_advantages)
    torch.testing.assert_close(returns, expected_returns)


def test_padding_values_never_leak():
    rewards = torch.tensor([[0.5, 1.0, float("nan"), float("inf")]])
    values = torch.tensor([[0.2, 0.3, float("nan"), -float("inf")]])
    mask = torch.tensor([[1, 1, 0, 0]])  # 0/1 ints work as a mask too

    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)

    # reward-to-go [1.5, 1.0] minus values [0.2, 0.3]
    torch.testing.assert_close(advantages, torch.tensor([[1.3, 0.7, 0.0, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[1.5, 1.0, 0.0, 0.0]]))


def test_targets_carry_no_gradient():
    rewards = torch.randn(2, 3, requires_grad=True)
    values = torch.randn(2, 3, requires_grad=True)
    advantages, returns = gae(rewards, values, torch.ones(2, 3), gamma=1.0, lam=0.95)
    assert not advantages.requires_grad and not returns.requires_grad
