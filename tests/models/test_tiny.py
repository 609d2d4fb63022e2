"""rlft.models.tiny: a real Llama + BPE tokenizer that reloads through from_pretrained."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlft.models.chat_template import DEFAULT_CHAT_TEMPLATE
from rlft.models.tiny import TinySpec, build_tiny, build_tiny_from_texts

TEXTS = [f"shout: {' '.join(w)}" for w in ("abc", "bqxk", "hello", "zyxwv", "mnop")] * 4 + [
    "A B C",
    "B Q X K",
] * 4
SMALL = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "vocab_size": 300, "max_position_embeddings": 64}
PROMPT = [{"role": "user", "content": "shout: b q x k"}]
COMPLETION = [{"role": "assistant", "content": "B Q X K"}]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_from_texts(TEXTS, tmp_path_factory.mktemp("tiny") / "model", **SMALL)


def test_reloads_with_pad_eos_template_and_no_bos(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)

    assert model.config.model_type == "llama"
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert model.config.intermediate_size == 4 * 32
    assert model.dtype == torch.float32
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.eos_token == "<|end|>"
    assert tokenizer.bos_token is None and model.config.bos_token_id is None
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    assert tokenizer.padding_side == "right"
    assert len(tokenizer) <= model.config.vocab_size <= 300
    assert (tiny_dir / "model.safetensors").exists()
    # Plain text gets no BOS (nor anything else) added.
    assert tokenizer.decode(tokenizer("shout: a b c")["input_ids"]) == "shout: a b c"


def test_role_tags_are_single_special_tokens(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    for tag in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|pad|>"):
        ids = tokenizer(tag)["input_ids"]
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids) == [tag]
        assert tag in tokenizer.all_special_tokens


def test_chat_prompt_renders_and_round_trips(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    prompt = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|user|>\nshout: b q x k<|end|>\n<|assistant|>\n"
    assert tokenizer.decode(tokenizer(prompt)["input_ids"]) == prompt
    # Text the tokenizer never saw still round-trips: byte-level BPE has no unknown token.
    assert tokenizer.decode(tokenizer("Grüße, 世界!")["input_ids"]) == "Grüße, 世界!"


def test_generation_prompt_is_a_token_prefix_of_prompt_plus_completion(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    prompt_ids = tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    full_ids = tokenizer.apply_chat_template(PROMPT + COMPLETION, tokenize=True, return_dict=True)
    prompt_ids, full_ids = prompt_ids["input_ids"], full_ids["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    assert full_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(full_ids[len(prompt_ids) :], skip_special_tokens=True) == "B Q X K"


def test_same_inputs_give_identical_tokenizer_and_weights(tmp_path, tiny_dir):
    again = build_tiny_from_texts(TEXTS, tmp_path / "again", **SMALL)
    assert (again / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()
    first, second = load_file(tiny_dir / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)

    other_seed = load_file(
        build_tiny_from_texts(TEXTS, tmp_path / "seed1", seed=1, **SMALL) / "model.safetensors"
    )
    assert not all(torch.equal(first[k], other_seed[k]) for k in first)


def test_build_does_not_disturb_the_callers_rng(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_from_texts(TEXTS, tmp_path / "m", **SMALL)
    assert torch.equal(torch.rand(3), expected)


def test_build_tiny_reads_every_string_of_jsonl_rows(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [
        {
            "prompt": [{"role": "user", "content": "shout: q q q"}],
            "completion": [{"role": "assistant", "content": "QQQ ZZZ"}],
        }
    ] * 20
    (data / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = TinySpec(tokenizer_texts=["rows.jsonl"], **SMALL)
    out = build_tiny(spec, tmp_path / "model", base_dir=data)

    tokenizer = AutoTokenizer.from_pretrained(out)
    # Strings nested in chat messages were training text, so their words became single tokens.
    assert len(tokenizer("QQQ")["input_ids"]) == 1
    assert len(tokenizer("shout")["input_ids"]) == 1
    # Building again over an existing folder replaces it, leaving no temp folders behind.
    build_tiny(spec, tmp_path / "model", base_dir=data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "model"]


def test_spec_rejects_unknown_keys():
    with pytest.raises(ValueError, match="hiden_size"):
        TinySpec(hiden_size=64)
