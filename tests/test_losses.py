"""rlft/losses.py against hand-computed values, and TRL's DPOTrainer loss against rlft/losses.py.

The second part feeds TRL's own `compute_loss` hand-made log-probabilities (a stand-in model and
precomputed reference log-probs), with the loss settings `rlft.stages.dpo.trl_losses` gives it, so
it checks both TRL's formulas and rlft's mapping (cDPO in particular) on the code that trains.
"""

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import QUICKSTART_DATA, stage_context

from rlft import losses
from rlft.stages import dpo


def softplus(x: float) -> float:  # -log σ(-x) = log(1 + e^x)
    return math.log1p(math.exp(x))


# Two pairs: pair 0 has Δ = 1 - (-1) = 2; pair 1 has Δ = 0.5 - 0.5 = 0.
CHOSEN_LR = torch.tensor([1.0, 0.5])
REJECTED_LR = torch.tensor([-1.0, 0.5])
CHOSEN_LEN = torch.tensor([2.0, 5.0])
REJECTED_LEN = torch.tensor([4.0, 5.0])


def test_sigmoid_is_dpo_and_log2_at_step_zero():
    got = losses.sigmoid(CHOSEN_LR, REJECTED_LR, beta=0.5)
    # -log σ(βΔ) = log(1 + e^{-βΔ}): βΔ = 1 and 0
    assert got.tolist() == pytest.approx([softplus(-1.0), math.log(2)], abs=1e-6)
    zero = losses.sigmoid(torch.zeros(3), torch.zeros(3), beta=0.1)
    assert zero.tolist() == pytest.approx([math.log(2)] * 3, abs=1e-7)


def test_cdpo_is_a_soft_label_with_a_finite_optimum():
    eps = 0.1
    got = losses.sigmoid(CHOSEN_LR, REJECTED_LR, beta=0.5, label_smoothing=eps)
    assert got[0].item() == pytest.approx((1 - eps) * softplus(-1.0) + eps * softplus(1.0), abs=1e-6)
    # The loss is smallest where σ(βΔ) = 1 - ε, i.e. Δ* = log((1 - ε) / ε) / β: the gradient vanishes there.
    beta = 0.5
    delta = torch.tensor([math.log((1 - eps) / eps) / beta], requires_grad=True)
    losses.sigmoid(delta, torch.zeros(1), beta=beta, label_smoothing=eps).sum().backward()
    assert delta.grad.item() == pytest.approx(0.0, abs=1e-6)


def test_ipo_regresses_the_length_normalised_margin_to_one_over_two_tau():
    got = losses.ipo(
        CHOSEN_LR, REJECTED_LR, beta=0.5, chosen_lengths=CHOSEN_LEN, rejected_lengths=REJECTED_LEN
    )
    # h = 1/2 - (-1)/4 = 0.75 and 0.5/5 - 0.5/5 = 0; target 1/(2·0.5) = 1
    assert got.tolist() == pytest.approx([(0.75 - 1) ** 2, 1.0], abs=1e-6)


def test_hinge_stops_at_margin_one_over_beta():
    assert losses.hinge(CHOSEN_LR, REJECTED_LR, beta=0.5).tolist() == pytest.approx(
        [0.0, 1.0]
    )  # βΔ = 1: no loss
    assert losses.hinge(CHOSEN_LR, REJECTED_LR, beta=0.25).tolist() == pytest.approx([0.5, 1.0])


def test_robust_is_unbiased_under_flipped_labels():
    eps = 0.2
    got = losses.robust(CHOSEN_LR, REJECTED_LR, beta=0.5, label_smoothing=eps)
    assert got[0].item() == pytest.approx(((1 - eps) * softplus(-1.0) - eps * softplus(1.0)) / (1 - 2 * eps))
    # Unbiased: averaged over a label flipped with probability ε, it is the clean DPO loss.
    flipped = losses.robust(REJECTED_LR, CHOSEN_LR, beta=0.5, label_smoothing=eps)
    expected = (1 - eps) * got + eps * flipped
    assert expected.tolist() == pytest.approx(
        losses.sigmoid(CHOSEN_LR, REJECTED_LR, beta=0.5).tolist(), abs=1e-6
    )


def test_sigmoid_norm_uses_per_token_log_ratios():
    got = losses.sigmoid_norm(
        CHOSEN_LR, REJECTED_LR, beta=0.5, chosen_lengths=CHOSEN_LEN, rejected_lengths=REJECTED_LEN
    )
    assert got.tolist() == pytest.approx([softplus(-0.5 * 0.75), math.log(2)], abs=1e-6)


def test_sft_is_the_token_mean_nll_of_the_chosen_answers():
    got = losses.sft(torch.tensor([-2.0, -4.0]), chosen_lengths=torch.tensor([2.0, 4.0]))
    assert got.tolist() == pytest.approx([1.0, 1.0])  # (2 + 4) / (2 + 4 tokens)


def test_combined_loss_is_the_weighted_sum_of_batch_means():
    common = dict(
        chosen_logps=torch.tensor([-2.0, -4.0]),
        rejected_logps=torch.tensor([-5.0, -4.0]),
        ref_chosen_logps=torch.tensor([-3.0, -4.5]),
        ref_rejected_logps=torch.tensor([-4.0, -4.5]),
        chosen_lengths=torch.tensor([2.0, 4.0]),
        rejected_lengths=torch.tensor([4.0, 4.0]),
        beta=0.5,
    )
    got = losses.preference_loss(["sigmoid", "sft"], [1.0, 0.5], **common)
    dpo_part = losses.sigmoid(torch.tensor([1.0, 0.5]), torch.tensor([-1.0, 0.5]), beta=0.5).mean()
    assert got.item() == pytest.approx(dpo_part.item() + 0.5 * 1.0, abs=1e-6)


# --- TRL's DPOTrainer computes the same ----------------------------------------------------------


class FixedLogps(torch.nn.Module):
    """Stands in for the policy: per-token log-probs that sum to given sequence log-probs.

    Each sequence's log-prob is spread evenly over its completion tokens (the positions whose
    shifted label is not -100), which is what TRL sums; the other outputs TRL reads are zeros.
    """

    def __init__(self, logps):
        super().__init__()
        self.logps = torch.tensor(logps)  # (2B,): chosen then rejected

    def forward(self, *, input_ids, labels, **kwargs):
        mask = (labels[:, 1:] != -100).float()  # (2B, T-1)
        per_token = mask * (self.logps / mask.sum(1)).unsqueeze(1)
        zeros = torch.zeros_like(per_token)
        return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())


@pytest.fixture(scope="module")
def trl_trainer(tmp_path_factory):
    from rlft.models.tiny import build_tiny_from_texts

    tmp = tmp_path_factory.mktemp("trl_loss")
    texts = (QUICKSTART_DATA / "prefs_train.jsonl").read_text().splitlines()
    model = build_tiny_from_texts(texts, tmp / "model", hidden_size=32, num_layers=1, num_heads=2)
    cfg = dpo.DPOStage.model_validate(
        {
            "name": "dpo",
            "kind": "dpo",
            "model": {"path": str(model)},
            "data": {"train": str(QUICKSTART_DATA / "prefs_train.jsonl"), "max_rows": 8},
            "max_length": 64,
            "trainer": {"max_steps": 1},
        }
    )
    work = tmp / "work"
    ctx = stage_context(tmp, work)
    trainer, _ = dpo.make_trainer(cfg, ctx)
    return trainer


LOGPS = [-2.0, -6.0, -5.0, -3.0]  # policy: chosen (2 pairs), then rejected
REF = ([-3.0, -5.0], [-4.0, -4.0])  # reference: chosen, rejected


@pytest.mark.parametrize(
    "loss_type, loss_weights, label_smoothing, beta",
    [
        (["sigmoid"], None, 0.0, 0.1),
        (["sigmoid"], None, 0.1, 0.5),  # cDPO: runs as TRL's sigmoid + robust(ε = 1)
        (["ipo"], None, 0.0, 0.5),
        (["hinge"], None, 0.0, 0.3),
        (["robust"], None, 0.2, 0.5),
        (["sigmoid_norm"], None, 0.0, 2.0),
        (["sft"], None, 0.0, 0.1),
        (["sigmoid", "sft"], [1.0, 0.5], 0.0, 0.1),
        (["sigmoid", "sft"], [0.5, 1.0], 0.05, 0.1),
    ],
)
def test_trl_loss_matches_rlft_formula(trl_trainer, loss_type, loss_weights, label_smoothing, beta):
    trainer = trl_trainer
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    batch["ref_chosen_logps"], batch["ref_rejected_logps"] = (torch.tensor(r) for r in REF)
    settings = dpo.trl_losses(loss_type, loss_weights, label_smoothing)
    trainer.precompute_ref_logps = True  # read the reference log-probs from the batch
    trainer.beta = beta
    trainer.loss_types, trainer.loss_weights = settings["loss_type"], settings["loss_weights"]
    trainer.label_smoothing = settings["label_smoothing"]

    trl_loss = trainer.compute_loss(FixedLogps(LOGPS), batch).item()

    lengths = batch["completion_mask"].sum(1).float()  # (2B,) completion tokens
    expected = losses.preference_loss(
        loss_type,
        loss_weights,
        chosen_logps=torch.tensor(LOGPS[:2]),
        rejected_logps=torch.tensor(LOGPS[2:]),
        ref_chosen_logps=torch.tensor(REF[0]),
        ref_rejected_logps=torch.tensor(REF[1]),
        chosen_lengths=lengths[:2],
        rejected_lengths=lengths[2:],
        beta=beta,
        label_smoothing=label_smoothing,
    ).item()
    assert trl_loss == pytest.approx(expected, abs=1e-5)


def test_cdpo_mapping_is_exact_and_explicit():
    assert dpo.trl_losses(["sigmoid"], None, 0.0) == {
        "loss_type": ["sigmoid"],
        "loss_weights": [1.0],
        "label_smoothing": 0.0,
    }
    assert dpo.trl_losses(["sigmoid", "sft"], [2.0, 1.0], 0.1) == {
        "loss_type": ["sigmoid", "robust", "sft"],
        "loss_weights": [pytest.approx(1.8), pytest.approx(0.2), 1.0],
        "label_smoothing": 1.0,
    }
    assert dpo.trl_losses(["robust"], None, 0.2)["label_smoothing"] == 0.2  # rDPO reads ε itself


# --- reference-free: CPO and SimPO (kind: contrastive, mode: preference) -------------------------

CHOSEN_LOGPS = torch.tensor([-2.0, -6.0])
REJECTED_LOGPS = torch.tensor([-5.0, -3.0])


def test_cpo_is_a_sigmoid_on_the_policy_log_likelihood_margin():
    got = losses.cpo(CHOSEN_LOGPS, REJECTED_LOGPS, beta=0.5)
    # margins 3 and -3: -log σ(1.5) = log(1 + e^-1.5), -log σ(-1.5) = log(1 + e^1.5)
    assert got.tolist() == pytest.approx([softplus(-1.5), softplus(1.5)], abs=1e-6)
    # no reference: equal likelihoods give log 2 whatever they are
    assert losses.cpo(torch.tensor([-7.0]), torch.tensor([-7.0]), beta=3.0).item() == pytest.approx(
        math.log(2)
    )


def test_simpo_compares_per_token_means_against_a_target_margin():
    got = losses.simpo(
        CHOSEN_LOGPS,
        REJECTED_LOGPS,
        beta=2.0,
        gamma=0.5,
        chosen_lengths=CHOSEN_LEN,
        rejected_lengths=REJECTED_LEN,
    )
    # per-token means: -2/2 = -1 vs -5/4 = -1.25; -6/5 = -1.2 vs -3/5 = -0.6
    # -log σ(β (mean_w - mean_l) - γ): β·0.25 - 0.5 = 0 and β·(-0.6) - 0.5 = -1.7
    assert got.tolist() == pytest.approx([math.log(2), softplus(1.7)], abs=1e-6)


def test_contrastive_preference_loss_adds_the_nll_of_the_chosen_answers():
    common = dict(
        chosen_logps=CHOSEN_LOGPS,
        rejected_logps=REJECTED_LOGPS,
        chosen_lengths=CHOSEN_LEN,
        rejected_lengths=REJECTED_LEN,
        beta=0.5,
    )
    nll = (2.0 + 6.0) / (2 + 5)  # token mean over the batch's chosen answers
    cpo = losses.contrastive_preference_loss("cpo", cpo_alpha=0.3, **common)
    assert cpo.item() == pytest.approx((softplus(-1.5) + softplus(1.5)) / 2 + 0.3 * nll, abs=1e-6)
    simpo = losses.contrastive_preference_loss("simpo", cpo_alpha=0.0, simpo_gamma=0.5, **common)
    pairwise = losses.simpo(
        CHOSEN_LOGPS,
        REJECTED_LOGPS,
        beta=0.5,
        gamma=0.5,
        chosen_lengths=CHOSEN_LEN,
        rejected_lengths=REJECTED_LEN,
    )
    assert simpo.item() == pytest.approx(pairwise.mean().item(), abs=1e-6)  # SimPO as published: no NLL


class FixedTokenLogps(torch.nn.Module):
    """Stands in for a causal LM: logits under which every next token of row b has log-prob `logps[b]`.

    CPOTrainer runs the model on chosen rows then rejected rows (2B, T) and reads log-softmax at each
    next token; one logit x at that token and zeros elsewhere give log-prob x - log(e^x + V - 1) = l
    for x = log(e^l (V - 1) / (1 - e^l)). A row's sequence log-prob is then l x its answer tokens.
    """

    def __init__(self, logps, vocab):
        super().__init__()
        self.logps, self.vocab = torch.tensor(logps), vocab
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # the trainer wants a parameter and a device

    def forward(self, input_ids, attention_mask=None, **kwargs):
        rows, tokens = input_ids.shape
        p = self.logps.exp().unsqueeze(1)  # (2B, 1)
        x = torch.log(p * (self.vocab - 1) / (1 - p)).expand(rows, tokens - 1)  # (2B, T-1)
        logits = torch.zeros(rows, tokens, self.vocab)
        logits[:, :-1].scatter_(2, input_ids[:, 1:].unsqueeze(2), x.unsqueeze(2))  # predicts token t+1 at t
        return SimpleNamespace(logits=logits + 0 * self.anchor)


TOKEN_LOGPS = [-0.2, -0.9, -0.7, -0.3]  # per-token log-prob of: chosen (2 pairs), then rejected


@pytest.mark.parametrize(
    "settings",
    [
        {"loss_type": "cpo", "beta": 0.1, "cpo_alpha": 1.0},
        {"loss_type": "cpo", "beta": 0.5, "cpo_alpha": 0.0},
        {"loss_type": "simpo", "beta": 2.0, "cpo_alpha": 0.0, "simpo_gamma": 0.5},
        {"loss_type": "simpo", "beta": 2.5, "cpo_alpha": 0.2, "simpo_gamma": 1.0},
    ],
)
def test_trl_cpo_loss_matches_rlft_formula(tmp_path, trl_trainer, settings):
    """TRL's experimental CPOTrainer, set up by the contrastive stage from its keys, computes rlft's formula."""
    from rlft.stages import contrastive

    model_dir = trl_trainer.model.name_or_path
    cfg = contrastive.ContrastiveStage.model_validate(
        {
            "name": "cpo",
            "kind": "contrastive",
            "mode": "preference",
            "model": {"path": model_dir},
            "data": {"train": str(QUICKSTART_DATA / "prefs_train.jsonl"), "max_rows": 8},
            "max_length": 64,
            "trainer": {"max_steps": 1},
            **settings,
        }
    )
    work = tmp_path / "work"
    ctx = stage_context(tmp_path, work)
    trainer, _ = contrastive.make_preference_trainer(cfg, ctx)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    vocab = len(trainer.processing_class)
    trl_loss = trainer.compute_loss(FixedTokenLogps(TOKEN_LOGPS, vocab), batch).item()

    per_token = torch.tensor(TOKEN_LOGPS)
    lengths = torch.cat(
        [(batch[f"{k}_labels"][:, 1:] != -100).sum(1) for k in ("chosen", "rejected")]
    ).float()  # (2B,) answer tokens
    expected = losses.contrastive_preference_loss(
        settings["loss_type"],
        chosen_logps=per_token[:2] * lengths[:2],
        rejected_logps=per_token[2:] * lengths[2:],
        chosen_lengths=lengths[:2],
        rejected_lengths=lengths[2:],
        beta=settings["beta"],
        cpo_alpha=settings["cpo_alpha"],
        simpo_gamma=settings.get("simpo_gamma", 0.0),
    ).item()
    assert trl_loss == pytest.approx(expected, abs=1e-4)
