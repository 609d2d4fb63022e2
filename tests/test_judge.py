"""rlft.judge: a pairwise LLM judge asked in both orders, decided by its next-token log-probs of the labels."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlft.config import DEFAULT_JUDGE_TEMPLATE, EvaluateConfig, JudgeConfig
from rlft.judge import judge_pairs, label_token_ids
from rlft.models.tiny import build_tiny_from_texts

TEXTS = ["Which answer is better? Answer A: GOOD x Answer B: bad y Reply with one letter: A or B."] * 20
PROMPTS = ["shout: a b", [{"role": "user", "content": "shout: c"}], "shout: d e f", "shout: q"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_from_texts(
        TEXTS, tmp_path_factory.mktemp("judge") / "m", hidden_size=32, num_heads=4, vocab_size=300
    )
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


class ForcedJudge(torch.nn.Module):
    """A stand-in judge whose next-token logits pick label `prefer(question text)` (0: A, 1: B) by a
    wide margin, at every position: its preference is known, so the verdicts are too."""

    def __init__(self, tokenizer, prefer):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device
        self.tokenizer, self.prefer = tokenizer, prefer
        self.label_ids = label_token_ids(tokenizer, ["A", "B"])
        self.seen: list[str] = []

    @property
    def device(self):
        return self.anchor.device

    def forward(self, input_ids, attention_mask, position_ids=None, use_cache=False):
        logits = torch.zeros(*input_ids.shape, len(self.tokenizer))  # (B, T, V)
        for row in range(input_ids.shape[0]):
            text = self.tokenizer.decode(input_ids[row][attention_mask[row].bool()])
            self.seen.append(text)
            logits[row, :, self.label_ids[self.prefer(text)]] = 5.0
        return SimpleNamespace(logits=logits)


def shown_first_is_good(text: str) -> int:
    """0 (label A) when the answer shown first says GOOD, else 1 (label B)."""
    return 0 if "GOOD" in text.split("Answer B:")[0] else 1


def test_a_position_biased_judge_gives_only_ties(tiny):
    _, tokenizer = tiny
    always_a = ForcedJudge(tokenizer, lambda text: 0)
    judged = judge_pairs(
        always_a, tokenizer, PROMPTS, ["GOOD"] * 4, ["bad"] * 4, template=DEFAULT_JUDGE_TEMPLATE
    )
    assert judged.first == [0, 0, 0, 0] and judged.second == [0, 0, 0, 0]  # always the answer shown first
    assert judged.outcomes.tolist() == [0.5] * 4
    assert all(m == pytest.approx(5.0) for m in judged.margins_first + judged.margins_second)


def test_a_judge_that_reads_the_answers_gives_wins_and_losses(tiny):
    _, tokenizer = tiny
    reader = ForcedJudge(tokenizer, shown_first_is_good)
    a = ["GOOD 1", "bad 2", "GOOD 3", "bad 4"]
    b = ["bad 1", "GOOD 2", "bad 3", "bad 4"]
    judged = judge_pairs(reader, tokenizer, PROMPTS, a, b, template=DEFAULT_JUDGE_TEMPLATE, batch_size=3)
    assert judged.outcomes.tolist() == [1.0, 0.0, 1.0, 0.5]  # neither good: B both times, a tie
    assert judged.first == [0, 1, 0, 1] and judged.second == [1, 0, 1, 1]
    # both orders were asked, each question through the chat template, the prompt and answers in it
    assert len(reader.seen) == 8 and all(
        q.startswith("<|user|>") and q.endswith("<|assistant|>\n") for q in reader.seen
    )
    assert "shout: a b" in reader.seen[0] and "GOOD 1" in reader.seen[0] and "bad 1" in reader.seen[0]
    assert "user: shout: c" in reader.seen[1]  # a conversation is shown as role: content lines
    plain = ForcedJudge(tokenizer, shown_first_is_good)
    judge_pairs(
        plain,
        tokenizer,
        PROMPTS[:1],
        a[:1],
        b[:1],
        template="Q {prompt} A {first} B {second}",
        chat_template=False,
    )
    assert plain.seen[0].endswith("Q shout: a b A GOOD 1 B bad 1")


def test_a_real_tiny_judge_is_deterministic_and_independent_of_its_batch(tiny):
    model, tokenizer = tiny
    a = ["GOOD x", "y", "A B C", "q"]
    b = ["bad y", "GOOD z z z z z", "a b c", "q q q"]
    one = judge_pairs(model, tokenizer, PROMPTS, a, b, template=DEFAULT_JUDGE_TEMPLATE, batch_size=1)
    four = judge_pairs(model, tokenizer, PROMPTS, a, b, template=DEFAULT_JUDGE_TEMPLATE, batch_size=4)
    np.testing.assert_allclose(one.margins_first, four.margins_first, atol=1e-4)  # left padding is invisible
    np.testing.assert_allclose(one.margins_second, four.margins_second, atol=1e-4)
    assert one.outcomes.tolist() == four.outcomes.tolist()
    assert len(set(one.margins_first)) == 4  # the answers change what the judge says
    same = judge_pairs(model, tokenizer, PROMPTS, a, a, template=DEFAULT_JUDGE_TEMPLATE)
    assert same.outcomes.tolist() == [0.5] * 4  # identical answers: both orders ask the same question


def test_labels_must_differ_in_their_first_token(tiny):
    _, tokenizer = tiny
    with pytest.raises(ValueError, match="start with the same token"):
        label_token_ids(tokenizer, ["Apple", "Apricot"])


def test_judge_config_is_validated():
    judge = EvaluateConfig.model_validate(
        {
            "prompts": "p.jsonl",
            "reward": "m:f",
            "judge": {"model": {"path": "./smollm2"}, "template": "{prompt}|{first}|{second} {{json}}"},
        }
    ).judge
    assert judge.model.path == "./smollm2" and judge.labels == ("A", "B") and judge.chat_template
    assert JudgeConfig(model="HuggingFaceTB/SmolLM2-135M-Instruct", labels=["1", "2"]).model.hub
    for bad, message in (
        ({"template": "{prompt} {first}"}, r"has no \{second\}"),
        ({"template": "{prompt} {first} {second} {answer}"}, "cannot fill it in"),
        ({"template": "{prompt} {first} {second} {"}, "cannot fill it in"),
        ({"labels": ["A", "A"]}, "two different"),
        ({"temperature": 0}, "Extra inputs"),
    ):
        with pytest.raises(ValidationError, match=message):
            JudgeConfig.model_validate({"model": "m/m", **bad})


def test_a_judge_leaves_the_stages_fingerprints_alone(tmp_path):
    from conftest import QUICKSTART_DATA

    from rlft.pipeline import stage_fingerprint
    from rlft.pipeline_file import pipeline_from_dict

    evaluate = {
        "prompts": f"{QUICKSTART_DATA}/heldout_prompts.jsonl",
        "reward": "reward_models.tasks:uppercase_copy",
    }
    sft = {
        "name": "sft",
        "kind": "sft",
        "model": "m/m",
        "data": {"train": f"{QUICKSTART_DATA}/sft_train.jsonl"},
    }

    def fingerprint(evaluate):
        pipeline = pipeline_from_dict({"name": "p", "evaluate": evaluate, "stages": [sft]}, base_dir=tmp_path)
        return stage_fingerprint(pipeline, pipeline.stages[-1], tmp_path, {}, {})

    assert fingerprint({**evaluate, "judge": {"model": "m/judge"}}) == fingerprint(evaluate)
    assert fingerprint({**evaluate, "max_new_tokens": 9}) != fingerprint(
        evaluate
    )  # what stages use still counts


def test_validate_checks_the_judges_model_folder(tmp_path):
    """A judge only serves `rlft eval`, but a missing or broken folder is found by `rlft validate` already."""
    from conftest import QUICKSTART_DATA

    from rlft.errors import ConfigError
    from rlft.pipeline_file import check_files, pipeline_from_dict

    def check(judge_model):
        evaluate = {
            "prompts": f"{QUICKSTART_DATA}/heldout_prompts.jsonl",
            "reward": "reward_models.tasks:uppercase_copy",
            "judge": {"model": judge_model},
        }
        sft = {
            "name": "sft",
            "kind": "sft",
            "model": "m/m",
            "data": {"train": f"{QUICKSTART_DATA}/sft_train.jsonl"},
        }
        check_files(
            pipeline_from_dict({"name": "p", "evaluate": evaluate, "stages": [sft]}, base_dir=tmp_path)
        )

    with pytest.raises(ConfigError, match=r"evaluate\.judge\.model\.path: .*nowhere does not exist"):
        check({"path": "nowhere"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"evaluate\.judge\.model\.path: .*empty"):
        check({"path": "empty"})
    check("some-org/some-judge")  # a hub name: checked when `rlft eval` loads it
