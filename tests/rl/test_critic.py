"""rlft.rl.critic: the value model (from a reward model or a causal LM), positions, the actor-critic."""

from pathlib import Path

import pytest
import torch
from conftest import QUICKSTART_DATA

from rlft.models.tiny import build_tiny_from_texts
from rlft.rl.critic import (
    ActorCritic,
    SharedActorCritic,
    ValueModel,
    disable_dropout,
    fresh_value_head,
    lora_critic,
    position_ids_from_mask,
    rescaled_head,
    shared_value_head,
    value_model_from,
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    texts = (QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines()
    return build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("tiny") / "model", hidden_size=32, num_layers=2, num_heads=2
    )


def test_position_ids_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2, 2], [0, 1, 2, 3, 4, 5]]


def test_critic_from_a_reward_model_scores_like_it(tiny_model):
    """Started from a reward model, the critic's value at the last token *is* the reward model's score."""
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1).eval()
    rm.config.pad_token_id = 0
    critic, how = value_model_from(rm)
    assert how == "reward head" and critic.head is rm.score
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        values = critic(ids, mask)  # (1, T)
        score = rm(input_ids=ids, attention_mask=mask).logits[0, 0]
    assert values.shape == (1, 5)
    assert torch.allclose(values[0, -1], score, atol=1e-5)


def test_critic_from_a_causal_lm_gets_a_fresh_head(tiny_model):
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_model)
    critic, how = value_model_from(lm)
    assert how == "fresh head" and isinstance(critic, ValueModel)
    assert critic.head.bias.abs().sum() == 0 and critic.head.weight.std() < 1
    assert not any("lm_head" in name for name, _ in critic.named_parameters())
    torch.testing.assert_close(critic.body.embed_tokens.weight, lm.model.embed_tokens.weight)


def test_rescaled_head_is_affine():
    head = fresh_value_head(4)
    new = rescaled_head(head, scale=0.5, shift=-2.0)
    x = torch.randn(3, 4)
    torch.testing.assert_close(new(x), 0.5 * head(x) - 2.0)
    no_bias = torch.nn.Linear(4, 1, bias=False)
    torch.testing.assert_close(rescaled_head(no_bias, scale=2.0, shift=1.0)(x), 2 * no_bias(x) + 1)


def test_left_padding_does_not_change_logits_or_values(tiny_model):
    """Positions come from the attention mask, so a left-padded row computes what the bare row does."""
    from transformers import AutoModelForCausalLM

    model = ActorCritic(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        value_model_from(AutoModelForCausalLM.from_pretrained(tiny_model))[0],
    ).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    padded = torch.tensor([[0, 0, 5, 6, 7, 8]])
    with torch.no_grad():
        logits, values = model(ids, torch.ones_like(ids))
        logits_p, values_p = model(padded, torch.tensor([[0, 0, 1, 1, 1, 1]]))
    torch.testing.assert_close(logits_p[:, 2:], logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(values_p[:, 2:], values, atol=1e-5, rtol=1e-4)


def test_disable_dropout_zeroes_every_probability():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.3))
    model[0].attention_dropout = 0.1
    disable_dropout(model)
    assert model[1].p == 0.0 and model[0].attention_dropout == 0.0


def test_shared_critic_reads_values_off_the_policys_own_pass(tiny_model):
    """One forward: the logits are the policy's, the values the head on its last (normed) hidden states,
    and a left-padded row computes what the bare row does; both losses reach the trunk."""
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = SharedActorCritic(policy, shared_value_head(policy)).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    padded = torch.tensor([[0, 0, 5, 6, 7, 8]])
    with torch.no_grad():
        logits, values = model(ids, torch.ones_like(ids))
        logits_p, values_p = model(padded, torch.tensor([[0, 0, 1, 1, 1, 1]]))
        hidden = policy.model(input_ids=ids).last_hidden_state  # (1, T, H)
        torch.testing.assert_close(logits, policy(input_ids=ids).logits)
        torch.testing.assert_close(values, model.critic(hidden).squeeze(-1))
    assert values.shape == (1, 4) and values.dtype == torch.float32
    torch.testing.assert_close(values_p[:, 2:], values, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits_p[:, 2:], logits, atol=1e-5, rtol=1e-4)

    _, values = model(ids, torch.ones_like(ids))
    values.sum().backward()  # the value loss alone trains the head and the trunk
    assert model.critic.weight.grad is not None and policy.model.layers[0].mlp.up_proj.weight.grad is not None


def test_lora_critic_trains_only_its_adapters_and_head_and_starts_as_it_was(tiny_model):
    from transformers import AutoModelForCausalLM

    critic = value_model_from(AutoModelForCausalLM.from_pretrained(tiny_model))[0].eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = critic(ids, torch.ones_like(ids))
    lora = lora_critic(critic, r=4, alpha=8, target_modules="all-linear").eval()
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert {"head.weight", "head.bias"} <= trainable
    with torch.no_grad():
        torch.testing.assert_close(
            lora(ids, torch.ones_like(ids)), before
        )  # B = 0: the same critic at the start


@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared"])
def test_logits_to_keep_gives_the_last_positions_only(tiny_model, shared):
    """PPO reads the A + 1 last positions' logits: asking for those alone gives the same numbers and the
    same values, for a plain and a peft-wrapped (LoRA) policy."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rlft.rl.critic import policy_logits

    for wrap in (False, True):
        policy = AutoModelForCausalLM.from_pretrained(tiny_model)
        if wrap:
            policy = get_peft_model(policy, LoraConfig(r=2, target_modules="all-linear"))
        if shared:
            model = SharedActorCritic(policy, shared_value_head(policy)).eval()
        else:
            model = ActorCritic(
                policy, value_model_from(AutoModelForCausalLM.from_pretrained(tiny_model))[0]
            ).eval()
        ids = torch.tensor([[0, 0, 5, 6, 7, 8], [4, 5, 6, 7, 8, 9]])
        mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
        with torch.no_grad():
            logits, values = model(ids, mask)
            kept, kept_values = model(ids, mask, logits_to_keep=3)
            alone = policy_logits(policy, ids, mask, position_ids_from_mask(mask), logits_to_keep=3)
        assert kept.shape == (2, 3, logits.shape[-1])
        torch.testing.assert_close(kept, logits[:, -3:])
        torch.testing.assert_close(alone, logits[:, -3:])
        torch.testing.assert_close(kept_values, values)
