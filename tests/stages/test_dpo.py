"""DPO on a tiny model: references right at step 0 (fresh, merged LoRA, adapter-only), cached reference
log-probs, training moves the margins, the artifact reloads, a resumed run continues the same losses."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import QUICKSTART_DATA, stage_context

from rlft.errors import ConfigError
from rlft.models.tiny import build_tiny_from_texts
from rlft.stages import dpo, sft
from rlft.stages.base import StageContext
from rlft.tracking import read_metrics

LOG2 = math.log(2)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    texts = [
        *(QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines(),
        *(QUICKSTART_DATA / "prefs_train.jsonl").read_text().splitlines(),
    ]
    return build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("tiny") / "model", hidden_size=32, num_layers=2, num_heads=2
    )


def context(tmp_path: Path, name: str = "work") -> StageContext:
    return stage_context(tmp_path, tmp_path / name)


def make(model: dict, **overrides) -> dpo.DPOStage:
    spec = {
        "name": "dpo",
        "kind": "dpo",
        "model": model,
        "data": {"train": str(QUICKSTART_DATA / "prefs_train.jsonl"), "max_rows": 64},
        "max_length": 64,
        "trainer": {
            "max_steps": 1,
            "per_device_train_batch_size": 8,
            "learning_rate": 1e-3,
            "logging_steps": 1,
        },
        **overrides,
    }
    return dpo.DPOStage.model_validate(spec)


def step_zero(trainer) -> tuple[float, list[float], list[float]]:
    """Loss, margins and chosen log-probs on the first 8 training pairs, before any step."""
    trainer.model.eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
    metrics = trainer._metrics["eval"]  # TRL files metrics by the model's mode
    return loss, metrics["rewards/margins"][-1], metrics["logps/chosen"][-1]


@pytest.fixture(scope="module")
def sft_lora(tiny_model, tmp_path_factory) -> Path:
    """A LoRA SFT artifact: merged model at the root, the adapter alone in adapter/."""
    tmp = tmp_path_factory.mktemp("sft_lora")
    cfg = sft.SFTStage.model_validate(
        {
            "name": "sft",
            "kind": "sft",
            "model": {"path": str(tiny_model)},
            "data": {"train": str(QUICKSTART_DATA / "sft_train.jsonl"), "max_rows": 128},
            "tuning": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
            "trainer": {"max_steps": 8, "learning_rate": 1e-2, "per_device_train_batch_size": 16},
        }
    )
    ctx = context(tmp)
    sft.run(cfg, ctx)
    return ctx.artifact_dir


def test_config_errors_speak_to_the_user():
    assert make({"hub": "x"}, loss_type="ipo").loss_type == ["ipo"]
    with pytest.raises(ValueError, match="set beta on the stage itself"):
        make({"hub": "x"}, trainer={"beta": 0.2})
    with pytest.raises(ValueError, match="2 weights for 1 losses"):
        make({"hub": "x"}, loss_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="label_smoothing is read by sigmoid"):
        make({"hub": "x"}, loss_type=["hinge"], label_smoothing=0.1)
    with pytest.raises(ValueError, match="cDPO for sigmoid and rDPO for robust at once"):
        make({"hub": "x"}, loss_type=["sigmoid", "robust"], label_smoothing=0.1)
    with pytest.raises(ValueError, match="sigmoid_norm"):
        make({"hub": "x"}, loss_type=["simpo"])


@pytest.mark.parametrize("precompute", [False, True])
def test_step_zero_with_a_fresh_reference(tmp_path, tiny_model, precompute):
    cfg = make({"path": str(tiny_model)}, precompute_reference=precompute)
    trainer, info = dpo.make_trainer(cfg, context(tmp_path))
    # Without precompute the reference is a frozen copy; with it, the policy before its first step.
    assert (trainer.ref_model is None) == precompute
    loss, margin, _ = step_zero(trainer)
    assert loss == pytest.approx(LOG2, abs=1e-6) and margin == pytest.approx(0.0, abs=1e-6)


def test_step_zero_from_a_merged_lora_sft_artifact(tmp_path, tiny_model, sft_lora):
    cfg = make({"path": str(sft_lora)}, tuning={"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0})
    trainer, info = dpo.make_trainer(cfg, context(tmp_path))
    assert "adapter disabled" in info["reference"]["model"] and trainer.ref_model is None
    assert (
        "ref" not in trainer.model.peft_config
    )  # TRL's copy of the new adapter is gone: disabled = SFT model
    loss, margin, chosen = step_zero(trainer)
    assert loss == pytest.approx(LOG2, abs=1e-6) and margin == pytest.approx(0.0, abs=1e-6)

    # The reference is the SFT model, not the base under it: the base scores the pairs differently.
    base, _ = dpo.make_trainer(make({"path": str(tiny_model)}), context(tmp_path, "base"))
    assert abs(step_zero(base)[2] - chosen) > 1e-3


def test_adapter_only_start_is_merged_so_the_reference_is_the_adapted_model(tmp_path, sft_lora):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    adapter = sft_lora / "adapter"  # adapter_config.json + weights, base = the tiny model
    cfg = make({"path": str(adapter)}, tuning={"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0})
    ctx = context(tmp_path)
    trainer, _ = dpo.make_trainer(cfg, ctx)
    loss, margin, chosen = step_zero(trainer)
    assert loss == pytest.approx(LOG2, abs=1e-6) and margin == pytest.approx(0.0, abs=1e-6)
    merged, _ = dpo.make_trainer(make({"path": str(sft_lora)}), context(tmp_path, "merged"))
    assert step_zero(merged)[2] == pytest.approx(chosen, abs=1e-4)  # the same model as the merged artifact

    # The pitfall this prevents: train the SFT adapter on, unmerged, and "adapter disabled" is the base.
    base = AutoModelForCausalLM.from_pretrained(
        json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    )
    unmerged = PeftModel.from_pretrained(base, adapter, is_trainable=True)
    naive = DPOTrainer(
        model=unmerged,
        args=DPOConfig(output_dir=str(tmp_path / "naive"), max_length=64, use_cpu=True, report_to="none"),
        train_dataset=trainer.train_dataset.select_columns(["prompt", "chosen", "rejected"]),
        processing_class=trainer.processing_class,
    )
    naive.model.delete_adapter(
        "ref"
    )  # TRL's own guard copies the adapter; without it, the reference is the base
    assert abs(step_zero(naive)[1]) > 1e-3


def test_cached_reference_logps_equal_fresh_ones_and_a_second_stage_hits(tmp_path, tiny_model):
    cfg = make(
        {"path": str(tiny_model)},
        precompute_reference=True,
        data={
            "train": str(QUICKSTART_DATA / "prefs_train.jsonl"),
            "eval": str(QUICKSTART_DATA / "prefs_eval.jsonl"),
            "max_rows": 32,
        },
    )
    first, info = dpo.make_trainer(cfg, context(tmp_path, "first"))
    assert [(e["split"], e["status"]) for e in info["reference"]["cache"]] == [
        ("train", "miss"),
        ("eval", "miss"),
    ]
    key_dirs = sorted((tmp_path / "cache" / "ref_logps").iterdir())
    assert len(key_dirs) == 2 and all((d / "key.json").exists() for d in key_dirs)

    # The cached column equals the reference model run afresh on the same batches.
    ds = first.train_dataset
    batch = first.data_collator([ds[i] for i in range(len(ds))])
    fresh_chosen, fresh_rejected = first.compute_ref_log_probs(first.model, batch)
    assert torch.allclose(torch.tensor(ds["ref_chosen_logps"]), fresh_chosen, atol=1e-5)
    assert torch.allclose(torch.tensor(ds["ref_rejected_logps"]), fresh_rejected, atol=1e-5)

    # Another β and loss: the same reference log-probs, read from the cache.
    other = cfg.model_copy(update={"beta": 0.5, "loss_type": ["ipo"]})
    second, info2 = dpo.make_trainer(other, context(tmp_path, "second"))
    assert [e["status"] for e in info2["reference"]["cache"]] == ["hit", "hit"]
    assert second.train_dataset["ref_chosen_logps"] == ds["ref_chosen_logps"]

    # What changes the log-probs changes the key: another max_length is a miss.
    shorter = cfg.model_copy(update={"max_length": 20})
    _, info3 = dpo.make_trainer(shorter, context(tmp_path, "third"))
    assert [e["status"] for e in info3["reference"]["cache"]] == ["miss", "miss"]


def test_dpo_trains_margins_and_the_artifact_reloads(tmp_path, tiny_model):
    from transformers import AutoModelForCausalLM

    cfg = make(
        {"path": str(tiny_model)},
        precompute_reference=True,
        trainer={
            "max_steps": 20,
            "per_device_train_batch_size": 8,
            "learning_rate": 3e-3,
            "logging_steps": 2,
        },
    )
    ctx = context(tmp_path)
    result = dpo.run(cfg, ctx)
    logged = read_metrics(ctx.metrics_path)
    losses = [m["train/loss"] for m in logged if "train/loss" in m]
    assert losses[0] == pytest.approx(LOG2, abs=0.05) and losses[-1] < 0.8 * losses[0], losses
    assert result.metrics["rewards/margins"] > 0 and result.metrics["train/global_step"] == 20
    assert {"rewards/margins", "rewards/accuracies"} <= {k for m in logged for k in m}
    before = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    after = AutoModelForCausalLM.from_pretrained(ctx.artifact_dir).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_resumed_run_continues_with_the_same_losses(tmp_path, tiny_model):
    trainer_cfg = {
        "max_steps": 6,
        "per_device_train_batch_size": 8,
        "learning_rate": 3e-3,
        "logging_steps": 1,
        "save_steps": 3,
    }
    cfg = make({"path": str(tiny_model)}, precompute_reference=True, trainer=trainer_cfg, evaluate=False)
    whole = context(tmp_path, "whole")
    dpo.run(cfg, whole)
    expected = {m["step"]: m["train/loss"] for m in read_metrics(whole.metrics_path) if "train/loss" in m}

    resumed = context(tmp_path, "resumed")
    resumed.resume_from = str(whole.checkpoint_dir / "checkpoint-3")
    dpo.run(cfg, resumed)
    got = {m["step"]: m["train/loss"] for m in read_metrics(resumed.metrics_path) if "train/loss" in m}
    assert sorted(got) == [4, 5, 6]
    assert [got[s] for s in (4, 5, 6)] == pytest.approx([expected[s] for s in (4, 5, 6)], abs=1e-5)


def test_prompt_tuning_keeps_the_starting_model_as_reference(tmp_path, tiny_model):
    # A new prompt on a plain start: the reference is the start (adapter disabled), not TRL's copy
    # of the initial prompt; a prompt is not a no-op, so the margins start away from 0.
    prompt = {"method": "prompt_tuning", "num_virtual_tokens": 4}
    trainer, _ = dpo.make_trainer(make({"path": str(tiny_model)}, tuning=prompt), context(tmp_path))
    assert trainer.ref_model is None and "ref" not in trainer.model.peft_config
    assert abs(step_zero(trainer)[1]) > 1e-4

    # Starting from an artifact that keeps its prompt: the policy at step 0, prompt included, is the
    # reference (its log-probs precomputed: TRL cannot run a separate PeftModel as reference).
    ctx = context(tmp_path, "sft")
    sft.run(
        sft.SFTStage.model_validate(
            {
                "name": "sft",
                "kind": "sft",
                "model": {"path": str(tiny_model)},
                "data": {"train": str(QUICKSTART_DATA / "sft_train.jsonl"), "max_rows": 32},
                "tuning": prompt,
                "evaluate": False,
                "trainer": {"max_steps": 2, "learning_rate": 1e-2, "per_device_train_batch_size": 16},
            }
        ),
        ctx,
    )
    trainer, info = dpo.make_trainer(make({"path": str(ctx.artifact_dir)}), context(tmp_path, "dpo"))
    assert (
        "kept prompt" in info["reference"]["model"]
        and "ref_chosen_logps" in trainer.train_dataset.column_names
    )
    loss, margin, _ = step_zero(trainer)
    assert loss == pytest.approx(LOG2, abs=1e-6) and margin == pytest.approx(0.0, abs=1e-6)


def test_explicit_reference(tmp_path, tiny_model, sft_lora):
    # Another model: a frozen copy of it is the reference, so the margins start away from 0.
    cfg = make({"path": str(tiny_model)}, reference={"path": str(sft_lora)})
    trainer, info = dpo.make_trainer(cfg, context(tmp_path))
    assert trainer.ref_model is not None and str(sft_lora) in info["reference"]["model"]
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())
    assert abs(step_zero(trainer)[1]) > 1e-4
    # The starting model named again is the default: no second copy with precompute.
    same = make({"path": str(tiny_model)}, reference={"path": str(tiny_model)}, precompute_reference=True)
    trainer, info = dpo.make_trainer(same, context(tmp_path, "same"))
    assert trainer.ref_model is None and "starting model" in info["reference"]["model"]


def test_reference_with_another_vocabulary_is_refused(tmp_path, tiny_model):
    other = build_tiny_from_texts(
        ["a b c d"] * 20, tmp_path / "other", hidden_size=32, num_layers=1, num_heads=2
    )
    cfg = make({"path": str(tiny_model)}, reference={"path": str(other)})
    with pytest.raises(ConfigError, match="must\\s+score the policy's token ids"):
        dpo.make_trainer(cfg, context(tmp_path))


def test_length_grouped_batches(tmp_path, tiny_model):
    """`train_sampling_strategy: group_by_length` needs a length per pair, which TRL's tokenized pairs lack
    (transformers raises); the stage adds it, and the sampler then puts pairs of similar length together."""
    cfg = make(
        {"path": str(tiny_model)},
        trainer={
            "max_steps": 1,
            "per_device_train_batch_size": 4,
            "train_sampling_strategy": "group_by_length",
        },
    )
    trainer, _ = dpo.make_trainer(cfg, context(tmp_path))
    lengths = trainer.train_dataset["length"]
    assert lengths == dpo.pair_lengths(trainer.train_dataset[:])
    widths = [batch["input_ids"].shape[1] for batch in trainer.get_train_dataloader()]
    assert widths[0] == max(lengths)  # LengthGroupedSampler: the longest batch first
    # grouped batches pad less than the pairs in their given order
    ordered = [max(lengths[i : i + 4]) * len(lengths[i : i + 4]) for i in range(0, len(lengths), 4)]
    assert sum(w * 4 for w in widths) < sum(ordered)


def test_pair_lengths():
    rows = {"prompt_ids": [[1, 2], [3]], "chosen_ids": [[4], [5, 6, 7]], "rejected_ids": [[8, 9, 10], [11]]}
    assert dpo.pair_lengths(rows) == [5, 4]
