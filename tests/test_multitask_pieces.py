"""rlft.multitask (its test is named apart from tests/stages/test_multitask.py: pytest needs distinct basenames):
a task's prompts, rows to token ids, batches, and the losses against hand computations."""

import math

import pytest
import torch
from conftest import QUICKSTART_DATA

from rlft import losses
from rlft.multitask import (
    IGNORE,
    collate_pairs,
    dpo_loss,
    encode_pair,
    encode_sft,
    sequence_logps,
    sft_loss,
    shard,
    with_additions,
)

USER = [{"role": "user", "content": "shout: a b c"}]
ANSWER = [{"role": "assistant", "content": "A B C"}]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from rlft.models.tiny import build_tiny_from_texts

    texts = (QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines()[:400]
    folder = build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("tiny") / "model", hidden_size=16, num_layers=1, num_heads=2
    )
    return AutoTokenizer.from_pretrained(folder)


def test_prefix_and_system_prompt_go_into_the_prompt():
    assert with_additions("shout: a", prefix="[up] ", system_prompt=None) == "[up] shout: a"
    added = with_additions(USER, prefix="[up] ", system_prompt="Be loud.")
    assert added == [
        {"role": "system", "content": "Be loud."},
        {"role": "user", "content": "[up] shout: a b c"},
    ]
    assert USER[0]["content"] == "shout: a b c"  # the row itself is left alone
    with_system = [{"role": "system", "content": "Be terse."}, *USER]
    assert (
        with_additions(with_system, prefix=None, system_prompt="Be loud.")[0]["content"]
        == "Be loud.\n\nBe terse."
    )
    assert with_additions(USER, prefix=None, system_prompt=None) == USER
    with pytest.raises(ValueError, match="system_prompt needs conversational prompts"):
        with_additions("shout: a", prefix=None, system_prompt="Be loud.")


def test_sft_rows_train_on_the_answer_and_see_the_prompt_as_evaluation_does(tokenizer):
    from rlft.evaluation import _encode

    row = encode_sft(tokenizer, {"prompt": USER, "completion": ANSWER}, max_length=None)
    prompt = _encode(tokenizer, USER)  # what greedy evaluation feeds the model
    assert row["input_ids"][: len(prompt)] == prompt
    assert row["labels"][: len(prompt)] == [IGNORE] * len(prompt)
    assert tokenizer.decode(row["labels"][len(prompt) :]) == "A B C<|end|>"

    plain = encode_sft(tokenizer, {"prompt": "shout: a b", "completion": "A B"}, max_length=None)
    trained = [t for t in plain["labels"] if t != IGNORE]
    assert tokenizer.decode(trained) == "A B<|end|>" and trained[-1] == tokenizer.eos_token_id

    messages = encode_sft(tokenizer, {"messages": USER + ANSWER}, max_length=None)
    assert tokenizer.decode([t for t in messages["labels"] if t != IGNORE]) == "A B C<|end|>"

    cut = encode_sft(tokenizer, {"prompt": USER, "completion": ANSWER}, max_length=len(prompt) + 1)
    assert len(cut["input_ids"]) == len(prompt) + 1 and sum(t != IGNORE for t in cut["labels"]) == 1
    assert encode_sft(tokenizer, {"prompt": USER, "completion": ANSWER}, max_length=len(prompt)) is None


def test_pairs_share_the_prompt_and_collate_chosen_first(tokenizer):
    rows = [
        encode_pair(
            tokenizer,
            {"prompt": USER, "chosen": ANSWER, "rejected": [{"role": "assistant", "content": c}]},
            max_length=None,
        )
        for c in ("a b c", "A B")
    ]
    assert tokenizer.decode(rows[0]["chosen_ids"]) == "A B C<|end|>"
    assert tokenizer.decode(rows[1]["rejected_ids"]) == "A B<|end|>"
    for r, chosen, rejected in zip(rows, (1.5, 2.5), (-1.0, -2.0), strict=True):
        r["ref_chosen_logps"], r["ref_rejected_logps"] = chosen, rejected
    batch = collate_pairs(rows, pad_id=tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 4
    assert torch.equal(batch["ref_chosen_logps"], torch.tensor([1.5, 2.5]))
    n_prompt = len(rows[0]["prompt_ids"])
    chosen_trained = batch["labels"][0][batch["labels"][0] != IGNORE].tolist()
    rejected_trained = batch["labels"][3][batch["labels"][3] != IGNORE].tolist()
    assert chosen_trained == rows[0]["chosen_ids"] and rejected_trained == rows[1]["rejected_ids"]
    assert (batch["labels"][:, :n_prompt] == IGNORE).all()
    assert batch["attention_mask"][3].sum() == n_prompt + len(rows[1]["rejected_ids"])  # padding masked
    cut = encode_pair(
        tokenizer, {"prompt": USER, "chosen": ANSWER, "rejected": ANSWER[::-1]}, max_length=n_prompt + 2
    )
    assert len(cut["chosen_ids"]) == 2
    assert (
        encode_pair(tokenizer, {"prompt": USER, "chosen": ANSWER, "rejected": ANSWER}, max_length=n_prompt)
        is None
    )


def logits_for(probs: list[list[float]]) -> torch.Tensor:
    """Logits of one sequence whose softmax at each position is the given distribution: (1, T, V)."""
    return torch.log(torch.tensor(probs)).unsqueeze(0)


def test_sequence_logps_and_sft_loss_by_hand():
    # 4 tokens; the labels of positions 2 and 3 count, predicted by the logits at positions 1 and 2
    logits = logits_for([[0.25] * 4, [0.1, 0.2, 0.3, 0.4], [0.25] * 4, [0.7, 0.1, 0.1, 0.1]])
    labels = torch.tensor([[IGNORE, IGNORE, 2, 3]])
    logps, lengths = sequence_logps(logits, labels)
    assert logps.item() == pytest.approx(math.log(0.3) + math.log(0.25), abs=1e-6) and lengths.item() == 2
    loss, tokens = sft_loss(logits, labels)
    assert (
        loss.item() == pytest.approx(-(math.log(0.3) + math.log(0.25)) / 2, abs=1e-6) and tokens.item() == 2
    )


def test_the_dpo_part_matches_rlft_losses_on_hand_made_log_probs():
    """Two pairs whose answer log-probs are known: the loss is -log σ(β Δ) averaged over the pairs, as
    rlft.losses.sigmoid (the formula TRL's DPO is held to) gives it; with sft added, plus the chosen NLL."""
    p_chosen, p_rejected = [0.6, 0.3], [0.2, 0.5]  # each answer is one token, probability given
    rows = []
    for p in p_chosen + p_rejected:  # chosen rows first, as collate_pairs lays them out
        rows.append([[0.25] * 4, [p, (1 - p) / 3, (1 - p) / 3, (1 - p) / 3], [0.25] * 4])
    logits = torch.log(torch.tensor(rows))  # (4, 3, 4)
    labels = torch.tensor([[IGNORE, IGNORE, 0]] * 4)  # the answer token 0 at position 2
    ref_chosen, ref_rejected = torch.tensor([-1.0, -0.5]), torch.tensor([-1.2, -0.4])
    beta = 0.5
    loss, stats = dpo_loss(
        logits,
        labels,
        ref_chosen_logps=ref_chosen,
        ref_rejected_logps=ref_rejected,
        loss_type=["sigmoid"],
        loss_weights=None,
        beta=beta,
    )
    by_hand = []
    for pc, pr, rc, rr in zip(p_chosen, p_rejected, ref_chosen.tolist(), ref_rejected.tolist(), strict=True):
        delta = (math.log(pc) - rc) - (math.log(pr) - rr)
        by_hand.append(-math.log(1 / (1 + math.exp(-beta * delta))))
    assert loss.item() == pytest.approx(sum(by_hand) / 2, abs=1e-6)
    chosen_logratios = torch.log(torch.tensor(p_chosen)) - ref_chosen
    rejected_logratios = torch.log(torch.tensor(p_rejected)) - ref_rejected
    expected = losses.sigmoid(chosen_logratios, rejected_logratios, beta=beta).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    margins = beta * (chosen_logratios - rejected_logratios)
    assert stats["rewards/margins"].item() == pytest.approx(margins.mean().item(), abs=1e-6)
    assert stats["rewards/accuracies"].item() == (margins > 0).float().mean().item()

    with_nll, _ = dpo_loss(
        logits,
        labels,
        ref_chosen_logps=ref_chosen,
        ref_rejected_logps=ref_rejected,
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, 0.5],
        beta=beta,
    )
    nll = -(math.log(0.6) + math.log(0.3)) / 2  # per token over the chosen answers
    assert with_nll.item() == pytest.approx(sum(by_hand) / 2 + 0.5 * nll, abs=1e-6)


def test_at_the_reference_every_pair_costs_log_2():
    logits = torch.randn(4, 5, 7)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 1, IGNORE]] * 4)
    logps, _ = sequence_logps(logits, labels)
    loss, stats = dpo_loss(
        logits,
        labels,
        ref_chosen_logps=logps[:2],
        ref_rejected_logps=logps[2:],
        loss_type=["sigmoid"],
        loss_weights=None,
        beta=0.1,
    )
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6) and stats["rewards/margins"].item() == 0


def test_shard_gives_every_process_as_many_slots():
    assert shard(5, 0, 2) == [0, 2, 4] and shard(5, 1, 2) == [1, 3, None]
    assert shard(4, 0, 1) == [0, 1, 2, 3]
