"""rlft.rl.rollout: prompt order across processes, encoding, sampling layout, scoring, and the
reference's log-probs (a frozen copy, or the LoRA policy with its adapters disabled)."""

from pathlib import Path

import pytest
import torch
from conftest import QUICKSTART_DATA

from rlft.models.tiny import build_tiny_from_texts
from rlft.rl.critic import ActorCritic, value_model_from
from rlft.rl.rollout import (
    PromptSampler,
    decode_responses,
    encode_prompts,
    experience_from_rollout,
    left_pad,
    sample_responses,
    score_responses,
)

SETTINGS = {"beta": 0.1, "gamma": 1.0, "lam": 0.95, "kl_kind": "k1", "whiten_rewards": False}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    texts = (QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines()
    return build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("tiny") / "model", hidden_size=32, num_layers=2, num_heads=2
    )


@pytest.fixture(scope="module")
def loaded(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)


def prompts(n: int) -> list:
    return [[{"role": "user", "content": "shout: " + " ".join("abcdefg"[: 3 + i % 4])}] for i in range(n)]


def test_prompt_sampler_gives_processes_disjoint_rows_and_resumes():
    ranks = [PromptSampler(10, batch_size=2, seed=0, rank=r, world_size=2) for r in (0, 1)]
    epoch = [ranks[0].next_indices() + ranks[1].next_indices() for _ in range(2)]
    flat = [i for batch in epoch for i in batch]
    assert len(set(flat)) == 8  # two global batches of 4, no row twice within the epoch
    third = ranks[0].next_indices()  # 2 rows left in the epoch: a new epoch starts, in another order
    assert ranks[0].state_dict() == {"epoch": 1, "position": 4}

    again = PromptSampler(10, batch_size=2, seed=0, rank=0, world_size=2)
    again.load_state_dict({"epoch": 0, "position": 8})
    assert again.next_indices() == third
    with pytest.raises(ValueError, match="lower rollout_batch_size"):
        PromptSampler(3, batch_size=2, seed=0, world_size=2)


def test_encode_and_left_pad(loaded):
    _, tokenizer = loaded
    ids = encode_prompts(tokenizer, ["shout: a b", *prompts(1)])
    rendered = tokenizer.apply_chat_template(prompts(1)[0], add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(ids[1]) == rendered  # the chat template with its generation prompt
    assert encode_prompts(tokenizer, prompts(1), max_length=3)[0] == ids[1][-3:]  # keeps the end
    input_ids, mask = left_pad(ids, pad_id=0)
    assert input_ids.shape == mask.shape == (2, max(map(len, ids)))
    short = min(range(2), key=lambda i: len(ids[i]))
    assert mask[short, 0] == 0 and mask[short, -1] == 1  # padding on the left
    assert input_ids[short, -len(ids[short]) :].tolist() == ids[short]


def test_sampled_responses_follow_the_experience_layout(loaded):
    model, tokenizer = loaded
    input_ids, mask = left_pad(encode_prompts(tokenizer, prompts(16)), tokenizer.pad_token_id)
    torch.manual_seed(0)
    eos = tokenizer.eos_token_id
    rollout = sample_responses(
        model, input_ids, mask, max_new_tokens=6, temperature=1.0, eos_token_id=eos, pad_token_id=0
    )
    a = rollout.response_mask.shape[1]
    assert rollout.sequences.shape == (16, input_ids.shape[1] + a) and a <= 6
    assert torch.equal(rollout.sequences[:, : input_ids.shape[1]], input_ids)
    assert torch.equal(rollout.attention_mask[:, -a:].bool(), rollout.response_mask)
    for row, keep, ended in zip(
        rollout.responses, rollout.response_mask, rollout.ended_with_eos, strict=True
    ):
        real = row[keep].tolist()
        assert (eos in real) == bool(ended) and (not ended or real[-1] == eos and real.count(eos) == 1)
        assert (row[~keep] == 0).all()  # after the first EOS: padding
    texts = decode_responses(tokenizer, rollout)
    assert len(texts) == 16 and not any(tokenizer.eos_token in t for t in texts)


def test_scores_get_completions_in_the_prompts_style():
    seen = {}

    def reward(prompts, completions, **fields):
        seen.update(completions=completions, fields=fields)
        return [1.0, 0.5]

    scores = score_responses(
        reward, ["text prompt", [{"role": "user", "content": "hi"}]], ["a", "b"], {"answer": [1, 2]}
    )
    assert scores.tolist() == [1.0, 0.5]
    assert seen["completions"] == ["a", [{"role": "assistant", "content": "b"}]] and seen["fields"] == {
        "answer": [1, 2]
    }
    none = score_responses(lambda p, c, **f: [1.0, None], ["x", "y"], ["a", "b"])  # the stage's guard decides
    assert none[0] == 1.0 and none[1].isnan()
    with pytest.raises(ValueError, match="returned 1 scores for 2 responses"):
        score_responses(lambda p, c, **f: [1.0], ["x", "y"], ["a", "b"])


def rollout_of(model, tokenizer, n=8):
    input_ids, mask = left_pad(encode_prompts(tokenizer, prompts(n)), tokenizer.pad_token_id)
    torch.manual_seed(1)
    return sample_responses(
        model,
        input_ids,
        mask,
        max_new_tokens=5,
        temperature=0.7,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=0,
    )


def test_a_frozen_copy_of_the_policy_gives_zero_kl(loaded, tiny_model):
    from transformers import AutoModelForCausalLM

    model, tokenizer = loaded
    actor_critic = ActorCritic(model, value_model_from(AutoModelForCausalLM.from_pretrained(tiny_model))[0])
    reference = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    rollout = rollout_of(model, tokenizer)
    exp = experience_from_rollout(
        actor_critic,
        reference,
        rollout,
        torch.ones(8),
        temperature=0.7,
        forward_batch_size=3,
        reference_disable_adapter=False,
        missing_eos_penalty=None,
        **SETTINGS,
    )
    assert exp.kl.abs().max() < 1e-5  # the policy at step 0 is the reference
    assert torch.allclose(exp.old_logprobs, exp.ref_logprobs, atol=1e-5)
    assert (exp.old_logprobs[exp.response_mask] < 0).all()


def test_lora_reference_is_the_base_model(loaded, tiny_model):
    """With LoRA the reference is the policy with adapters disabled: exactly the base model's outputs,
    even after the adapters have moved (no second copy of the weights)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base, tokenizer = loaded
    policy = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=4, target_modules="all-linear")
    )
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # a trained adapter: the policy now differs from the base
    actor_critic = ActorCritic(
        policy, value_model_from(AutoModelForCausalLM.from_pretrained(tiny_model))[0]
    ).eval()
    rollout = rollout_of(base, tokenizer)
    exp = experience_from_rollout(
        actor_critic,
        policy,
        rollout,
        torch.zeros(8),
        temperature=0.7,
        forward_batch_size=8,
        reference_disable_adapter=True,
        missing_eos_penalty=None,
        **SETTINGS,
    )
    frozen = experience_from_rollout(
        actor_critic,
        base,
        rollout,
        torch.zeros(8),
        temperature=0.7,
        forward_batch_size=8,
        reference_disable_adapter=False,
        missing_eos_penalty=None,
        **SETTINGS,
    )
    torch.testing.assert_close(
        exp.ref_logprobs, frozen.ref_logprobs, atol=1e-5, rtol=1e-5
    )  # == the base model
    assert exp.kl[exp.response_mask].abs().mean() > 1e-3  # and the policy really differs from it
    again = experience_from_rollout(
        actor_critic,
        policy,
        rollout,
        torch.zeros(8),
        temperature=0.7,
        forward_batch_size=8,
        reference_disable_adapter=True,
        missing_eos_penalty=None,
        **SETTINGS,
    )
    torch.testing.assert_close(again.old_logprobs, exp.old_logprobs)  # the adapters are back on afterwards
