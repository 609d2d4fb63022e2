"""SFT on a tiny model, in-process: masking, loss falls, parameters change, artifact reloads, LoRA."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import QUICKSTART_DATA, stage_context

from rlft.models.tiny import build_tiny_from_texts
from rlft.stages import sft
from rlft.stages.base import StageContext
from rlft.tracking import read_metrics


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    texts = [line for line in (QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines()]
    return build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("tiny") / "model", hidden_size=32, num_layers=2, num_heads=2
    )


def make(tmp_path: Path, tiny_model: Path, **overrides) -> tuple[sft.SFTStage, StageContext]:
    spec = {
        "name": "sft",
        "kind": "sft",
        "model": {"path": str(tiny_model)},
        "data": {"train": str(QUICKSTART_DATA / "sft_train.jsonl"), "max_rows": 256},
        "trainer": {
            "max_steps": 40,
            "learning_rate": 3e-3,
            "logging_steps": 5,
            "per_device_train_batch_size": 16,
        },
        **overrides,
    }
    cfg = sft.SFTStage.model_validate(spec)
    work = tmp_path / "work"
    ctx = stage_context(tmp_path, work)
    return cfg, ctx


def test_prompt_tokens_carry_label_minus_100(tmp_path, tiny_model):
    cfg, ctx = make(tmp_path, tiny_model)
    trainer, _ = sft.make_trainer(cfg, ctx)
    tokenizer = trainer.processing_class
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        text = tokenizer.decode(ids[labels == -100][ids[labels == -100] != tokenizer.pad_token_id])
        trained = tokenizer.decode(ids[labels != -100])
        assert "shout:" in text and "<|assistant|>" in text  # the prompt, role tags included, is masked
        assert "shout:" not in trained and trained.endswith("<|end|>")  # the completion and its eos train
        assert (labels != -100).sum() > 0


def test_sft_loss_falls_params_change_artifact_reloads(tmp_path, tiny_model):
    from transformers import AutoModelForCausalLM

    cfg, ctx = make(tmp_path, tiny_model)
    before = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    result = sft.run(cfg, ctx)

    losses = [m["train/loss"] for m in read_metrics(ctx.metrics_path) if "train/loss" in m]
    assert len(losses) >= 5 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.85 * losses[0], losses
    rates = [m["perf/tokens_per_second"] for m in read_metrics(ctx.metrics_path) if "train/loss" in m]
    assert len(rates) == len(losses) and all(r > 0 for r in rates)
    assert result.metrics["train/global_step"] == 40
    assert result.info["parameters"]["trainable"] == result.info["parameters"]["total"]

    after = AutoModelForCausalLM.from_pretrained(ctx.artifact_dir).state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)  # full tuning: every tensor moved


def test_sft_with_eval_split_reports_eval_loss(tmp_path, tiny_model):
    cfg, ctx = make(
        tmp_path,
        tiny_model,
        data={"train": str(QUICKSTART_DATA / "sft_train.jsonl"), "max_rows": 128, "eval_fraction": 0.25},
    )
    result = sft.run(cfg, ctx)
    assert math.isfinite(result.metrics["eval/loss"])
    assert result.info["data"]["eval"]["rows"] == 32


def test_lora_trains_adapters_and_saves_merged_model(tmp_path, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg, ctx = make(tmp_path, tiny_model, tuning={"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0})
    result = sft.run(cfg, ctx)
    params = result.info["parameters"]
    assert 0 < params["trainable"] < params["total"] * 0.5
    assert result.info["saved"] == {"merged": True, "adapter": "adapter/", "peft": "lora"}

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    merged = AutoModelForCausalLM.from_pretrained(ctx.artifact_dir)  # a plain model: no peft needed
    assert not any("lora" in k for k in merged.state_dict())
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base.state_dict()[q], merged.state_dict()[q])  # the adapter was merged in
    emb = "model.embed_tokens.weight"
    assert torch.equal(base.state_dict()[emb], merged.state_dict()[emb])  # frozen weights stayed

    # The saved adapter on the base model gives the merged model's outputs.
    with_adapter = PeftModel.from_pretrained(base, ctx.artifact_dir / "adapter")
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.allclose(with_adapter(ids).logits, merged(ids).logits, atol=1e-4)


def test_messages_data_trains_assistant_turns_only(tmp_path, tiny_model):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"shout: {c}"},
                {"role": "assistant", "content": c.upper()},
            ]
        }
        for c in ("a b c", "d e f", "g h i", "j k l")
    ]
    data = tmp_path / "messages.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg, ctx = make(
        tmp_path,
        tiny_model,
        data={"train": str(data)},
        trainer={"max_steps": 1, "per_device_train_batch_size": 2},
    )
    trainer, _ = sft.make_trainer(cfg, ctx)
    assert trainer.args.assistant_only_loss
    batch = trainer.data_collator([trainer.train_dataset[0]])
    trained = trainer.processing_class.decode(batch["input_ids"][0][batch["labels"][0] != -100])
    assert trained == "A B C<|end|>"


def test_trainer_output_dir_is_owned_by_rlft(tmp_path, tiny_model):
    from rlft.errors import ConfigError

    cfg, ctx = make(tmp_path, tiny_model, trainer={"output_dir": "/tmp/elsewhere"})
    with pytest.raises(ConfigError, match="trainer.output_dir: set by rlft"):
        sft.make_trainer(cfg, ctx)


def test_packing_trains(tmp_path, tiny_model):
    trainer_cfg = {
        "packing": True,
        "max_length": 128,
        "max_steps": 3,
        "per_device_train_batch_size": 2,
        "logging_steps": 1,
    }
    cfg, ctx = make(tmp_path, tiny_model, trainer=trainer_cfg)
    trainer, _ = sft.make_trainer(cfg, ctx)
    assert len(trainer.train_dataset) < 256  # rows were packed into fewer sequences
    result = sft.run(cfg, ctx)
    assert result.metrics["train/global_step"] == 3 and math.isfinite(result.metrics["train/loss"])
