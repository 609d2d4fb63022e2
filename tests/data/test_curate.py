"""Curation steps (rlft.data.curate): what each removes, why, the report, the rejects file, and
an end-to-end load_stage_data with a curate: block."""

import json
import random

import pydantic
import pytest
import yaml

from rlft.data import DataConfig, load_stage_data
from rlft.data.config import CurateConfig
from rlft.data.curate import curate, normalize
from rlft.data.validate import Rejects
from rlft.errors import DataError


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """Keep these tests' Arrow caches out of ~/.cache/huggingface."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / ".hf_datasets_cache"))


WORDS = (
    "apple banana cherry delta echo foxtrot golf hotel india juliet kilo lima mike oscar papa romeo".split()
)


def sentence(rng, n=40):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def pair(prompt, chosen="yes", rejected="no", **extra):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


def msg(role, content):
    return {"role": role, "content": content}


def run(rows, tmp_path, *, format="preference", style="standard", seed=0, tokenizer=None, **cfg):
    """curate() over rows; returns (kept rows, report, rejects records)."""
    from datasets import Dataset

    path = tmp_path / "rejects.jsonl"
    with Rejects(path) as rejects:
        kept, report = curate(
            Dataset.from_list(rows),
            CurateConfig(**cfg),
            format=format,
            style=style,
            seed=seed,
            tokenizer=tokenizer,
            rejects=rejects,
        )
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return kept.to_list(), report, records


@pytest.fixture(scope="module")
def tokenizer():
    from rlft.models.tiny import train_tokenizer

    rng = random.Random(0)
    return train_tokenizer([sentence(rng) for _ in range(50)] + ["yes no maybe paris london"] * 5)


# --- config ----------------------------------------------------------------------------------


def test_everything_is_off_by_default():
    cfg = DataConfig(train="t.jsonl")
    assert cfg.curate.steps() == []
    assert cfg.decontaminate.exact and cfg.decontaminate.ngram == 13
    assert CurateConfig(near_dedup=True).near_dedup.threshold == 0.85  # `near_dedup: true` = defaults
    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
        CurateConfig(dedupe=True)
    with pytest.raises(pydantic.ValidationError, match="strategy cap needs max_per_category"):
        CurateConfig(balance={"column": "source"})
    with pytest.raises(pydantic.ValidationError, match=r"min_prompt_tokens \(9\) is above max_prompt_tokens"):
        CurateConfig(length={"min_prompt_tokens": 9, "max_prompt_tokens": 3})
    with pytest.raises(pydantic.ValidationError):
        CurateConfig(flip_fraction=1.0)


# --- dedup and near_dedup ------------------------------------------------------------------------


def test_normalize_is_nfkc_lowercase_collapsed_whitespace():
    assert normalize("  The \uff26ile\n\tis  \ufb01ne ") == "the file is fine"


def test_exact_dedup_keeps_the_first_and_records_the_rest(tmp_path):
    rows = [
        pair("What is 2+2?", "4", "5"),
        pair("what is  2+2?", "4 ", "5"),  # same after normalisation
        pair("What is 2+2?", "4", "6"),  # another rejected: a different row
        pair("WHAT IS \uff12+\uff12?", "4", "5"),  # full-width digits: NFKC
    ]
    kept, report, records = run(rows, tmp_path, dedup=True)
    assert kept == [rows[0], rows[2]]
    assert report == [{"step": "dedup", "removed": 2, "rows_after": 2}]
    assert [r["data"] for r in records] == [rows[1], rows[3]]
    assert {r["step"] for r in records} == {"dedup"}
    assert all(r["duplicate_of"] == rows[0] and "exact duplicate" in r["reason"] for r in records)
    assert records[0]["key"] == "data.train"


def test_exact_dedup_of_conversations_and_text(tmp_path):
    convo = [msg("user", "hi"), msg("assistant", "Hello")]
    rows = [
        {"messages": convo},
        {"messages": [msg("user", "HI"), msg("assistant", "hello")]},
        {"messages": convo[:1]},
    ]
    kept, _, _ = run(rows, tmp_path, format="language_modeling", style="conversational", dedup=True)
    assert kept == [rows[0], rows[2]]
    kept, _, _ = run([{"text": "a b"}, {"text": "A  B"}], tmp_path, format="language_modeling", dedup=True)
    assert kept == [{"text": "a b"}]


def test_near_dedup_removes_rows_differing_by_a_word_and_keeps_distinct_ones(tmp_path):
    rng = random.Random(0)
    originals = [sentence(rng) for _ in range(6)]
    rows = [pair(p) for p in originals]
    for k in (0, 3):  # near-duplicates: one word replaced, one word dropped
        words = originals[k].split()
        words[10] = "zulu"
        rows.append(pair(" ".join(words)))
        rows.append(pair(" ".join(words[:20] + words[21:])))
    kept, report, records = run(rows, tmp_path, near_dedup={"threshold": 0.85})
    assert [r["prompt"] for r in kept] == originals
    assert report[0]["step"] == "near_dedup" and report[0]["removed"] == 4 and report[0]["rows_after"] == 6
    assert [r["duplicate_of"]["prompt"] for r in records] == [originals[0]] * 2 + [originals[3]] * 2
    assert all(
        "near-duplicate of an earlier row: estimated Jaccard similarity" in r["reason"] for r in records
    )
    # the same data with another seed finds the same duplicates (they are well above the threshold)
    assert run(rows, tmp_path, seed=5, near_dedup=True)[0] == kept


def test_near_dedup_keeps_unrelated_short_rows(tmp_path):
    rows = [pair(f"question number {i}", f"answer {i}", f"wrong {i}") for i in range(20)]
    kept, report, _ = run(rows, tmp_path, near_dedup={"threshold": 0.95})
    assert len(kept) == 20 and report[0]["removed"] == 0


# texts of every kind shingle_hashes meets: empty, shorter than a shingle, non-ASCII, long
TEXTS = [
    "",
    "ab",
    "abcd",
    "abcde",
    "h\u00e9llo w\u00f6rld \U0001f600 caf\u00e9",
    "x" * 3,
    "a\x00b\x00c",
    "lorem " * 300,
]


def test_shingle_hashes_of_a_batch_are_each_texts_own():
    import numpy as np

    from rlft.data.curate import _rolling_hashes, shingle_hashes

    hashes, bounds = shingle_hashes(TEXTS, 5)
    for i, text in enumerate(TEXTS):
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        alone = _rolling_hashes(points, max(1, min(5, len(text))))
        assert hashes[bounds[i] : bounds[i + 1]].tolist() == alone.tolist()
    assert bounds[1] == 0 and bounds[2] - bounds[1] == 1 and bounds[-1] - bounds[-2] == 1800 - 4


@pytest.mark.parametrize("block", [7, 8192])  # rows split across permutation blocks, and not
def test_minhash_signatures_are_datasketchs(monkeypatch, block):
    """The numpy signatures equal datasketch 2's MinHash (scheme affine32, hashes given as ints)."""
    import numpy as np
    from datasketch import MinHash

    from rlft.data import curate

    monkeypatch.setattr(curate, "PERMUTE_SHINGLES", block)
    hashes, bounds = curate.shingle_hashes(TEXTS, 5)
    signatures = curate.minhash_signatures(hashes, bounds, num_perm=64, seed=2**32 + 3)
    try:
        MinHash(num_perm=64, seed=3, scheme="affine32")
    except TypeError:
        pytest.skip("datasketch < 2 has no affine32 scheme")
    for i in range(len(TEXTS)):
        reference = MinHash(num_perm=64, seed=3, scheme="affine32", hashfunc=int)
        reference.update_batch(hashes[bounds[i] : bounds[i + 1]].tolist())
        assert np.array_equal(signatures[i], reference.hashvalues), TEXTS[i][:20]


def test_minhash_estimates_track_the_true_jaccard_similarity():
    """Over random text pairs, the share of equal signature values is an unbiased estimate of the
    Jaccard similarity J of the shingle sets with standard error sqrt(J(1 - J) / num_perm) (each
    value is equal with probability J, independently): so the errors in standard errors, z, have
    mean about 0 and mean square about 1, and none is far out."""
    import numpy as np

    from rlft.data.curate import minhash_signatures, shingle_hashes

    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    z = []
    for _ in range(400):
        words = ["".join(rng.choices(letters, k=rng.randint(2, 8))) for _ in range(rng.randint(20, 120))]
        changed = rng.uniform(0.02, 0.5)  # the share of words replaced
        other = [rng.choice(letters) * 3 if rng.random() < changed else w for w in words]
        texts = [" ".join(words), " ".join(other)]
        shingles = [{t[k : k + 5] for k in range(len(t) - 4)} for t in texts]
        true = len(shingles[0] & shingles[1]) / len(shingles[0] | shingles[1])
        signatures = minhash_signatures(*shingle_hashes(texts, 5), num_perm=128, seed=rng.randrange(2**32))
        estimate = float(np.mean(signatures[0] == signatures[1]))
        if 0.05 < true < 0.95:
            z.append((estimate - true) / np.sqrt(true * (1 - true) / 128))
    z = np.array(z)
    assert len(z) > 350
    assert abs(z.mean()) < 3 / np.sqrt(len(z))  # no bias beyond three standard errors of the mean
    assert 0.7 < np.mean(z**2) < 1.3  # the spread the formula says
    assert np.abs(z).max() < 4.5


# --- drop_identical_pairs ------------------------------------------------------------------------

# A template that, like reasoning models' templates, renders only what follows </think>.
THINK_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- set content = m['content'].split('</think>')[-1] if m['role'] == 'assistant' else m['content'] -%}"
    "{{ '<|' + m['role'] + '|>\\n' + content + eos_token + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)


def test_identical_pairs_after_normalisation(tmp_path):
    rows = [pair("q1", "Paris", "paris "), pair("q2", "Paris", "London")]
    kept, report, records = run(rows, tmp_path, drop_identical_pairs=True)
    assert kept == [rows[1]]
    assert report == [{"step": "drop_identical_pairs", "removed": 1, "rows_after": 1}]
    assert records[0]["step"] == "drop_identical_pairs"
    assert "identical after normalisation" in records[0]["reason"]


def test_identical_pairs_only_after_the_chat_template(tmp_path, tokenizer):
    prompt = [msg("user", "capital of France?")]
    rows = [
        pair(
            prompt,
            [msg("assistant", "<think>it is Paris</think>Paris")],
            [msg("assistant", "<think>hm</think>Paris")],
        ),
        pair(prompt, [msg("assistant", "Paris")], [msg("assistant", "London")]),
    ]
    tokenizer.chat_template = THINK_TEMPLATE
    kept, _, _ = run(rows, tmp_path, style="conversational", drop_identical_pairs=True)  # no tokenizer
    assert len(kept) == 2
    kept, report, records = run(
        rows, tmp_path, style="conversational", tokenizer=tokenizer, drop_identical_pairs=True
    )
    assert kept == [rows[1]]
    assert report[0]["removed"] == 1
    assert "identical once rendered by the tokenizer's chat template" in records[0]["reason"]


def test_identical_pairs_needs_preference_data(tmp_path):
    with pytest.raises(DataError, match=r"data\.curate\.drop_identical_pairs applies to preference data"):
        run(
            [{"prompt": "q", "completion": "a"}],
            tmp_path,
            format="prompt_completion",
            drop_identical_pairs=True,
        )


# --- length ------------------------------------------------------------------------------------


def test_length_bounds_in_tokens(tmp_path, tokenizer):
    def tokens(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    rng = random.Random(1)
    rows = [pair(sentence(rng, n), sentence(rng, 3), sentence(rng, 3)) for n in (1, 5, 10, 30)]
    rows.append(pair(sentence(rng, 5), sentence(rng, 3), sentence(rng, 40)))  # rejected too long
    lengths = [tokens(r["prompt"]) for r in rows]
    low, high = lengths[1], lengths[2]  # keep prompts of rows 1 and 2 (and 4, when in bounds)
    max_response = max(tokens(r[f]) for r in rows[:4] for f in ("chosen", "rejected"))
    kept, report, records = run(
        rows,
        tmp_path,
        tokenizer=tokenizer,
        length={"min_prompt_tokens": low, "max_prompt_tokens": high, "max_response_tokens": max_response},
    )
    expected = [r for r in rows[:4] if low <= tokens(r["prompt"]) <= high]
    assert kept == expected
    assert report[0]["removed"] == 5 - len(expected)
    assert report[0]["by_bound"]["max_response_tokens"] == 1
    reasons = {r["data"]["prompt"]: r["reason"] for r in records}
    assert reasons[rows[0]["prompt"]] == f"prompt has {lengths[0]} tokens, below min_prompt_tokens {low}"
    assert reasons[rows[4]["prompt"]].startswith("rejected has ")
    assert reasons[rows[4]["prompt"]].endswith(f"above max_response_tokens {max_response}")


def test_length_of_conversational_responses(tmp_path, tokenizer):
    tokenizer.chat_template = THINK_TEMPLATE
    prompt = [msg("user", "say yes")]
    rows = [
        {"prompt": prompt, "completion": [msg("assistant", "yes")]},
        {"prompt": prompt, "completion": [msg("assistant", "yes " * 30)]},
    ]
    kept, report, _ = run(
        rows,
        tmp_path,
        format="prompt_completion",
        style="conversational",
        tokenizer=tokenizer,
        length={"max_response_tokens": 10},
    )
    assert kept == [rows[0]] and report[0]["removed"] == 1


def test_length_without_a_tokenizer_or_on_prompts_of_text_is_an_error(tmp_path, tokenizer):
    with pytest.raises(DataError, match=r"data\.curate\.length counts tokens, but no tokenizer was given"):
        run([pair("q")], tmp_path, length={"max_prompt_tokens": 5})
    with pytest.raises(DataError, match=r"language_modeling rows have no prompt"):
        run(
            [{"text": "a"}],
            tmp_path,
            format="language_modeling",
            tokenizer=tokenizer,
            length={"max_prompt_tokens": 5},
        )


# --- balance -----------------------------------------------------------------------------------


def rows_by_source(counts):
    return [pair(f"{source} {i}", source=source) for source, n in counts.items() for i in range(n)]


def test_balance_cap(tmp_path):
    rows = rows_by_source({"web": 10, "books": 3, "code": 6})
    kept, report, records = run(rows, tmp_path, balance={"column": "source", "max_per_category": 4})
    counts = {s: sum(r["source"] == s for r in kept) for s in ("web", "books", "code")}
    assert counts == {"web": 4, "books": 3, "code": 4}
    assert report[0]["counts_before"] == {"web": 10, "books": 3, "code": 6}
    assert report[0]["counts_after"] == counts
    assert (report[0]["removed"], report[0]["rows_after"]) == (8, 11)
    assert len(records) == 8
    assert records[0]["reason"] == "category 'web' of column 'source' has 10 rows; balance (cap) keeps 4"
    assert run(rows, tmp_path, balance={"column": "source", "max_per_category": 4})[0] == kept  # seeded
    assert run(rows, tmp_path, seed=3, balance={"column": "source", "max_per_category": 4})[0] != kept


def test_balance_equal(tmp_path):
    rows = rows_by_source({"web": 10, "books": 3, "code": 6})
    kept, report, _ = run(rows, tmp_path, balance={"column": "source", "strategy": "equal"})
    assert report[0]["counts_after"] == {"web": 3, "books": 3, "code": 3}
    assert len(kept) == 9
    assert [r["source"] for r in kept] == sorted(
        (r["source"] for r in kept), key=["web", "books", "code"].index
    )


def test_balance_missing_column_names_the_key_and_columns(tmp_path):
    with pytest.raises(DataError) as error:
        run([pair("q")], tmp_path, balance={"column": "domain", "strategy": "equal"})
    assert str(error.value) == (
        "data.curate.balance.column: the train rows have no column 'domain'; "
        "their columns are prompt, chosen, rejected"
    )


# --- flip_fraction -----------------------------------------------------------------------------


def test_flip_swaps_exactly_the_stated_share_seeded(tmp_path):
    rows = [pair(f"q{i}", f"good {i}", f"bad {i}") for i in range(40)]
    kept, report, records = run(rows, tmp_path, flip_fraction=0.25, seed=1)
    (entry,) = report
    flipped = entry["flipped_rows"]
    assert entry["flipped"] == len(flipped) == 10 and entry["removed"] == 0 and entry["rows_after"] == 40
    for i, (before, after) in enumerate(zip(rows, kept, strict=True)):
        if i in flipped:
            assert (after["chosen"], after["rejected"]) == (before["rejected"], before["chosen"])
        else:
            assert after == before
    assert records == []  # flipping removes nothing
    assert run(rows, tmp_path, flip_fraction=0.25, seed=1)[1][0]["flipped_rows"] == flipped
    assert run(rows, tmp_path, flip_fraction=0.25, seed=2)[1][0]["flipped_rows"] != flipped
    assert "flipped" not in kept[0]  # recorded in the report only


def test_flip_negates_unpaired_labels(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}", "label": i % 2 == 0} for i in range(10)]
    kept, report, _ = run(rows, tmp_path, format="unpaired_preference", flip_fraction=0.3)
    flipped = report[0]["flipped_rows"]
    assert len(flipped) == 3
    assert [r["label"] for r in kept] == [r["label"] != (i in flipped) for i, r in enumerate(rows)]


def test_flip_needs_labels(tmp_path):
    with pytest.raises(DataError, match=r"data\.curate\.flip_fraction flips preference labels"):
        run([{"text": "a"}], tmp_path, format="language_modeling", flip_fraction=0.1)


# --- all steps, rejects, end to end ------------------------------------------------------------


def test_steps_run_in_order_and_every_removed_row_is_in_the_rejects_file(tmp_path):
    rng = random.Random(2)
    base = [sentence(rng) for _ in range(8)]
    rows = [pair(p, "yes", "no", source="a" if i < 6 else "b") for i, p in enumerate(base)]
    rows.append(dict(rows[0]))  # exact duplicate
    rows.append({**rows[1], "prompt": rows[1]["prompt"] + " papa"})  # near duplicate
    rows.append(pair(sentence(rng), "same", "SAME", source="a"))  # identical pair
    kept, report, records = run(
        rows,
        tmp_path,
        dedup=True,
        near_dedup=True,
        drop_identical_pairs=True,
        balance={"column": "source", "max_per_category": 5},
        flip_fraction=0.5,
    )
    assert [e["step"] for e in report] == ["dedup", "near_dedup", "drop_identical_pairs", "balance", "flip"]
    assert [e["removed"] for e in report] == [1, 1, 1, 1, 0]
    assert [e["rows_after"] for e in report] == [10, 9, 8, 7, 7]
    assert [r["step"] for r in records] == ["dedup", "near_dedup", "drop_identical_pairs", "balance"]
    assert all(r["reason"] and r["data"] for r in records)
    assert len(kept) == 7 and report[-1]["flipped"] == round(0.5 * 7)


def test_removing_rows_without_a_rejects_file_is_an_error():
    from datasets import Dataset

    with pytest.raises(
        DataError, match=r"data\.curate\.dedup would remove 1 row of data\.train, but no rejects"
    ):
        curate(
            Dataset.from_list([pair("q"), pair("q")]),
            CurateConfig(dedup=True),
            format="preference",
            style="standard",
            seed=0,
        )


def test_load_stage_data_with_a_curate_block(tmp_path):
    rng = random.Random(3)
    prompts = [sentence(rng, 20) for _ in range(30)]
    rows = [pair(p, "good", "bad", source="a" if i % 3 else "b") for i, p in enumerate(prompts)]
    rows += [rows[0], rows[1], pair(prompts[2], "Same", "same ", source="a")]
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = yaml.safe_load(
        """
        train: prefs.jsonl
        seed: 4
        curate:
          dedup: true
          drop_identical_pairs: true
          balance: {column: source, strategy: cap, max_per_category: 15}
          flip_fraction: 0.1
        """
    )
    rejects = tmp_path / "run" / "rejects.jsonl"
    data = load_stage_data(
        DataConfig.model_validate(config), formats=("preference",), base_dir=tmp_path, rejects_path=rejects
    )
    report = data.report
    json.dumps(report)
    assert [(e["step"], e["removed"]) for e in report["curation"]] == [
        ("dedup", 2),
        ("drop_identical_pairs", 1),
        ("balance", 5),
        ("flip", 0),
    ]
    assert report["curation"][2]["counts_before"] == {"b": 10, "a": 20}
    assert report["curation"][-1]["flipped"] == 2 and len(data.train) == 25
    assert report["train"]["rows"] == 25 and report["train"]["rows_before_curation"] == 33
    assert report["decontamination"] is None  # no eval set
    assert report["rejects_path"] == str(rejects)
    records = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [r["step"] for r in records] == ["dedup"] * 2 + ["drop_identical_pairs"] + ["balance"] * 5


def test_implicit_preference_pairs(tmp_path, tokenizer):
    """No prompt column: the messages chosen and rejected begin with are the prompt."""
    tokenizer.chat_template = THINK_TEMPLATE
    question = [msg("user", "capital of France?")]
    rows = [
        {
            "chosen": [*question, msg("assistant", "Paris")],
            "rejected": [*question, msg("assistant", "PARIS")],
        },
        {"chosen": [*question, msg("assistant", "Paris")], "rejected": [*question, msg("assistant", "Lyon")]},
        {
            "chosen": [*question, msg("assistant", "Paris " * 30)],
            "rejected": [*question, msg("assistant", "Nice")],
        },
    ]
    style = {"format": "implicit_preference", "style": "conversational", "tokenizer": tokenizer}
    kept, report, records = run(
        rows, tmp_path, **style, drop_identical_pairs=True, length={"max_response_tokens": 10}
    )
    assert kept == [rows[1]]
    assert [r["step"] for r in records] == ["drop_identical_pairs", "length"]
    assert records[1]["reason"].startswith("chosen has ")
    kept, report, _ = run(rows, tmp_path, **style, flip_fraction=0.34)
    (flipped,) = report[0]["flipped_rows"]  # round(0.34 * 3) == 1
    assert (kept[flipped]["chosen"], kept[flipped]["rejected"]) == (
        rows[flipped]["rejected"],
        rows[flipped]["chosen"],
    )
