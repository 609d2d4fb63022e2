"""`rlft generate`: the completion the evaluation would see, seeded sampling, a prompt-tuned folder with its
prompt, a reward model refused, and `--chat` answering piped lines with the conversation so far."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import QUICKSTART_DATA

from rlft.cli import main
from rlft.evaluation import greedy_completions
from rlft.models.generate import Decoding, chat, fit, load_for_generation
from rlft.models.tiny import build_tiny_from_texts

PROMPT = "shout: a b c"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny model whose weights are scrambled (seeded), so that greedy decoding says something: a
    freshly initialised one with tied embeddings repeats its last input token (a newline: nothing)."""
    from transformers import AutoModelForCausalLM

    texts = (QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines()[:300]
    folder = build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("g") / "tiny", hidden_size=32, num_layers=2, num_heads=2
    )
    model = AutoModelForCausalLM.from_pretrained(folder)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=generator))
    model.save_pretrained(folder)
    return folder


def printed(capsys) -> str:
    return capsys.readouterr().out.rstrip("\n").split("\n")[-1]


def test_generate_prints_the_greedy_completion_the_evaluation_sees(tiny, capsys):
    model, tokenizer = load_for_generation(tiny)
    chat_prompt = [{"role": "user", "content": PROMPT}]
    (expected,) = greedy_completions(model, tokenizer, [chat_prompt], max_new_tokens=8)
    (expected_raw,) = greedy_completions(model, tokenizer, [PROMPT], max_new_tokens=8)
    assert expected and expected != expected_raw  # the chat template matters, so the test can tell them apart

    assert main(["generate", str(tiny), "--prompt", PROMPT, "--max-new-tokens", "8"]) == 0
    assert printed(capsys) == expected
    assert main(["generate", str(tiny), "--prompt", PROMPT, "--raw", "--max-new-tokens", "8"]) == 0
    assert printed(capsys) == expected_raw


def test_sampling_is_seeded(tiny, capsys):
    def sample(seed: int) -> str:
        args = [
            "generate",
            str(tiny),
            "--prompt",
            PROMPT,
            "--max-new-tokens",
            "12",
            "--sample",
            "--seed",
            str(seed),
        ]
        assert main(args) == 0
        return printed(capsys)

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    assert main(["generate", str(tiny), "--prompt", PROMPT, "--temperature", "0.5"]) == 2
    assert "add --sample" in capsys.readouterr().err


def test_a_prompt_tuned_folder_generates_with_its_prompt(tmp_path, tiny, capsys):
    from transformers import AutoTokenizer

    from rlft.models.loading import ResolvedModel, load_causal_lm
    from rlft.models.tuning import PromptTuning, apply_tuning, save_model

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    model = apply_tuning(load_causal_lm(ResolvedModel(str(tiny))), PromptTuning(num_virtual_tokens=4))
    with torch.no_grad():  # a prompt far from any text, so that it changes what the model says
        model.prompt_encoder[model.active_adapter].embedding.weight.normal_(0, 2.0)
    chat_prompt = [{"role": "user", "content": PROMPT}]
    (with_prompt,) = greedy_completions(model, tokenizer, [chat_prompt], max_new_tokens=8)
    save_model(model, tokenizer, tmp_path / "stage")  # the base at the root, the prompt in adapter/
    base, _ = load_for_generation(tiny)
    (without,) = greedy_completions(base, tokenizer, [chat_prompt], max_new_tokens=8)
    assert with_prompt != without

    assert main(["generate", str(tmp_path / "stage"), "--prompt", PROMPT, "--max-new-tokens", "8"]) == 0
    assert printed(capsys) == with_prompt


def test_a_reward_model_is_refused(tmp_path, tiny, capsys):
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1).save_pretrained(tmp_path / "rm")
    assert main(["generate", str(tmp_path / "rm"), "--prompt", PROMPT]) == 2
    err = capsys.readouterr().err
    assert "is a reward model" in err and "reward_models.RewardModel.from_pretrained" in err


def test_chat_answers_piped_lines_with_the_conversation_so_far(tiny):
    lines = ["shout: a b", "shout: x y z"]
    model, tokenizer = load_for_generation(tiny)
    decoding = Decoding(max_new_tokens=6)
    answers: list[str] = []
    conversation = chat(model, tokenizer, [*lines, "", "never read"], answers.append, decoding)
    assert [m["role"] for m in conversation] == ["user", "assistant", "user", "assistant"]
    (alone,) = greedy_completions(
        model, tokenizer, [[{"role": "user", "content": lines[1]}]], max_new_tokens=6
    )
    (in_context,) = greedy_completions(model, tokenizer, [conversation[:3]], max_new_tokens=6)
    assert answers[1] == in_context != alone  # the second answer saw the first exchange

    out = subprocess.run(
        [sys.executable, "-m", "rlft", "generate", str(tiny), "--chat", "--max-new-tokens", "6"],
        input="\n".join([*lines, "", "never read"]) + "\n",
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=True,
    ).stdout
    assert out == "".join(f"assistant: {a}\n" for a in answers)


def test_fit_drops_the_oldest_exchanges_first(tiny):
    _, tokenizer = load_for_generation(tiny)
    turns = [
        {"role": "user", "content": "shout: a b c d e f g"},
        {"role": "assistant", "content": "A B C D E F G"},
        {"role": "user", "content": "shout: h i"},
    ]
    assert fit(tokenizer, [], turns, limit=None, reserve=8) == turns
    assert fit(tokenizer, [], turns, limit=10_000, reserve=8) == turns
    assert fit(tokenizer, [], turns, limit=30, reserve=8) == turns[2:]
