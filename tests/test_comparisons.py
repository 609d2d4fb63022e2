"""rlft/comparisons.py on crafted and synthetic numbers: win rate and its interval, length control, KL, judge order."""

import numpy as np
import pytest

from rlft.comparisons import (
    both_orders,
    calibration,
    length_controlled_win_rate,
    length_statistics,
    outcomes,
    sequence_kl,
    win_rate,
)


def test_win_rate_counts_wins_ties_and_losses():
    got = win_rate([3.0, 1.0, 2.0, 2.0, 0.55], [1.0, 2.0, 2.0, 0.0, 0.5], tie_tolerance=0.1)
    assert (got.wins, got.ties, got.losses, got.n) == (2, 2, 1, 5)  # 0.55 vs 0.5 is within the tolerance
    assert got.rate == pytest.approx((2 + 2 / 2) / 5)
    assert got.low <= got.rate <= got.high
    assert win_rate([1.0] * 5, [0.0] * 5).as_dict() | {"confidence": 0} == {
        "wins": 5,
        "ties": 0,
        "losses": 0,
        "rate": 1.0,
        "low": 1.0,
        "high": 1.0,
        "confidence": 0,
    }
    with pytest.raises(ValueError, match="same length"):
        outcomes([1.0, 2.0], [1.0])


def test_bootstrap_interval_covers_the_true_rate_about_as_often_as_it_says():
    rng = np.random.default_rng(0)
    truth, covered, trials = 0.7, 0, 200
    for trial in range(trials):
        won = rng.random(300) < truth  # a beats b on each prompt with probability 0.7
        got = win_rate(won.astype(float), np.full(300, 0.5), resamples=500, seed=trial)
        covered += got.low <= truth <= got.high
    assert 0.90 <= covered / trials <= 0.99  # a 95% interval


def test_length_control_removes_a_pure_length_bias():
    rng = np.random.default_rng(1)
    len_b = rng.integers(20, 80, size=2000).astype(float)
    len_a = len_b + rng.normal(25, 30, size=2000)  # a's answers are mostly longer
    won = (len_a - len_b + rng.normal(0, 10, size=2000) > 0).astype(float)  # the judge only likes length
    assert won.mean() > 0.75
    assert length_controlled_win_rate(won, len_a, len_b) == pytest.approx(0.5, abs=0.06)


def test_length_control_keeps_a_real_preference():
    rng = np.random.default_rng(2)
    len_a, len_b = rng.integers(20, 80, size=2000), rng.integers(20, 80, size=2000)
    won = (rng.random(2000) < 0.8).astype(float)  # better regardless of length
    assert length_controlled_win_rate(won, len_a, len_b) == pytest.approx(0.8, abs=0.03)
    assert length_controlled_win_rate([1.0, 0.0, 0.5], [3, 3, 3], [3, 3, 3]) == pytest.approx(0.5, abs=1e-3)


def test_sequence_kl_is_zero_against_itself_and_has_a_standard_error():
    logps = [-3.0, -5.5, -1.25]
    assert sequence_kl(logps, logps).mean == 0.0
    got = sequence_kl([-1.0, -2.0, -3.0, -4.0], [-2.0, -2.0, -5.0, -4.0])  # log-ratios 1, 0, 2, 0
    assert got.mean == pytest.approx(0.75)
    assert got.stderr == pytest.approx(np.std([1, 0, 2, 0], ddof=1) / 2)
    assert got.n == 4


def test_a_position_biased_judge_gives_ties_when_asked_both_ways():
    # The judge always picks whatever it is shown first: in the first order that is a (0), in the
    # swapped order that is b (0, by position).
    assert both_orders([0, 0, 0], [0, 0, 0]).tolist() == [0.5, 0.5, 0.5]
    # A judge that really prefers a picks it in both orders; one that prefers b, b in both.
    assert both_orders([0, 1], [1, 0]).tolist() == [1.0, 0.0]


def test_calibration_by_hand():
    ln3, ln19 = np.log(3), np.log(19)  # σ = 0.75 and 0.95
    got = calibration([ln3, ln3, ln3, -ln3, ln19, ln19, -ln19, 0.0], bins=5)
    # [0.5, 0.6): the tie, sure 0.5 and half right; [0.7, 0.8): 3 of 4 right at 0.75; [0.9, 1]: 2 of 3 at 0.95
    assert [(b["low"], b["n"]) for b in got.bins] == [
        (0.5, 1),
        (pytest.approx(0.7), 4),
        (pytest.approx(0.9), 3),
    ]
    assert [b["accuracy"] for b in got.bins] == pytest.approx([0.5, 0.75, 2 / 3])
    assert [b["confidence"] for b in got.bins] == pytest.approx([0.5, 0.75, 0.95])
    assert got.ece == pytest.approx(3 / 8 * (0.95 - 2 / 3)) and got.n == 8
    assert calibration([60.0, 80.0, 1e6]).ece == pytest.approx(0.0)  # sure and right, without overflow
    assert calibration([-60.0, -80.0]).ece == pytest.approx(1.0)  # sure and wrong
    with pytest.raises(ValueError, match="one margin per held-out pair"):
        calibration([])


def test_length_statistics_count_empty_and_repeated_answers():
    answers = ["A B C", "", "   ", "x x x x", "x x x", "ab ab ab ab ab", "A B C D E F G H I J"]
    got = length_statistics(answers)
    lengths = [5, 0, 3, 7, 5, 14, 19]
    assert got["mean_length"] == pytest.approx(sum(lengths) / 7)
    assert got["median_length"] == 5
    assert got["p90_length"] == pytest.approx(np.percentile(lengths, 90))
    assert got["empty_share"] == pytest.approx(2 / 7)  # "" and whitespace only
    assert got["repeat_share"] == pytest.approx(2 / 7)  # "x x x x" and "ab ab ...": "x x x" is too short
