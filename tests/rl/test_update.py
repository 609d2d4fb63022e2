"""rlft.rl.update: the PPO minibatch update (accumulation invariant, statistics) and its optimizer."""

import copy
from pathlib import Path

import pytest
import torch
from conftest import QUICKSTART_DATA

from rlft.models.tiny import build_tiny_from_texts
from rlft.rl.core import logprobs_from_logits
from rlft.rl.critic import ActorCritic, value_model_from
from rlft.rl.experience import make_experience
from rlft.rl.update import make_optimizer, ppo_update

B, P, A = 4, 3, 5


@pytest.fixture(scope="module")
def actor_critic(tmp_path_factory) -> ActorCritic:
    from transformers import AutoModelForCausalLM

    texts = (QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines()
    folder = build_tiny_from_texts(
        texts, Path(tmp_path_factory.mktemp("tiny")) / "model", hidden_size=32, num_layers=2, num_heads=2
    )
    policy = AutoModelForCausalLM.from_pretrained(folder)
    return ActorCritic(policy, value_model_from(AutoModelForCausalLM.from_pretrained(folder))[0])


def experience_for(model: ActorCritic):
    """Rollouts whose responses are all A tokens long (no EOS), so token means equal row means."""
    generator = torch.Generator().manual_seed(0)
    sequences = torch.randint(3, 100, (B, P + A), generator=generator)
    attention_mask = torch.ones_like(sequences)
    with torch.no_grad():
        logits, values = model(sequences, attention_mask)
    return make_experience(
        sequences=sequences,
        attention_mask=attention_mask,
        response_mask=torch.ones(B, A, dtype=torch.bool),
        old_logprobs=logprobs_from_logits(logits[:, -A - 1 : -1], sequences[:, -A:]),
        ref_logprobs=logprobs_from_logits(logits[:, -A - 1 : -1], sequences[:, -A:]),
        values=values[:, -A - 1 : -1],
        scores=torch.randn(B, generator=generator),
        ended_with_eos=torch.zeros(B, dtype=torch.bool),
        beta=0.05,
        gamma=1.0,
        lam=0.95,
        kl_kind="k1",
        whiten_rewards=False,
        whiten_advantages=True,
    )


def train_once(model: ActorCritic, *, accumulation: int) -> tuple[ActorCritic, dict]:
    from accelerate import Accelerator

    model = copy.deepcopy(model)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    steps = []
    stats = ppo_update(
        prepared,
        optimizer,
        experience_for(model),
        accelerator=accelerator,
        ppo_epochs=1,
        minibatch_size=B,
        gradient_accumulation_steps=accumulation,
        temperature=1.0,
        clip=0.2,
        vf_clip=0.2,
        vf_coef=0.1,
        entropy_coef=0.01,
        max_grad_norm=None,
        generator=torch.Generator().manual_seed(0),
        on_optimizer_step=lambda: steps.append(1),
    )
    stats["optimizer_steps"] = len(steps)
    return model, stats


def test_one_batch_of_4_equals_4_accumulated_micro_batches_of_1(actor_critic):
    """TRL's invariant: with equally long responses, accumulation changes memory, not the update."""
    whole, stats = train_once(actor_critic, accumulation=1)
    accumulated, stats_acc = train_once(actor_critic, accumulation=4)
    assert stats["optimizer_steps"] == stats_acc["optimizer_steps"] == 1
    moved = 0
    for (name, a), b, before in zip(
        whole.named_parameters(), accumulated.parameters(), actor_critic.parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4, msg=name)
        moved += not torch.equal(a, before)
    assert moved > 0
    assert set(stats) >= {
        "policy_loss",
        "value_loss",
        "loss",
        "entropy",
        "clipfrac",
        "approx_kl",
        "vf_clipfrac",
    }
    assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-9)  # first step: the policy is the rollout policy


def test_minibatch_must_split_into_micro_batches(actor_critic):
    from accelerate import Accelerator

    with pytest.raises(ValueError, match="multiple of gradient_accumulation_steps"):
        ppo_update(
            actor_critic,
            None,
            experience_for(actor_critic),
            accelerator=Accelerator(cpu=True),
            ppo_epochs=1,
            minibatch_size=4,
            gradient_accumulation_steps=3,
            temperature=1.0,
            clip=0.2,
            vf_clip=None,
            vf_coef=0.1,
            entropy_coef=0.0,
            max_grad_norm=1.0,
            generator=torch.Generator(),
        )


def test_optimizer_groups_and_linear_schedule():
    policy, critic = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    policy.bias.requires_grad_(False)  # frozen parameters stay out of the optimizer
    optimizer, scheduler = make_optimizer(
        policy, critic, lr=1e-3, critic_lr=2e-3, adam_eps=1e-5, schedule="linear", total_updates=4
    )
    assert [len(g["params"]) for g in optimizer.param_groups] == [1, 2]
    assert optimizer.param_groups[0]["eps"] == 1e-5
    lrs = []
    for _ in range(4):
        lrs += scheduler.get_last_lr()
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1e-3, 2e-3, 7.5e-4, 1.5e-3, 5e-4, 1e-3, 2.5e-4, 5e-4])
    assert scheduler.get_last_lr() == [0.0, 0.0]
    optimizer, constant = make_optimizer(
        policy, critic, lr=1e-3, critic_lr=1e-3, adam_eps=1e-5, schedule="constant", total_updates=4
    )
    for _ in range(6):
        optimizer.step()
        constant.step()
    assert constant.get_last_lr() == [1e-3, 1e-3]
    with pytest.raises(ValueError, match="linear or constant"):
        make_optimizer(policy, critic, lr=1, critic_lr=1, adam_eps=1, schedule="cosine", total_updates=1)
