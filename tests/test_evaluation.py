"""rlft.evaluation on a tiny untrained model: shapes, determinism, padding restored."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reward_models.tasks import uppercase_copy
from rlft.evaluation import greedy_completions, task_reward
from rlft.models.tiny import build_tiny_from_texts

TEXTS = ["shout: a b c", "A B C", "shout: x y z q", "X Y Z Q"] * 10
ROWS = [
    {"prompt": [{"role": "user", "content": "shout: a b c"}], "answer": "A B C"},
    {"prompt": [{"role": "user", "content": "shout: x y z q r s"}], "answer": "X Y Z Q R S"},
    {"prompt": [{"role": "user", "content": "shout: q"}], "answer": "Q"},
    {"prompt": [{"role": "user", "content": "shout: c b a z"}], "answer": "C B A Z"},
    {"prompt": [{"role": "user", "content": "shout: z z z"}], "answer": "Z Z Z"},
    {"prompt": [{"role": "user", "content": "shout: m n o"}], "answer": "M N O"},
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory):
    path = build_tiny_from_texts(
        TEXTS,
        tmp_path_factory.mktemp("eval") / "m",
        hidden_size=32,
        num_heads=4,
        vocab_size=300,
        max_position_embeddings=64,
    )
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_one_string_per_prompt_deterministic_across_batch_sizes(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = [row["prompt"] for row in ROWS] + ["shout: a b", "hello"]  # conversational and plain
    first = greedy_completions(model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    assert len(first) == len(prompts) and all(isinstance(c, str) for c in first)
    assert all(c == c.strip() and "<|" not in c for c in first)
    assert greedy_completions(model, tokenizer, prompts, max_new_tokens=6, batch_size=3) == first
    # Left padding keeps each prompt's greedy completion independent of its batch-mates.
    one_by_one = [greedy_completions(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert one_by_one == first


def test_restores_padding_side_and_training_mode(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    model.train()
    greedy_completions(model, tokenizer, ["shout: a"], max_new_tokens=2)
    assert tokenizer.padding_side == "right" and model.training
    model.eval()


def test_task_reward_fields(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    seen = {}

    def reward_fn(prompts, completions, **fields):
        seen.update(fields, prompts=prompts)
        return [1.0 if i % 2 == 0 else 0.0 for i in range(len(prompts))]

    result = task_reward(model, tokenizer, ROWS, reward_fn, max_new_tokens=4, batch_size=4)
    assert result["n"] == len(ROWS) and result["task_reward"] == pytest.approx(0.5)
    assert seen["answer"] == [row["answer"] for row in ROWS] and seen["prompts"] == [
        row["prompt"] for row in ROWS
    ]
    assert [s["reward"] for s in result["samples"]] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert result["samples"][0]["prompt"] == ROWS[0]["prompt"]
    assert isinstance(result["samples"][0]["completion"], str)

    real = task_reward(model, tokenizer, ROWS, uppercase_copy, max_new_tokens=8)
    assert real["task_reward"] == 0.0  # an untrained model does not shout


def test_task_reward_needs_rows(model_and_tokenizer):
    with pytest.raises(ValueError, match="no rows"):
        task_reward(*model_and_tokenizer, [], uppercase_copy)


def test_sampled_kl_is_zero_against_itself_and_grows_with_a_perturbation(model_and_tokenizer):
    import copy

    import torch

    from rlft.evaluation import sampled_kl

    model, tokenizer = model_and_tokenizer
    prompts = [row["prompt"] for row in ROWS] * 8
    options = {"samples_per_prompt": 2, "max_new_tokens": 8, "batch_size": 16, "seed": 3}
    same = sampled_kl(model, model, tokenizer, prompts, **options)
    assert same.mean == 0.0 and same.n == len(prompts) * 2
    kls = []
    for scale in (0.02, 0.1, 0.4):
        perturbed = copy.deepcopy(model)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in perturbed.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * scale)
        kls.append(sampled_kl(perturbed, model, tokenizer, prompts, **options))
    means = [k.mean for k in kls]
    assert 0 < means[0] < means[1] < means[2], means
    assert all(k.stderr > 0 for k in kls)
    # seeded: the same call gives the same estimate
    assert sampled_kl(perturbed, model, tokenizer, prompts, **options).mean == kls[-1].mean


def test_sampled_completions_are_seeded_and_leave_the_callers_state_alone(model_and_tokenizer):
    from rlft.evaluation import sampled_completions

    model, tokenizer = model_and_tokenizer
    prompts = ["shout: a b", [{"role": "user", "content": "shout: c d e"}], "shout: f"]
    model.train()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    options = dict(samples_per_prompt=3, max_new_tokens=6, batch_size=4)
    first = sampled_completions(model, tokenizer, prompts, seed=1, **options)
    assert [len(s) for s in first] == [3, 3, 3] and all(isinstance(t, str) for s in first for t in s)
    assert (
        sampled_completions(model, tokenizer, prompts, seed=1, **options) == first
    )  # the same call, the same text
    assert sampled_completions(model, tokenizer, prompts, seed=2, **options) != first  # the seed matters
    assert model.training  # its mode restored
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random stream untouched
