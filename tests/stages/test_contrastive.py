"""`kind: contrastive` on tiny models: preference mode (CPO/SimPO, no reference) and representation mode
(InfoNCE): configs refused with one clear error, losses fall, parameters move, retrieval rises, artifacts
reload (and `rlft.embed` reads them), LoRA, an encoder, resume, two CPU processes, the shipped examples."""

import json
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import QUICKSTART_DATA, REPO, stage_context

from rlft.errors import ConfigError, DataError
from rlft.models.tiny import build_tiny_from_texts
from rlft.pipeline import run_pipeline
from rlft.pipeline_file import load_pipeline
from rlft.stages import contrastive
from rlft.stages.base import StageContext
from rlft.tracking import read_metrics

PARAPHRASE = REPO / "configs" / "data" / "paraphrase"


@pytest.fixture(scope="module")
def policy_model(tmp_path_factory) -> Path:
    """A tiny Llama over the quickstart's texts (preference mode)."""
    texts = [
        *(QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines(),
        *(QUICKSTART_DATA / "prefs_train.jsonl").read_text().splitlines(),
    ]
    return build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("tiny") / "policy", hidden_size=32, num_layers=2, num_heads=2
    )


@pytest.fixture(scope="module")
def paraphrase_model(tmp_path_factory) -> Path:
    """A tiny Llama over the paraphrase pairs' texts (representation mode)."""
    texts = (PARAPHRASE / "train.jsonl").read_text().splitlines()
    return build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("tiny") / "paraphrase", hidden_size=64, num_layers=2, num_heads=4
    )


def context(tmp_path: Path, name: str = "work") -> StageContext:
    work = tmp_path / name
    return stage_context(tmp_path, work)


def preference(model: Path | str, **overrides) -> contrastive.ContrastiveStage:
    spec = {
        "name": "cpo",
        "kind": "contrastive",
        "mode": "preference",
        "model": {"path": str(model)},
        "data": {"train": str(QUICKSTART_DATA / "prefs_train.jsonl"), "max_rows": 128},
        "max_length": 64,
        "trainer": {
            "max_steps": 2,
            "per_device_train_batch_size": 8,
            "learning_rate": 3e-3,
            "logging_steps": 1,
        },
        **overrides,
    }
    return contrastive.ContrastiveStage.model_validate(spec)


def representation(model: Path | str, **overrides) -> contrastive.ContrastiveStage:
    spec = {
        "name": "embed",
        "kind": "contrastive",
        "mode": "representation",
        "model": {"path": str(model)},
        "data": {"train": str(PARAPHRASE / "train.jsonl"), "max_rows": 512},
        "max_length": 32,
        "trainer": {
            "max_steps": 2,
            "per_device_train_batch_size": 16,
            "learning_rate": 1e-3,
            "logging_steps": 1,
        },
        **overrides,
    }
    return contrastive.ContrastiveStage.model_validate(spec)


def logged(ctx: StageContext, key: str) -> list[float]:
    return [m[key] for m in read_metrics(ctx.metrics_path) if key in m]


def changed(before: Path, after: Path) -> bool:
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(before).state_dict()
    b = AutoModelForCausalLM.from_pretrained(after).state_dict()
    return any(not torch.equal(a[k], b[k]) for k in a)


# --- configs and data refused with one clear error ------------------------------------------------


@pytest.mark.parametrize(
    "mode, overrides, message",
    [
        (
            "preference",
            {"pooling": "last_token"},
            "pooling is a representation-mode key; this stage has mode: preference",
        ),
        (
            "representation",
            {"beta": 0.5},
            "beta is a preference-mode key; this stage has mode: representation",
        ),
        (
            "preference",
            {"tuning": {"method": "prompt_tuning", "num_virtual_tokens": 4}},
            "CPOTrainer reads the logits of the virtual tokens",
        ),
        ("representation", {"pooling": "cls"}, "Input should be 'mean' or 'last_token'"),
        ("preference", {"trainer": {"beta": 0.2}}, "trainer.beta: set beta on the stage itself"),
        (
            "representation",
            {"trainer": {"disable_dropout": True}},
            "trainer.disable_dropout: a CPOConfig key",
        ),
        (
            "representation",
            {"trainer": {"remove_unused_columns": True}},
            "remove_unused_columns: set by rlft",
        ),
        (
            "representation",
            {"tuning": {"method": "prompt_tuning", "num_virtual_tokens": 4}},
            "tuning.method prompt_tuning: representation mode pools",
        ),
    ],
)
def test_bad_configs_give_one_clear_error(mode, overrides, message):
    make = preference if mode == "preference" else representation
    with pytest.raises(ValueError, match=message):
        make("some/model", **overrides)


def test_a_pipeline_file_names_the_key(tmp_path):
    (tmp_path / "p.yaml").write_text(
        textwrap.dedent(
            f"""
            name: p
            model: some/model
            stages:
              - name: embed
                kind: contrastive
                mode: representation
                data: {{train: {PARAPHRASE}/train.jsonl}}
                pooling: cls
            """
        )
    )
    with pytest.raises(ConfigError, match=r"stages\[0\]\.pooling"):
        load_pipeline(tmp_path / "p.yaml")
    (tmp_path / "p.yaml").write_text((tmp_path / "p.yaml").read_text().replace("    pooling: cls\n", ""))
    (tmp_path / "p.yaml").write_text(
        (tmp_path / "p.yaml").read_text().replace("    mode: representation\n", "")
    )
    with pytest.raises(ConfigError, match=r"stages\[0\]\.mode"):
        load_pipeline(tmp_path / "p.yaml")


def test_data_of_the_wrong_shape_names_the_mode_that_takes_it(tmp_path, policy_model):
    sft_rows = preference(policy_model, data={"train": str(QUICKSTART_DATA / "sft_train.jsonl")})
    with pytest.raises(
        DataError, match="(?s)prompt, completion.*mode: preference trains on preference pairs"
    ):
        contrastive.run(sft_rows, context(tmp_path, "sft"))
    pairs = representation(policy_model, data={"train": str(QUICKSTART_DATA / "prefs_train.jsonl")})
    with pytest.raises(
        DataError, match="(?s)make none of the formats.*mode: representation trains on rows of anchor"
    ):
        contrastive.run(pairs, context(tmp_path, "prefs"))


# --- mode: preference -----------------------------------------------------------------------------


def test_cpo_trains_without_a_reference_and_the_artifact_reloads(tmp_path, policy_model):
    cfg = preference(
        policy_model,
        data={
            "train": str(QUICKSTART_DATA / "prefs_train.jsonl"),
            "eval": str(QUICKSTART_DATA / "prefs_eval.jsonl"),
            "max_rows": 256,
        },
        trainer={
            "max_steps": 30,
            "per_device_train_batch_size": 16,
            "learning_rate": 3e-3,
            "logging_steps": 5,
        },
    )
    ctx = context(tmp_path)
    result = contrastive.run(cfg, ctx)
    losses = logged(ctx, "train/loss")
    assert all(loss == loss for loss in losses) and losses[-1] < 0.8 * losses[0], losses
    assert "reference" not in result.info  # nothing but the policy was loaded
    # held-out pairs: the policy now finds the chosen answer more likely than the rejected one
    before, after = (
        result.metrics["eval/rewards/accuracies_before"],
        result.metrics["eval/rewards/accuracies"],
    )
    assert after >= before + 0.15 and after >= 0.7 and result.metrics["eval/rewards/margins"] > 0, (
        before,
        after,
    )
    assert result.metrics["train/global_step"] == 30 and result.rank["world_size"] == 1
    assert changed(policy_model, ctx.artifact_dir)


def test_simpo_with_lora_saves_a_merged_model(tmp_path, policy_model):
    from safetensors import safe_open

    cfg = preference(
        policy_model,
        loss_type="simpo",
        beta=2.0,
        simpo_gamma=0.5,
        cpo_alpha=0.0,
        tuning={"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        trainer={
            "max_steps": 12,
            "per_device_train_batch_size": 16,
            "learning_rate": 1e-2,
            "logging_steps": 3,
        },
    )
    ctx = context(tmp_path)
    result = contrastive.run(cfg, ctx)
    losses = logged(ctx, "train/loss")
    assert all(loss == loss for loss in losses) and losses[-1] < losses[0], losses
    assert result.info["saved"] == {"merged": True, "adapter": "adapter/", "peft": "lora"}
    assert 0 < result.info["parameters"]["trainable"] < 0.2 * result.info["parameters"]["total"]
    with safe_open(str(ctx.artifact_dir / "model.safetensors"), "pt") as f:
        assert not any("lora" in k for k in f.keys())
    assert changed(policy_model, ctx.artifact_dir)


# --- mode: representation -------------------------------------------------------------------------


def test_retrieval_rises_and_embed_reads_the_artifact_back(tmp_path, paraphrase_model):
    from transformers import AutoModelForCausalLM

    from rlft import embed
    from rlft.embeddings import retrieval_metrics

    cfg = representation(
        paraphrase_model,
        data={
            "train": str(PARAPHRASE / "train.jsonl"),
            "eval": str(PARAPHRASE / "eval.jsonl"),
            "max_rows": 1024,
        },
        trainer={
            "max_steps": 60,
            "per_device_train_batch_size": 32,
            "learning_rate": 2e-3,
            "logging_steps": 10,
            "eval_steps": 30,
        },
    )
    ctx = context(tmp_path)
    result = contrastive.run(cfg, ctx)
    m = result.metrics
    assert m["retrieval/accuracy@1_before"] <= 0.2 and m["retrieval/accuracy@1"] >= 0.6, m
    assert m["retrieval/mrr"] > m["retrieval/mrr_before"] + 0.4
    losses = logged(ctx, "train/loss")
    assert losses[-1] < 0.5 * losses[0], losses
    assert logged(ctx, "retrieval/accuracy@1_before") == [m["retrieval/accuracy@1_before"]]
    assert (
        len(logged(ctx, "retrieval/accuracy@1")) >= 2
    )  # at each evaluation, and the last equals the summary
    assert logged(ctx, "retrieval/accuracy@1")[-1] == m["retrieval/accuracy@1"]

    # The artifact is the whole causal LM (a reward stage can start from it) plus how to pool.
    AutoModelForCausalLM.from_pretrained(ctx.artifact_dir)
    assert changed(paraphrase_model, ctx.artifact_dir)
    settings = json.loads((ctx.artifact_dir / "embedding.json").read_text())
    assert (
        settings["pooling"] == "mean" and settings["backbone"] == "causal_lm" and not settings["append_eos"]
    )
    rows = [json.loads(line) for line in (PARAPHRASE / "eval.jsonl").read_text().splitlines()]
    anchors = embed(ctx.artifact_dir, [r["anchor"] for r in rows], batch_size=50)
    positives = embed(ctx.artifact_dir, [r["positive"] for r in rows])
    assert anchors.shape == (200, 64) and torch.allclose(anchors.norm(dim=-1), torch.ones(200))
    again = retrieval_metrics(anchors, positives)  # the same numbers as the stage measured
    assert again["accuracy@1"] == pytest.approx(m["retrieval/accuracy@1"], abs=1e-6)
    assert again["mrr"] == pytest.approx(m["retrieval/mrr"], abs=1e-5)


def test_lora_last_token_symmetric_with_a_learned_temperature(tmp_path, paraphrase_model):
    from safetensors import safe_open

    from rlft import embed

    cfg = representation(
        paraphrase_model,
        pooling="last_token",
        symmetric=True,
        temperature=0.1,
        learn_temperature=True,
        tuning={"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        trainer={
            "max_steps": 8,
            "per_device_train_batch_size": 16,
            "learning_rate": 1e-2,
            "logging_steps": 2,
        },
    )
    ctx = context(tmp_path)
    result = contrastive.run(cfg, ctx)
    assert all(loss == loss for loss in logged(ctx, "train/loss"))
    assert result.metrics["train/temperature"] != pytest.approx(0.1, abs=1e-4)  # τ trained too
    assert result.info["saved"]["merged"] and changed(paraphrase_model, ctx.artifact_dir)
    with safe_open(str(ctx.artifact_dir / "model.safetensors"), "pt") as f:
        assert not any("lora" in k for k in f.keys())
    settings = json.loads((ctx.artifact_dir / "embedding.json").read_text())
    assert (
        settings["pooling"] == "last_token" and settings["append_eos"]
    )  # a causal LM reads the text, then eos
    assert embed(ctx.artifact_dir, ["a b c", "A, B and C"]).shape == (2, 64)


def test_an_encoder_trains_and_saves_as_an_encoder(tmp_path, paraphrase_model):
    from transformers import AutoConfig, AutoTokenizer, BertConfig, BertModel

    from rlft import embed

    encoder = tmp_path / "bert"
    tokenizer = AutoTokenizer.from_pretrained(paraphrase_model)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)

    cfg = representation(
        encoder, trainer={"max_steps": 6, "per_device_train_batch_size": 16, "logging_steps": 2}
    )
    ctx = context(tmp_path)
    result = contrastive.run(cfg, ctx)
    assert result.info["backbone"] == "encoder"
    assert AutoConfig.from_pretrained(ctx.artifact_dir).architectures == ["BertModel"]
    before, after = (
        BertModel.from_pretrained(encoder).state_dict(),
        BertModel.from_pretrained(ctx.artifact_dir).state_dict(),
    )
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert embed(ctx.artifact_dir, ["a b c"]).shape == (1, 32)


def test_resumed_run_continues_with_the_same_losses(tmp_path, paraphrase_model):
    """Checkpoints hold the Embedder (its tied LM head once) and resume exactly."""
    trainer = {
        "max_steps": 6,
        "per_device_train_batch_size": 16,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_steps": 3,
    }
    cfg = representation(paraphrase_model, trainer=trainer, evaluate=False)
    whole = context(tmp_path, "whole")
    contrastive.run(cfg, whole)
    expected = {m["step"]: m["train/loss"] for m in read_metrics(whole.metrics_path) if "train/loss" in m}

    resumed = context(tmp_path, "resumed")
    resumed.resume_from = str(whole.checkpoint_dir / "checkpoint-3")
    contrastive.run(cfg, resumed)
    got = {m["step"]: m["train/loss"] for m in read_metrics(resumed.metrics_path) if "train/loss" in m}
    assert sorted(got) == [4, 5, 6]
    assert [got[s] for s in (4, 5, 6)] == pytest.approx([expected[s] for s in (4, 5, 6)], abs=1e-5)


# --- two CPU processes ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["preference", "representation"])
def test_two_cpu_processes_train_one_model(tmp_path, mode):
    """launch: cpu_2proc really starts two processes (world size 2 on both), which log the same losses
    from the first step on (reduced over the ranks) and end with the same weights."""
    if mode == "preference":
        texts, data = QUICKSTART_DATA / "prefs_train.jsonl", f"train: {QUICKSTART_DATA}/prefs_train.jsonl"
    else:
        texts, data = PARAPHRASE / "train.jsonl", f"train: {PARAPHRASE}/train.jsonl"
    (tmp_path / "p.yaml").write_text(
        textwrap.dedent(
            f"""
            name: ddp
            launch: cpu_2proc
            model:
              tiny: {{hidden_size: 32, num_layers: 2, num_heads: 2, tokenizer_texts: [{texts}]}}
            stages:
              - name: con
                kind: contrastive
                mode: {mode}
                data: {{{data}, max_rows: 64}}
                max_length: 64
                trainer: {{max_steps: 3, logging_steps: 1, per_device_train_batch_size: 4, learning_rate: 1.0e-3}}
            """
        )
    )
    run_dir = tmp_path / "run"
    run_pipeline(load_pipeline(tmp_path / "p.yaml"), run_dir=run_dir)
    record = json.loads((run_dir / "con" / "stage.json").read_text())
    assert record["status"] == "done" and record["world_size"] == 2
    ranks = [json.loads((run_dir / "con" / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    assert len(ranks[0]["losses"]) == 3 and ranks[0]["losses"] == ranks[1]["losses"]  # the first step's too
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]


# --- the shipped examples -------------------------------------------------------------------------


@pytest.mark.slow
def test_embeddings_example_retrieves_after_training(tmp_path):
    run_dir = tmp_path / "run"
    run_pipeline(load_pipeline(REPO / "configs" / "examples" / "embeddings.yaml"), run_dir=run_dir)
    (entry,) = json.loads((run_dir / "summary.json").read_text())
    assert entry["retrieval/accuracy@1_before"] <= 0.2 and entry["retrieval/accuracy@1"] >= 0.9, entry


@pytest.mark.slow
def test_contrastive_example_matches_dpo_without_a_reference(tmp_path):
    run_dir = tmp_path / "run"
    run_pipeline(load_pipeline(REPO / "configs" / "examples" / "contrastive.yaml"), run_dir=run_dir)
    summary = {e["stage"]: e for e in json.loads((run_dir / "summary.json").read_text())}
    assert summary["sft"]["task_reward"] < 0.7
    assert summary["cpo"]["task_reward"] >= 0.95 and summary["dpo"]["task_reward"] >= 0.95, summary
    assert summary["cpo"]["eval/rewards/accuracies"] >= 0.95
    # DPO loads a reference and computes its log-probs; the contrastive stage has none
    assert "[rlft] reference log-probs of train" in (run_dir / "dpo" / "stage.log").read_text()
    cpo_log = (run_dir / "cpo" / "stage.log").read_text()
    assert "no reference model" in cpo_log and "[rlft] reference" not in cpo_log


@pytest.mark.slow
def test_a_reward_stage_starts_from_the_embeddings(tmp_path):
    """The issue's use: representation learning before the reward model, which starts `{from: embed}`."""
    (tmp_path / "p.yaml").write_text(
        textwrap.dedent(
            f"""
            name: chain
            model:
              tiny: {{hidden_size: 32, num_layers: 2, num_heads: 2, tokenizer_texts: [{PARAPHRASE}/train.jsonl, {QUICKSTART_DATA}/prefs_train.jsonl]}}
            stages:
              - name: embed
                kind: contrastive
                mode: representation
                data: {{train: {PARAPHRASE}/train.jsonl, max_rows: 64}}
                max_length: 32
                trainer: {{max_steps: 2, per_device_train_batch_size: 16}}
              - name: reward
                kind: reward
                model: {{from: embed}}
                data: {{train: {QUICKSTART_DATA}/prefs_train.jsonl, max_rows: 32}}
                trainer: {{max_steps: 2, per_device_train_batch_size: 8, max_length: 64}}
            """
        )
    )
    run_dir = tmp_path / "run"
    run_pipeline(load_pipeline(tmp_path / "p.yaml"), run_dir=run_dir)
    embed, reward = (json.loads((run_dir / s / "stage.json").read_text()) for s in ("embed", "reward"))
    assert reward["status"] == "done" and reward["inputs"]["model"] == embed["artifact_hash"]
    assert "model: stage 'embed'" in (run_dir / "reward" / "stage.log").read_text()
