"""reward_models.model.RewardModel on a tiny reward model: TRL's encoding, batching, stats, tokenizers."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from reward_models import build_reward
from reward_models.model import (
    STATS_FILE,
    RewardModel,
    RewardModelError,
    decode_policy_ids,
    load_reward_stats,
    reward_stats,
)
from rlft.models.tiny import build_tiny_from_texts, train_tokenizer

TEXTS = [f"shout: {' '.join(w)}" for w in ("abc", "bqxk", "hello", "zyxwv", "mnop")] * 4 + [
    "A B C",
    "B Q X K",
] * 4
SMALL = {
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 4,
    "vocab_size": 300,
    "max_position_embeddings": 128,
}
STATS = {"mean": 0.25, "std": 2.0, "n": 10}

PROMPTS = [
    "shout: b q x k",
    "shout: a",
    "shout: hello world, how are you?",
    "",
    "shout: z y",
    "shout: m n o p",
]
COMPLETIONS = ["B Q X K", "A", "b q x k and more text here", "x", "Z Y<|end|>", ""]


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    """A tiny causal Llama turned into a one-output sequence classifier, saved as a reward artifact."""
    root = tmp_path_factory.mktemp("rm")
    base = build_tiny_from_texts(TEXTS, root / "base", **SMALL)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0)  # the default init gives near-equal scores; spread them
    tokenizer = AutoTokenizer.from_pretrained(base)
    model.config.pad_token_id = tokenizer.pad_token_id
    out = root / "reward"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / STATS_FILE).write_text(json.dumps(STATS))
    return out


@pytest.fixture(scope="module")
def rm(rm_dir):
    return RewardModel.from_pretrained(rm_dir, device="cpu", batch_size=1)


def manual_score(rm_dir, ids):
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, 0].item()


def test_standard_text_scores_as_a_direct_forward_pass(rm_dir, rm):
    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    ids = tokenizer("shout: b q x k" + "B Q X K" + "<|end|>")["input_ids"]
    assert rm.encode(["shout: b q x k"], ["B Q X K"]) == [ids]
    assert rm.encode(["shout: b q x k"], ["B Q X K<|end|>"]) == [ids]  # eos not doubled
    assert rm.score(["shout: b q x k"], ["B Q X K"]) == [manual_score(rm_dir, ids)]


def test_conversational_scores_as_a_direct_forward_pass(rm_dir, rm):
    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    prompt = [{"role": "user", "content": "shout: b q x k"}]
    completion = [{"role": "assistant", "content": "B Q X K"}]
    ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    assert tokenizer.decode(ids) == "<|user|>\nshout: b q x k<|end|>\n<|assistant|>\nB Q X K<|end|>"
    assert rm.encode([prompt], [completion]) == [ids]
    assert rm.encode([prompt], ["B Q X K"]) == [ids]  # a string completion becomes an assistant message
    assert rm.score([prompt], [completion]) == [manual_score(rm_dir, ids)]


def test_encoding_equals_trl_reward_trainer(rm_dir, rm):
    """The ids are those RewardTrainer trains on (its _prepare_dataset), standard and conversational."""
    from types import SimpleNamespace

    from datasets import Dataset
    from trl import RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    args = SimpleNamespace(max_length=None, dataset_num_proc=None)  # the two RewardConfig fields it reads
    user = [{"role": "user", "content": "shout: b q x k"}]
    cases = [
        ("shout: b q x k", "B Q X K", "b q x k"),
        (user, [{"role": "assistant", "content": "B Q X K"}], [{"role": "assistant", "content": "b q"}]),
    ]
    for prompt, chosen, rejected in cases:
        data = Dataset.from_list([{"prompt": prompt, "chosen": chosen, "rejected": rejected}])
        row = RewardTrainer._prepare_dataset(None, data, tokenizer, args, "train")[0]
        assert rm.encode([prompt, prompt], [chosen, rejected]) == [row["chosen_ids"], row["rejected_ids"]]


def test_batching_and_padding_side_do_not_change_scores(rm_dir, rm):
    one = rm.score(PROMPTS, COMPLETIONS)
    assert len(set(one)) == len(one)  # the scores do differ, so the comparisons below mean something
    batched = RewardModel.from_pretrained(rm_dir, device="cpu", batch_size=8)
    assert batched.score(PROMPTS, COMPLETIONS) == pytest.approx(one, abs=1e-5)
    batched.tokenizer.padding_side = "left"  # ignored: batches are right-padded, as in training
    assert batched.score(PROMPTS, COMPLETIONS) == pytest.approx(one, abs=1e-5)
    reverse = batched.score(PROMPTS[::-1], COMPLETIONS[::-1])
    assert reverse == pytest.approx(one[::-1], abs=1e-5)
    assert rm(PROMPTS, COMPLETIONS, answer=["x"] * len(PROMPTS)) == one  # a reward function, fields ignored
    assert rm.score([], []) == []


def test_normalize_uses_reward_stats(rm_dir, rm):
    raw = rm.score(PROMPTS, COMPLETIONS)
    normalized = RewardModel.from_pretrained(rm_dir, device="cpu", batch_size=1, normalize=True)
    assert normalized.stats == STATS
    assert normalized.score(PROMPTS, COMPLETIONS) == pytest.approx([(s - 0.25) / 2.0 for s in raw], abs=1e-12)


def test_normalize_without_stats_is_a_clear_error(rm_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in rm_dir.iterdir():
        if f.name != STATS_FILE:
            (bare / f.name).write_bytes(f.read_bytes())
    assert RewardModel.from_pretrained(bare, device="cpu").stats is None
    with pytest.raises(RewardModelError, match="normalize=True needs reward_stats.json"):
        RewardModel.from_pretrained(bare, device="cpu", normalize=True)
    (bare / STATS_FILE).write_text(json.dumps({"mean": 0.0, "std": 0.0, "n": 3}))
    with pytest.raises(RewardModelError, match="std > 0"):
        load_reward_stats(bare)


def test_a_causal_lm_folder_is_not_a_reward_model(rm_dir, tmp_path):
    with pytest.raises(RewardModelError, match="holds a LlamaForCausalLM, not a reward model"):
        RewardModel.from_pretrained(rm_dir.parent / "base", device="cpu")
    with pytest.raises(RewardModelError, match="no such folder"):
        RewardModel.from_pretrained(tmp_path / "missing")


def test_pad_id_comes_from_the_tokenizer_when_the_config_has_none(rm_dir):
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir)
    model.config.pad_token_id = None
    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    rm = RewardModel(model, tokenizer, batch_size=4)
    assert rm.pad_token_id == tokenizer.pad_token_id == model.config.pad_token_id


def test_cross_tokenizer_policy_ids_rescore_as_the_text(rm, rm_dir):
    """A policy with another tokenizer: its ids, decoded and re-encoded, score exactly as the text."""
    policy = train_tokenizer(
        ["the quick brown fox jumps over the lazy dog", "shout: hello", "B Q X K, A B C!"] * 5, vocab_size=280
    )
    assert len(policy) != len(AutoTokenizer.from_pretrained(rm_dir))
    completions = [c.removesuffix("<|end|>") for c in COMPLETIONS]
    prompt_ids = [policy(p)["input_ids"] for p in PROMPTS]
    completion_ids = [policy(c)["input_ids"] + [policy.eos_token_id] for c in completions]
    assert prompt_ids[0] != rm.tokenizer(PROMPTS[0])["input_ids"]  # really different tokenizations
    # As PPO holds them: prompts left-padded, completions right-padded after eos, as tensors.
    width = max(map(len, prompt_ids))
    padded_prompts = [torch.tensor([policy.pad_token_id] * (width - len(x)) + x) for x in prompt_ids]
    padded_completions = [x + [policy.pad_token_id] * 3 for x in completion_ids]
    assert decode_policy_ids(policy, padded_prompts, padded_completions) == (PROMPTS, completions)
    expected = rm.score(PROMPTS, completions)
    assert rm.score_token_ids(policy, padded_prompts, padded_completions) == expected


def test_build_reward_loads_models_by_stage_name(rm_dir, rm):
    raw = rm.score(PROMPTS, COMPLETIONS)
    spec = {
        "sum": [
            {"from": "reward", "weight": 2.0, "normalize": True, "kwargs": {"batch_size": 1}},
            {"path": str(rm_dir), "weight": -1.0, "kwargs": {"batch_size": 1}},
        ]
    }
    reward = build_reward(spec, stage_paths={"reward": str(rm_dir)}, device="cpu")
    total = reward(PROMPTS, COMPLETIONS)
    assert reward.last_components["reward"] == pytest.approx([(s - 0.25) / 2.0 for s in raw], abs=1e-12)
    assert reward.last_components["reward_2"] == raw  # both are named after the folder: made unique
    assert total == pytest.approx([2 * (s - 0.25) / 2.0 - s for s in raw], abs=1e-12)


def test_reward_stats_helper():
    assert reward_stats([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(2**0.5), "n": 2}
    with pytest.raises(ValueError, match="at least 2 scores"):
        reward_stats([1.0])
