"""Tokenisation checks on tiny tokenizers: renders, doubled BOS, prompt prefix, lengths, truncation."""

import pytest

from rlft.data.tokenization import length_stats, log_lines, sample_indices, tokenization_checks
from rlft.errors import DataError
from rlft.models.chat_template import DEFAULT_CHAT_TEMPLATE

TEXTS = ["hello world"] * 20 + ["shout: a b c", "A B C", "the sky is blue"] * 10


def msg(role, content):
    return {"role": role, "content": content}


@pytest.fixture(scope="module")
def tokenizer():
    from rlft.models.tiny import train_tokenizer

    return train_tokenizer(TEXTS)


@pytest.fixture(scope="module")
def bos_tokenizer():
    """A tokenizer that adds a BOS token itself *and* whose chat template writes one."""
    from tokenizers import processors

    from rlft.models.tiny import train_tokenizer

    tok = train_tokenizer(TEXTS)
    tok.add_special_tokens({"bos_token": "<|bos|>"})
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A $B", special_tokens=[("<|bos|>", tok.bos_token_id)]
    )
    tok.chat_template = "{{ bos_token }}" + DEFAULT_CHAT_TEMPLATE
    return tok


def dataset(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


def conversational_pc(n=3):
    return dataset(
        [
            {"prompt": [msg("user", "shout: a b c")], "completion": [msg("assistant", "A B C")]}
            for _ in range(n)
        ]
    )


def test_conversational_prompt_completion(tokenizer):
    result = tokenization_checks(
        conversational_pc(), tokenizer, format="prompt_completion", style="conversational"
    )
    assert result["renders"][0] == {
        "row": 1,
        "completion": "<|user|>\nshout: a b c<|end|>\n<|assistant|>\nA B C<|end|>",
    }
    assert len(result["renders"]) == 3
    assert (result["rows"], result["rows_checked"], result["sampled"]) == (3, 3, False)
    assert result["bos_token"] is None and result["doubled_bos"] == 0
    assert (result["prefix_checked"], result["prefix_mismatch"]) == (3, 0)
    assert list(result["lengths"]) == ["prompt", "completion", "sequence"]

    def ids(messages, **kwargs):  # TRL's way: tokenised by the template itself
        return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"]

    prompt = ids([msg("user", "shout: a b c")], add_generation_prompt=True)
    full = ids([msg("user", "shout: a b c"), msg("assistant", "A B C")])
    assert result["lengths"]["prompt"]["max"] == len(prompt)
    assert result["lengths"]["sequence"]["max"] == len(full)
    assert result["lengths"]["completion"]["max"] == len(full) - len(prompt)
    assert result["over_max_length"] is None


def test_doubled_bos_is_counted_and_logged(bos_tokenizer):
    result = tokenization_checks(
        conversational_pc(2), bos_tokenizer, format="prompt_completion", style="conversational"
    )
    assert result["bos_token"] == "<|bos|>"
    assert result["doubled_bos"] == 2
    assert any(line.startswith("WARNING doubled BOS: 2 of 2 rows") for line in log_lines(result))
    # plain text gets one BOS from the tokenizer: not doubled
    standard = dataset([{"prompt": "shout: a b c", "completion": " A B C"}])
    checked = tokenization_checks(standard, bos_tokenizer, format="prompt_completion", style="standard")
    assert checked["doubled_bos"] == 0 and checked["prefix_mismatch"] == 0


def test_standard_prompt_that_merges_with_its_completion(tokenizer):
    ds = dataset([{"prompt": "hel", "completion": "lo world"}, {"prompt": "hello", "completion": " world"}])
    result = tokenization_checks(ds, tokenizer, format="prompt_completion", style="standard")
    assert (result["prefix_mismatch"], result["prefix_mismatch_text"]) == (1, 0)  # tokens merge, text agrees
    assert result["prefix_mismatch_example"] == {"row": 1, "prompt_end_left_out": "hel"}
    assert any("WARNING prefix mismatch: in 1 of 2 rows" in line for line in log_lines(result))


def test_template_that_renders_the_prompt_differently_alone(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = DEFAULT_CHAT_TEMPLATE.replace(
        "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}",
        "{%- if add_generation_prompt -%}{{ '<|assistant|>\\nthink\\n' }}",
    )
    ds = dataset(
        [
            {
                "prompt": [msg("user", "shout: a b c")],
                "chosen": [msg("assistant", "A B C")],
                "rejected": [msg("assistant", "a b c")],
            }
        ]
    )
    result = tokenization_checks(ds, tok, format="preference", style="conversational")
    assert (result["prefix_mismatch"], result["prefix_mismatch_text"]) == (1, 1)
    assert set(result["renders"][0]) == {"row", "chosen", "rejected"}


def test_implicit_preference_is_checked_with_its_extracted_prompt(tokenizer):
    ds = dataset(
        [
            {
                "chosen": [msg("user", "shout: a b c"), msg("assistant", "A B C")],
                "rejected": [msg("user", "shout: a b c"), msg("assistant", "a b c")],
            }
        ]
    )
    result = tokenization_checks(ds, tokenizer, format="implicit_preference", style="conversational")
    assert list(result["lengths"]) == ["prompt", "chosen", "rejected", "sequence"]
    assert result["prefix_mismatch"] == 0
    assert result["renders"][0]["rejected"].endswith("<|assistant|>\na b c<|end|>")


def test_max_length_counts_long_rows_and_prompts_that_fill_it(tokenizer):
    prompts = ["hello", "hello world hello world", "hello world " * 10]
    assert [len(tokenizer(p)["input_ids"]) for p in prompts] == [1, 5, 30]
    ds = dataset([{"prompt": p, "completion": " world world world"} for p in prompts])
    result = tokenization_checks(ds, tokenizer, format="prompt_completion", style="standard", max_length=6)
    assert result["lengths"]["sequence"]["max"] == 33
    assert result["over_max_length"] == 2
    assert result["prompt_over_max_length"] == 1
    assert any(line.startswith("WARNING max_length 6: 2 of 3 rows are longer") for line in log_lines(result))


def test_language_modeling_and_contrastive(tokenizer):
    text = tokenization_checks(
        dataset([{"text": "hello world"}]), tokenizer, format="language_modeling", style="standard"
    )
    assert list(text["lengths"]) == ["text", "sequence"] and text["prefix_checked"] == 0
    assert text["lengths"]["text"]["max"] == 2  # "hello", " world"
    messages = dataset([{"messages": [msg("user", "hi"), msg("assistant", "hello world")]}])
    chat = tokenization_checks(messages, tokenizer, format="language_modeling", style="conversational")
    assert chat["renders"][0]["messages"] == "<|user|>\nhi<|end|>\n<|assistant|>\nhello world<|end|>"
    pairs = dataset([{"anchor": "hello", "positive": "hello world", "negative": "the sky is blue"}])
    result = tokenization_checks(pairs, tokenizer, format="contrastive", style="standard")
    assert list(result["lengths"]) == ["anchor", "positive", "negative", "sequence"]
    assert result["lengths"]["sequence"]["max"] == max(
        result["lengths"][f]["max"] for f in ("anchor", "positive", "negative")
    )


def test_big_datasets_are_sampled_with_a_seed(tokenizer):
    ds = dataset([{"text": "hello " * (i % 7 + 1)} for i in range(50)])
    first = tokenization_checks(
        ds, tokenizer, format="language_modeling", style="standard", sample_rows=10, seed=3
    )
    again = tokenization_checks(
        ds, tokenizer, format="language_modeling", style="standard", sample_rows=10, seed=3
    )
    assert (first["rows"], first["rows_checked"], first["sampled"]) == (50, 10, True)
    assert first["lengths"] == again["lengths"]
    assert "a seeded sample of 10 of 50 rows (seed 3)" in log_lines(first)[0]
    assert sample_indices(50, limit=10, seed=3) == sorted(sample_indices(50, limit=10, seed=3))
    assert sample_indices(5, limit=10) == [0, 1, 2, 3, 4]


def test_conversational_data_needs_a_chat_template(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    with pytest.raises(DataError, match="the tokenizer has no chat template"):
        tokenization_checks(conversational_pc(1), tok, format="prompt_completion", style="conversational")


def test_length_stats_use_nearest_rank():
    assert length_stats(list(range(1, 101))) == {"p50": 50, "p90": 90, "p99": 99, "max": 100, "mean": 50.5}
    assert length_stats([7]) == {"p50": 7, "p90": 7, "p99": 7, "max": 7, "mean": 7.0}
    assert length_stats([])["max"] is None
