"""Comparing two policies on the same prompts: win rate with a bootstrap interval, its length-controlled
variant, the sequence-level KL between a policy and its reference, and the calibration of a reward
model on held-out pairs. Pure functions on numbers.

Letters: N prompts (or samples); for each, `a` is the evaluated policy's score and `b` the
baseline's (a reward model's score, a reward function's value, or a judge's verdict), and `len_a`,
`len_b` the two responses' lengths (tokens or characters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class WinRate:
    """How often `a` beats `b`. `rate` counts a tie as half a win (ties are also counted apart), and
    [low, high] is its percentile bootstrap interval over prompts (Efron & Tibshirani 1993, ch. 13)."""

    wins: int
    ties: int
    losses: int
    rate: float  # (wins + ties / 2) / n
    low: float
    high: float
    confidence: float

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def outcomes(a: Sequence[float], b: Sequence[float], *, tie_tolerance: float = 0.0) -> np.ndarray:
    """Per prompt: 1 when a > b, 0 when a < b, 0.5 when they are within `tie_tolerance`. (N,)"""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"outcomes: two score lists of the same length, got shapes {a.shape} and {b.shape}")
    diff = a - b
    return np.where(np.abs(diff) <= tie_tolerance, 0.5, (diff > 0).astype(float))


def win_rate(
    a: Sequence[float],
    b: Sequence[float],
    *,
    tie_tolerance: float = 0.0,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> WinRate:
    """`a`'s win rate against `b`, ties apart, with a `confidence` bootstrap interval (resampling prompts)."""
    won = outcomes(a, b, tie_tolerance=tie_tolerance)
    if len(won) == 0:
        raise ValueError("win_rate: no prompts to compare")
    rng = np.random.default_rng(seed)
    means = won[rng.integers(0, len(won), size=(resamples, len(won)))].mean(axis=1)  # (resamples,)
    tail = (1 - confidence) / 2
    return WinRate(
        wins=int((won == 1).sum()),
        ties=int((won == 0.5).sum()),
        losses=int((won == 0).sum()),
        rate=float(won.mean()),
        low=float(np.quantile(means, tail)),
        high=float(np.quantile(means, 1 - tail)),
        confidence=confidence,
    )


def length_controlled_win_rate(
    won: Sequence[float], len_a: Sequence[float], len_b: Sequence[float], *, iterations: int = 50
) -> float:
    """The win rate with the length difference regressed out, as AlpacaEval 2 does (Dubois et al. 2024,
    "Length-Controlled AlpacaEval", eq. 2, with one model pair): fit the logistic model

        P(a wins) = σ(θ + φ · tanh(Δ / sd(Δ)))      Δ = len_a - len_b

    to the outcomes (a tie is half a win), then report σ(θ): the win rate the model predicts when
    both answers are equally long. A judge that only prefers the longer answer gets 0.5.
    Fitted by Newton's method on the (weighted) log-likelihood; a tiny ridge keeps it finite when
    the outcomes are separable.
    """
    y = np.asarray(won, dtype=float)
    delta = np.asarray(len_a, dtype=float) - np.asarray(len_b, dtype=float)
    if not (y.shape == delta.shape) or y.ndim != 1 or len(y) == 0:
        raise ValueError("length_controlled_win_rate: outcomes and both lengths need one value per prompt")
    scale = delta.std()
    x = np.tanh(delta / scale) if scale > 0 else np.zeros_like(delta)
    features = np.stack([np.ones_like(x), x], axis=1)  # (N, 2): intercept θ, length term φ
    weights = np.zeros(2)
    ridge = 1e-3
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(features @ weights)))  # (N,)
        gradient = features.T @ (y - p) - ridge * weights
        hessian = -(features.T * (p * (1 - p))) @ features - ridge * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(1 / (1 + math.exp(-weights[0])))


@dataclass(frozen=True)
class KLEstimate:
    """Sequence-level KL(π || π_ref) in nats per response, from the policy's own samples."""

    mean: float
    stderr: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def sequence_kl(policy_logps: Sequence[float], reference_logps: Sequence[float]) -> KLEstimate:
    """KL(π || π_ref) ≈ mean over samples y ~ π(·|x) of log π(y|x) - log π_ref(y|x) (the k1 estimator,
    unbiased; Schulman 2020, "Approximating KL divergence"), with the standard error of that mean.
    Each log-prob is a whole response's (summed over its tokens)."""
    log_ratio = np.asarray(policy_logps, dtype=float) - np.asarray(reference_logps, dtype=float)
    if log_ratio.ndim != 1 or len(log_ratio) == 0:
        raise ValueError("sequence_kl: one summed log-prob per sample, for both models")
    stderr = float(log_ratio.std(ddof=1) / math.sqrt(len(log_ratio))) if len(log_ratio) > 1 else float("nan")
    return KLEstimate(mean=float(log_ratio.mean()), stderr=stderr, n=len(log_ratio))


def both_orders(first: Sequence[int], second: Sequence[int]) -> np.ndarray:
    """A pairwise judge's verdicts asked twice, answers swapped, as outcomes for answer `a`:

    `first[i]` is the answer the judge picked (0: a, 1: b) with a shown first, `second[i]` the one
    it picked with b shown first (0: b, 1: a, i.e. by position). Agreeing verdicts are a win or a
    loss; disagreeing ones (the judge followed the position, not the answer) are a tie. (N,)
    """
    first, second = np.asarray(first), np.asarray(second)
    if first.shape != second.shape:
        raise ValueError("both_orders: one verdict per prompt in each order")
    a_first = first == 0  # a won when shown first
    a_second = second == 1  # a won when shown second
    return np.where(a_first == a_second, a_first.astype(float), 0.5)


@dataclass(frozen=True)
class Calibration:
    """How well a pairwise model's probabilities match how often it is right. `ece` is the expected
    calibration error; `bins` the reliability table: per confidence bin [low, high), its pairs `n`,
    mean `confidence` and `accuracy` (empty bins left out)."""

    ece: float
    n: int
    bins: list[dict[str, float | int]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibration(margins: Sequence[float], *, bins: int = 10) -> Calibration:
    """Calibration of a Bradley-Terry reward model on held-out pairs, from each pair's margin
    r(chosen) - r(rejected): the model says P(chosen is preferred) = σ(margin).

    Top-label calibration (Guo et al. 2017, "On Calibration of Modern Neural Networks", eq. 3): each
    pair's confidence is max(σ(m), 1 - σ(m)) in [0.5, 1], and the model is right when it favours the
    chosen answer (m > 0; m = 0 counts half). The confidences are put in `bins` equal-width bins over
    [0.5, 1], and ECE = Σ_b (n_b / N) |accuracy_b - confidence_b|: 0 when a model 80% sure is right
    80% of the time.
    """
    m = np.asarray(margins, dtype=float)
    if m.ndim != 1 or len(m) == 0:
        raise ValueError("calibration: one margin per held-out pair")
    p = 0.5 * (1 + np.tanh(m / 2))  # σ(m), without overflow
    confidence = np.maximum(p, 1 - p)  # (N,)
    correct = np.where(m == 0, 0.5, (m > 0).astype(float))  # (N,)
    width = 0.5 / bins
    which = np.minimum(((confidence - 0.5) / width).astype(int), bins - 1)  # (N,) bin index
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        if not inside.any():
            continue
        conf, acc = float(confidence[inside].mean()), float(correct[inside].mean())
        ece += inside.sum() / len(m) * abs(acc - conf)
        table.append(
            {
                "low": 0.5 + b * width,
                "high": 0.5 + (b + 1) * width,
                "n": int(inside.sum()),
                "confidence": conf,
                "accuracy": acc,
            }
        )
    return Calibration(ece=float(ece), n=len(m), bins=table)


def length_statistics(completions: Sequence[str]) -> dict[str, float]:
    """Lengths of answers, in characters, and the two shares where reward hacking shows first:
    answers that are empty (or only whitespace), and degenerate ones (four or more words, all the
    same word: one token repeated)."""
    lengths = np.array([len(c) for c in completions], dtype=float)
    words = [c.split() for c in completions]
    return {
        "mean_length": float(lengths.mean()),
        "median_length": float(np.median(lengths)),
        "p90_length": float(np.percentile(lengths, 90)),
        "empty_share": sum(not w for w in words) / len(words),
        "repeat_share": sum(len(w) >= 4 and len(set(w)) == 1 for w in words) / len(words),
    }
