"""rlft/embeddings.py: pooling, InfoNCE and retrieval metrics against hand computations; `embed` on a saved folder."""

import math

import pytest
import torch

from rlft import embeddings
from rlft.errors import ConfigError

HIDDEN = torch.tensor(
    [
        [[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]],  # row 0: two real tokens, then padding
        [[0.0, 0.0], [2.0, 4.0], [4.0, 0.0]],  # row 1: left padding, two real tokens
    ]
)  # (B=2, T=3, H=2)
MASK = torch.tensor([[1, 1, 0], [0, 1, 1]])


def test_mean_pool_ignores_padding_on_either_side():
    assert embeddings.mean_pool(HIDDEN, MASK).tolist() == [[2.0, 1.0], [3.0, 2.0]]


def test_last_token_pool_takes_the_last_real_token():
    assert embeddings.last_token_pool(HIDDEN, MASK).tolist() == [[3.0, 2.0], [4.0, 0.0]]


# Unit vectors, so cosine similarity is the dot product: easy to compute by hand.
A = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
P = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
N = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])


def ce(logits: list[float], right: int) -> float:
    """-log softmax(logits)[right]."""
    return -logits[right] + math.log(sum(math.exp(x) for x in logits))


def test_info_nce_one_way_is_cross_entropy_over_in_batch_positives():
    t = 0.5
    # anchor 0: cos with p0 = 0.6, p1 = 0; anchor 1: 0.8, 1.0
    expected = (ce([0.6 / t, 0.0], 0) + ce([0.8 / t, 1.0 / t], 1)) / 2
    assert embeddings.info_nce(A, P, temperature=t).item() == pytest.approx(expected, abs=1e-6)
    # vectors need not be unit length: the loss is on cosine similarity
    assert embeddings.info_nce(3 * A, 0.5 * P, temperature=t).item() == pytest.approx(expected, abs=1e-6)


def test_info_nce_with_hard_negatives_adds_them_as_candidates():
    t = 0.5
    # anchor 0 candidates: p0 0.6, p1 0, n0 1, n1 -1; anchor 1: p0 0.8, p1 1, n0 0, n1 0
    expected = (ce([0.6 / t, 0.0, 1 / t, -1 / t], 0) + ce([0.8 / t, 1 / t, 0.0, 0.0], 1)) / 2
    assert embeddings.info_nce(A, P, N, temperature=t).item() == pytest.approx(expected, abs=1e-6)


def test_symmetric_info_nce_averages_both_directions():
    t = 0.25
    forward = (ce([0.6 / t, 0.0, 1 / t, -1 / t], 0) + ce([0.8 / t, 1 / t, 0.0, 0.0], 1)) / 2
    # positives to anchors (anchors only): p0: a0 0.6, a1 0.8; p1: a0 0, a1 1
    backward = (ce([0.6 / t, 0.8 / t], 0) + ce([0.0, 1 / t], 1)) / 2
    got = embeddings.info_nce(A, P, N, temperature=t, symmetric=True).item()
    assert got == pytest.approx((forward + backward) / 2, abs=1e-6)


def test_info_nce_learns_the_temperature_when_it_is_a_tensor():
    scale = torch.tensor(2.0, requires_grad=True)
    embeddings.info_nce(A, P, temperature=1 / scale).backward()
    assert scale.grad is not None and scale.grad.item() != 0


def test_retrieval_metrics_rank_ties_against_the_model():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # query 0 finds its key first, query 1 last (of 3), query 2 first
    queries = torch.tensor([[1.0, 0.1], [1.0, 0.0], [1.0, 1.0]])
    got = embeddings.retrieval_metrics(queries, keys)
    assert got["accuracy@1"] == pytest.approx(2 / 3)
    assert got["mrr"] == pytest.approx((1 + 1 / 3 + 1) / 3)
    collapsed = embeddings.retrieval_metrics(torch.ones(4, 2), torch.ones(4, 2))  # all equal: no credit
    assert collapsed == {"accuracy@1": 0.0, "mrr": pytest.approx(0.25)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from rlft.models.tiny import build_tiny_from_texts

    texts = ["a b c", "A, B and C", "x y z", "X, Y and Z"] * 20
    return build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("tiny") / "model", hidden_size=32, num_layers=2, num_heads=2
    )


def test_embedder_pools_the_decoder_under_the_lm_head(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    batch = embeddings.tokenize(tokenizer, ["a b c", "x y z w"], max_length=None, append_eos=True)
    assert (batch["input_ids"][:, -1] == tokenizer.eos_token_id).sum() >= 1  # eos ends the longer text
    got = embeddings.Embedder(model, pooling="last_token")(batch["input_ids"], batch["attention_mask"])
    hidden = model(**batch, output_hidden_states=True).hidden_states[-1]  # (B, T, H), after the final norm
    expected = embeddings.last_token_pool(hidden, batch["attention_mask"])
    assert torch.allclose(got["embeddings"], expected, atol=1e-5)
    assert got["scale"].item() == pytest.approx(1.0)  # temperature 1 unless given


def test_embed_reads_the_pooling_from_the_folder(tiny, tmp_path):
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "embedder"
    shutil.copytree(tiny, folder)
    with pytest.raises(ConfigError, match="no embedding.json"):
        embeddings.embed(folder, ["a b c"])
    embeddings.write_embedding_config(folder, {"pooling": "mean", "append_eos": False, "max_length": 16})

    texts = ["a b c", "X, Y and Z", "x y z"]
    got = embeddings.embed(folder, texts, batch_size=2)  # two batches, padded differently
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny), AutoTokenizer.from_pretrained(tiny)
    for i, text in enumerate(texts):  # each text alone, no padding at all
        ids = tokenizer(text, return_tensors="pt")
        hidden = model(**ids, output_hidden_states=True).hidden_states[-1]
        expected = torch.nn.functional.normalize(hidden.mean(1)[0], dim=-1)
        assert torch.allclose(got[i], expected, atol=1e-5)
    assert got.shape == (3, 32) and torch.allclose(got.norm(dim=-1), torch.ones(3))
    raw = embeddings.embed(folder, texts, normalize=False)
    assert torch.allclose(torch.nn.functional.normalize(raw, dim=-1), got, atol=1e-6)
