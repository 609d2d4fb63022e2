"""rlft.models.model_card: the lineage through a run folder and the card's front matter and sections."""

import json

import yaml

from rlft.models.model_card import model_card, stage_lineage


def record(stage, kind, *, model, inputs, metrics=None, artifact_hash=None, tuning="full"):
    return {
        "stage": stage,
        "kind": kind,
        "config": {"name": stage, "kind": kind, "model": model, "tuning": {"method": tuning}},
        "inputs": inputs,
        "metrics": metrics or {},
        "artifact_hash": artifact_hash,
        "seconds": 12.5,
    }


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def write_run(tmp_path, records):
    for r in records:
        (tmp_path / r["stage"]).mkdir(parents=True)
        (tmp_path / r["stage"] / "stage.json").write_text(json.dumps(r))


HUB = {"from": None, "hub": "HuggingFaceTB/SmolLM2-135M-Instruct", "tiny": None, "path": None}


def test_lineage_follows_from_through_the_run_folder(tmp_path):
    write_run(
        tmp_path,
        [
            record(
                "sft",
                "sft",
                model=HUB,
                inputs={"model": "hub:HuggingFaceTB/SmolLM2-135M-Instruct@main"},
                artifact_hash="h-sft",
            ),
            record("reward", "reward", model={"from": "sft"}, inputs={"model": "h-sft"}),
            record("dpo", "dpo", model={"from": "sft"}, inputs={"model": "h-sft"}),
        ],
    )
    assert [r["stage"] for r in stage_lineage(tmp_path / "dpo")] == ["sft", "dpo"]
    assert stage_lineage(tmp_path / "nothing") == []


def test_lineage_marks_a_gone_or_replaced_stage(tmp_path):
    write_run(
        tmp_path,
        [
            record("sft", "sft", model=HUB, inputs={}, artifact_hash="h-new"),
            record("dpo", "dpo", model={"from": "sft"}, inputs={"model": "h-old"}),
            record("kto", "kto", model={"from": "gone"}, inputs={}),
        ],
    )
    chain = stage_lineage(tmp_path / "dpo")
    assert chain[0]["replaced"] and "re-run since" in model_card(
        chain, name="p/dpo", task="CAUSAL_LM", load="", checks=[]
    )
    assert stage_lineage(tmp_path / "kto")[0] == {"stage": "gone", "missing": True}


def test_card_front_matter_names_the_hub_base_and_data_hashes():
    chain = [
        record(
            "sft",
            "sft",
            model=HUB,
            inputs={
                "model": "hub:HuggingFaceTB/SmolLM2-135M-Instruct@main",
                "data": {"/home/alice/data/sft.jsonl": "a" * 64},
            },
            artifact_hash="h-sft",
            tuning="lora",
            metrics={"task_reward": 0.455},
        ),
        record(
            "dpo",
            "dpo",
            model={"from": "sft"},
            inputs={
                "model": "h-sft",
                "data": {"/home/alice/data/prefs.jsonl": "b" * 64, "/home/alice/data/sft.jsonl": "a" * 64},
                "evaluate": {"/home/alice/data/heldout.jsonl": "c" * 64},
            },
            tuning="lora",
            metrics={"task_reward": 1.0, "kl": 0.12345, "train/loss": 0.115, "note": "text"},
        ),
    ]
    card = model_card(chain, name="quick/dpo", task="CAUSAL_LM", load="LOAD", checks=["merge check passed"])
    meta = front_matter(card)
    assert meta == {
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["rlft", "dpo", "lora"],
        "datasets": [
            "a" * 64,
            "b" * 64,
        ],  # every stage's data, once; evaluation prompts are not training data
    }
    assert (
        "| 1 | sft | sft | lora | `HuggingFaceTB/SmolLM2-135M-Instruct` | sft.jsonl `aaaaaaaaaaaa` | 0.455 |"
        in card
    )
    assert "| 2 | dpo | dpo | lora | stage `sft` |" in card
    assert "| kl | 0.1235 |" in card and "| train/loss | 0.115 |" in card and "note" not in card
    assert "heldout.jsonl `cccccccccccc`" in card  # what task_reward was measured on
    assert "/home/alice" not in card  # file names only: a card is published
    assert "LOAD" in card and "- merge check passed" in card
    assert "Evaluate it on your own task and data before any use" in card
    assert "trained and evaluated by rlft on the data named above (prefs.jsonl, sft.jsonl)" in card


def test_card_of_a_reward_model_from_a_local_folder_has_no_base_model():
    chain = [
        record(
            "rm",
            "reward",
            model={"path": "/home/alice/models/mine"},
            inputs={"model": "f" * 64},
            metrics={"reward_accuracy": 0.97},
        )
    ]
    card = model_card(chain, name="p/rm", task="SEQ_CLS", load="", checks=[])
    meta = front_matter(card)
    assert "base_model" not in meta  # the Hub refuses a base_model that is not a Hub id
    assert meta["pipeline_tag"] == "text-classification" and meta["tags"] == ["rlft", "reward", "full"]
    assert "a local folder `mine`" in card and "/home/alice" not in card
    assert "| reward_accuracy | 0.97 |" in card and "scores text" in card


def test_card_without_stage_json_says_so():
    card = model_card(
        [], name="m", task="CAUSAL_LM", load="", checks=[], base_model="org/base", method="lora"
    )
    assert front_matter(card) == {
        "base_model": "org/base",
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["rlft", "lora"],
    }
    assert "without stage.json" in card
