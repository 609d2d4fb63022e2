"""rlft.rl.experience: the Experience batch (shapes, device moves, minibatches) and make_experience."""

import pytest
import torch

from rlft.rl.core import gae, masked_mean, masked_var, response_mask_from_tokens
from rlft.rl.experience import Experience, make_experience

B, P, A = 8, 3, 5  # rollouts, prompt width, response width
T = P + A
EOS, PAD = 2, 0


def rollout(seed: int = 0) -> dict:
    """The tensors a rollout produces: left-padded prompts, responses that end at various places."""
    generator = torch.Generator().manual_seed(seed)
    prompts = torch.randint(3, 20, (B, P), generator=generator)
    prompts[0, 0] = PAD  # a left-padded prompt
    responses = torch.randint(3, 20, (B, A), generator=generator)
    lengths = [1, 2, 3, 4, 5, 5, 2, 3]
    for row, length in enumerate(lengths[:-2]):
        responses[row, length - 1] = EOS
        responses[row, length:] = PAD
    # rows 6 and 7 never produce an EOS: cut at the length limit
    response_mask, ended = response_mask_from_tokens(responses, eos_token_id=EOS)
    prompt_mask = prompts != PAD
    return {
        "sequences": torch.cat([prompts, responses], dim=1),
        "attention_mask": torch.cat([prompt_mask, response_mask], dim=1).long(),
        "response_mask": response_mask,
        "old_logprobs": -torch.rand(B, A, generator=generator),
        "ref_logprobs": -torch.rand(B, A, generator=generator),
        "values": torch.randn(B, A, generator=generator),
        "scores": torch.randn(B, generator=generator),
        "ended_with_eos": ended,
    }


def experience(**overrides) -> Experience:
    settings = {"beta": 0.1, "gamma": 1.0, "lam": 0.95, "kl_kind": "k1", "whiten_rewards": False}
    settings |= {"whiten_advantages": True} | overrides
    return make_experience(**rollout(), **settings)


def test_make_experience_follows_the_reference_order():
    data = rollout()
    exp = make_experience(
        **data, beta=0.1, gamma=1.0, lam=0.95, kl_kind="k1", whiten_rewards=False, whiten_advantages=True
    )
    mask = data["response_mask"]

    assert len(exp) == B
    assert torch.equal(exp.responses, data["sequences"][:, -A:])
    kl = torch.where(mask, data["old_logprobs"] - data["ref_logprobs"], 0.0)
    torch.testing.assert_close(exp.kl, kl)
    # rewards: -beta * kl on real tokens, the score added on the last real one
    last = mask.sum(-1) - 1
    expected_rewards = -0.1 * kl
    expected_rewards[torch.arange(B), last] += data["scores"]
    torch.testing.assert_close(exp.rewards, expected_rewards)
    # returns from the raw advantages; advantages whitened on real tokens, 0 on padding
    raw_advantages, returns = gae(expected_rewards, data["values"], mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(exp.returns, returns)
    assert masked_mean(exp.advantages, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(exp.advantages, mask).item() == pytest.approx(1.0, abs=1e-5)
    assert (exp.advantages[~mask] == 0).all()
    assert exp.info["response_length"].tolist() == [1, 2, 3, 4, 5, 5, 5, 5]
    assert exp.info["ended_with_eos"].tolist() == [True] * 6 + [False] * 2
    torch.testing.assert_close(exp.info["kl"], kl.sum(-1))


def test_make_experience_with_reward_whitening_and_missing_eos_penalty():
    plain = experience(whiten_advantages=False)
    penalised = experience(whiten_advantages=False, missing_eos_penalty=1.0)
    diff = plain.rewards - penalised.rewards
    # rows 6 and 7 ended without EOS: 1.0 less on their last token, nothing else changed
    expected = torch.zeros(B, A)
    expected[6, -1] = expected[7, -1] = 1.0
    torch.testing.assert_close(diff, expected)
    torch.testing.assert_close(penalised.scores, plain.scores)  # scores stay the raw ones

    whitened = experience(whiten_rewards=True)
    mask = whitened.response_mask
    assert masked_var(whitened.rewards, mask).item() == pytest.approx(1.0, abs=1e-5)
    assert masked_mean(whitened.rewards, mask).item() == pytest.approx(
        masked_mean(plain.rewards, mask).item(), abs=1e-6
    )


def test_minibatches_cover_every_rollout_once_in_a_reproducible_order():
    exp = experience()

    batches = list(exp.minibatches(2, generator=torch.Generator().manual_seed(3)))
    again = list(exp.minibatches(2, generator=torch.Generator().manual_seed(3)))

    assert [len(mb) for mb in batches] == [2, 2, 2, 2]
    rows = torch.cat([mb.sequences for mb in batches])
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, exp.sequences.tolist()))
    for mb, same in zip(batches, again, strict=True):
        assert torch.equal(mb.sequences, same.sequences)
        assert torch.equal(mb.advantages, same.advantages)
        assert mb.info.keys() == exp.info.keys()
        # the rows stay together: each minibatch row's fields come from the same rollout
        for i in range(len(mb)):
            j = next(k for k in range(B) if torch.equal(exp.sequences[k], mb.sequences[i]))
            assert torch.equal(mb.returns[i], exp.returns[j]) and mb.scores[i] == exp.scores[j]
            assert mb.info["response_length"][i] == exp.info["response_length"][j]


def test_unshuffled_minibatches_are_views_in_order():
    exp = experience()
    first, second = list(exp.minibatches(4, shuffle=False))
    assert torch.equal(first.sequences, exp.sequences[:4]) and torch.equal(
        second.sequences, exp.sequences[4:]
    )
    assert first.advantages.data_ptr() == exp.advantages.data_ptr()


def test_minibatch_size_must_divide_the_batch():
    with pytest.raises(ValueError, match="divide the 8 rollouts"):
        next(experience().minibatches(3))


def test_to_moves_every_tensor():
    exp = experience().to("cpu")
    assert all(t.device.type == "cpu" for t in [exp.sequences, exp.kl, *exp.info.values()])


def test_wrong_shapes_name_the_field():
    exp = experience()
    fields = {name: getattr(exp, name) for name in exp.__dataclass_fields__}
    with pytest.raises(ValueError, match=r"Experience.values has shape \(8, 4\); expected \(8, 5\)"):
        Experience(**(fields | {"values": exp.values[:, :4]}))
    with pytest.raises(ValueError, match="Experience.scores"):
        Experience(**(fields | {"scores": exp.scores[:3]}))


def test_attention_mask_must_keep_the_eos_attended():
    exp = experience()
    fields = {name: getattr(exp, name) for name in exp.__dataclass_fields__}
    attention = exp.attention_mask.clone()
    attention[0, P] = 0  # row 0's only response token is its EOS: masked as if it were padding
    with pytest.raises(ValueError, match="EOS equal to the pad id"):
        Experience(**(fields | {"attention_mask": attention}))
