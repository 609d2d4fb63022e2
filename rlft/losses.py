"""Offline preference losses on sequence log-probabilities: one small function per loss.

The reference-free ones at the end (``cpo``, ``simpo``) are those of ``kind: contrastive`` in
preference mode, trained on TRL's experimental CPOTrainer; ``tests/test_losses.py`` holds that
trainer to them the same way.

rlft trains DPO and its variants with TRL's ``DPOTrainer``, which computes these losses inside its
training step (one long method, not callable on its own). These pure functions say what is
computed, cite where it comes from, and are the reference the tests hold TRL to:
``tests/test_losses.py`` checks each against its hand formula and against TRL's loss on the same
log-probabilities. ``rlft.stages.dpo.trl_losses`` maps rlft's loss settings onto TRL's.

Letters: B pairs in a batch. ``logps`` are summed log-probabilities of a completion given its
prompt, log π(y|x) = Σ_t log π(y_t | x, y_<t), of the policy π_θ or the frozen reference π_ref;
y_w is the chosen completion, y_l the rejected one:

    chosen_logratios   = log π_θ(y_w|x) - log π_ref(y_w|x)    # (B,)
    rejected_logratios = log π_θ(y_l|x) - log π_ref(y_l|x)    # (B,)
    Δ = chosen_logratios - rejected_logratios                 # (B,) the implicit reward margin / β

Every function returns the per-pair loss, shape (B,); the trainer averages it over the batch
(``sft`` is a batch-level token mean, repeated per pair so that its mean is that number).
At step 0 the policy is the reference, so Δ = 0 and the DPO loss is log 2 for every pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def sigmoid(
    chosen_logratios: Tensor, rejected_logratios: Tensor, *, beta: float, label_smoothing: float = 0.0
) -> Tensor:
    """DPO: -log σ(β Δ) (Rafailov et al., 2023, "Direct Preference Optimization", eq. 7).

    With ``label_smoothing`` ε > 0 this is conservative DPO (cDPO; Mitchell, 2023, "A note on DPO
    with noisy preferences and relationship to IPO"): the label is assumed flipped with probability
    ε, so the target is a soft label, -(1 - ε) log σ(β Δ) - ε log σ(-β Δ). Its minimum sits at a
    finite margin, Δ = log((1 - ε) / ε) / β, instead of at infinity.
    """
    margin = beta * (chosen_logratios - rejected_logratios)
    return -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)


def ipo(
    chosen_logratios: Tensor,
    rejected_logratios: Tensor,
    *,
    beta: float,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
) -> Tensor:
    """IPO: (h - 1 / (2τ))², τ = β (Azar et al., 2023, "A General Theoretical Paradigm to Understand
    Learning from Human Preferences", eq. 17). Regresses the margin to a fixed target instead of
    pushing it to infinity, so it does not overfit deterministic preferences.

    Departure, as in TRL: h uses per-token mean log-ratios (each log-ratio divided by its
    completion's token count), so τ means the same for short and long answers; TRL reports the IPO
    authors confirmed their results use this normalised form.
    """
    h = chosen_logratios / chosen_lengths.clamp(min=1) - rejected_logratios / rejected_lengths.clamp(min=1)
    return (h - 1 / (2 * beta)) ** 2


def hinge(chosen_logratios: Tensor, rejected_logratios: Tensor, *, beta: float) -> Tensor:
    """Hinge loss on the reference-normalised margin: max(0, 1 - β Δ), the SLiC calibration loss
    (Zhao et al., 2023, "SLiC-HF") with the reference log-ratio of RSO (Liu et al., 2024,
    "Statistical Rejection Sampling Improves Preference Optimization"); 1/β is the margin δ.
    The loss is exactly 0 once a pair is separated by 1/β: those pairs stop training.
    """
    return torch.relu(1 - beta * (chosen_logratios - rejected_logratios))


def robust(
    chosen_logratios: Tensor, rejected_logratios: Tensor, *, beta: float, label_smoothing: float
) -> Tensor:
    """rDPO: an unbiased DPO loss under labels flipped with known probability ε = ``label_smoothing``
    (Chowdhury et al., 2024, "Provably Robust DPO: Aligning Language Models with Noisy Feedback"): [-(1 - ε) log σ(β Δ) + ε log σ(-β Δ)] / (1 - 2ε), for ε in [0, 0.5).
    """
    margin = beta * (chosen_logratios - rejected_logratios)
    return (-(1 - label_smoothing) * F.logsigmoid(margin) + label_smoothing * F.logsigmoid(-margin)) / (
        1 - 2 * label_smoothing
    )


def sigmoid_norm(
    chosen_logratios: Tensor,
    rejected_logratios: Tensor,
    *,
    beta: float,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
) -> Tensor:
    """Length-normalised DPO: -log σ(β (chosen_logratios / |y_w| - rejected_logratios / |y_l|)).

    DPO on per-token mean log-ratios, as Tülu 3 trains (Lambert et al., 2024, "Tülu 3", length-normalised
    DPO); SimPO (Meng et al., 2024, eq. 6) normalises by length the same way but drops the reference
    and adds a target margin γ. Removes DPO's pull towards longer answers. Typical β is larger
    (TRL's example: 5) since the normalised margin is per token.
    """
    h = chosen_logratios / chosen_lengths.clamp(min=1) - rejected_logratios / rejected_lengths.clamp(min=1)
    return -F.logsigmoid(beta * h)


def sft(chosen_logps: Tensor, *, chosen_lengths: Tensor) -> Tensor:
    """NLL of the chosen completions, per token, over the whole batch: -Σ log π_θ(y_w|x) / Σ |y_w|.

    Added to DPO (``loss_type: [sigmoid, sft]``) it is the DPO+NLL objective of RPO (Pang et al., 2024,
    "Iterative Reasoning Preference Optimization", there with per-sequence length
    normalisation): it keeps the likelihood of the chosen answers from falling while DPO widens the
    margin. Needs no reference. Returned as the batch value repeated for every pair, shape (B,).
    """
    value = -chosen_logps.sum() / chosen_lengths.sum().clamp(min=1)
    return value.expand(chosen_logps.shape[0])


def cpo(chosen_logps: Tensor, rejected_logps: Tensor, *, beta: float) -> Tensor:
    """CPO's preference term: -log σ(β (log π_θ(y_w|x) - log π_θ(y_l|x))) (Xu et al., 2024,
    "Contrastive Preference Optimization", eq. 3: DPO with the reference taken as uniform, so it
    cancels). No reference model: the policy's own log-likelihoods are compared.
    Trained with an NLL term on the chosen answers (``contrastive_preference_loss``), which keeps the
    policy on the preferred data while the margin grows."""
    return -F.logsigmoid(beta * (chosen_logps - rejected_logps))


def simpo(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    *,
    beta: float,
    gamma: float,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
) -> Tensor:
    """SimPO: -log σ(β/|y_w| log π_θ(y_w|x) - β/|y_l| log π_θ(y_l|x) - γ) (Meng et al., 2024,
    "SimPO: Simple Preference Optimization with a Reference-Free Reward", eq. 6). The implicit reward
    is the per-token mean log-likelihood (the quantity generation ranks by), and γ is a target
    reward margin: pairs count as separated once the chosen answer leads by γ/β nats per token."""
    chosen = chosen_logps / chosen_lengths.clamp(min=1)
    rejected = rejected_logps / rejected_lengths.clamp(min=1)
    return -F.logsigmoid(beta * (chosen - rejected) - gamma)


def contrastive_preference_loss(
    loss_type: str,
    *,
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    beta: float,
    cpo_alpha: float,
    simpo_gamma: float = 0.0,
) -> Tensor:
    """The reference-free loss of `kind: contrastive, mode: preference`, a scalar:
    mean_B cpo (or simpo) + cpo_alpha · NLL of the chosen answers (``sft``: a token mean over the batch).

    ``cpo_alpha`` 1 with ``cpo`` is CPO as published; ``simpo`` with ``cpo_alpha`` 0 is SimPO as
    published (with it above 0: CPO-SimPO, the combination TRL's CPOTrainer names so).
    """
    if loss_type == "cpo":
        pairwise = cpo(chosen_logps, rejected_logps, beta=beta)
    else:
        pairwise = simpo(
            chosen_logps,
            rejected_logps,
            beta=beta,
            gamma=simpo_gamma,
            chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths,
        )
    nll = sft(chosen_logps, chosen_lengths=chosen_lengths)[0]
    return pairwise.mean() + cpo_alpha * nll


# rlft's loss names (the names TRL's DPOConfig.loss_type uses too) -> the function above.
LOSSES = {
    "sigmoid": sigmoid,
    "ipo": ipo,
    "hinge": hinge,
    "robust": robust,
    "sigmoid_norm": sigmoid_norm,
    "sft": sft,
}


def preference_loss(
    loss_types: list[str],
    loss_weights: list[float] | None,
    *,
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> Tensor:
    """The stage's loss: Σ_k w_k · mean_B loss_k, over ``loss_types`` with ``loss_weights`` (default 1 each).

    ``label_smoothing`` is cDPO's ε for ``sigmoid`` and rDPO's ε for ``robust``. Returns a scalar.
    """
    weights = loss_weights or [1.0] * len(loss_types)
    chosen_logratios = chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = rejected_logps - ref_rejected_logps  # (B,)
    lengths = {"chosen_lengths": chosen_lengths, "rejected_lengths": rejected_lengths}
    total = torch.zeros((), dtype=chosen_logps.dtype)
    for name, weight in zip(loss_types, weights, strict=True):
        if name == "sft":
            per_pair = sft(chosen_logps, chosen_lengths=chosen_lengths)
        elif name in ("sigmoid", "robust"):
            per_pair = LOSSES[name](
                chosen_logratios, rejected_logratios, beta=beta, label_smoothing=label_smoothing
            )
        elif name in ("ipo", "sigmoid_norm"):
            per_pair = LOSSES[name](chosen_logratios, rejected_logratios, beta=beta, **lengths)
        else:
            per_pair = LOSSES[name](chosen_logratios, rejected_logratios, beta=beta)
        total = total + weight * per_pair.mean()
    return total
