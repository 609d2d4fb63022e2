"""rlft/report.py's pure pieces: the reward-against-KL frontier."""

from rlft.report import pareto_front


def test_the_frontier_keeps_the_best_reward_for_each_kl_budget():
    points = [(0.5, 0.6), (0.1, 0.2), (0.3, 0.2), (0.2, 0.5), (0.9, 0.55), (0.1, 0.1), (1.0, 0.9)]
    # (0.3, 0.2) is beaten by (0.2, 0.5); (0.9, 0.55) by (0.5, 0.6); (0.1, 0.1) by (0.1, 0.2)
    assert pareto_front(points) == [1, 3, 0, 6]
    assert pareto_front([(0.2, 0.4), (0.2, 0.4)]) == [0]  # a tie is one point of the frontier
    assert pareto_front([]) == []
