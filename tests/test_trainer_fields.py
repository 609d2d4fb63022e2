"""The ast-read field names of trainer configs equal the imported dataclasses' fields."""

import subprocess
import sys

import pytest

from rlft.trainer_fields import _ast_fields, check_trainer_keys, field_default, imported_fields

CLASSES = [
    "trl.trainer.sft_config:SFTConfig",
    "trl.trainer.reward_config:RewardConfig",
    "trl.trainer.dpo_config:DPOConfig",
    "trl.trainer.kto_config:KTOConfig",
    "trl.trainer.grpo_config:GRPOConfig",
    "trl.trainer.rloo_config:RLOOConfig",
    "trl.experimental.cpo.cpo_config:CPOConfig",
    "transformers.training_args:TrainingArguments",
]


@pytest.mark.parametrize("class_path", CLASSES)
def test_ast_fields_match_dataclass_fields(class_path):
    module, name = class_path.split(":")
    assert _ast_fields(module, name) == imported_fields(class_path)


@pytest.mark.parametrize("class_path", CLASSES)
def test_ast_defaults_match_dataclass_defaults(class_path):
    """The plain defaults that `rlft validate` compares with a DeepSpeed JSON (rlft/launch_rules.py)."""
    import dataclasses
    import importlib

    module, name = class_path.split(":")
    defaults = {f.name: f.default for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    for key in (
        "learning_rate",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "max_grad_norm",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "weight_decay",
    ):
        assert field_default(class_path, key) == defaults[key], key


def test_check_trainer_keys_suggests():
    assert check_trainer_keys(CLASSES[0], {"learning_rate": 1e-3, "max_length": 64}) is None
    msg = check_trainer_keys(CLASSES[0], {"max_seq_length": 64})
    assert msg.startswith("max_seq_length: unknown key for SFTConfig")


def test_validate_does_not_import_trl_or_torch(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "name: x\nmodel: some/model\nstages:\n  - {name: sft, kind: sft, data: {train: t.jsonl}, trainer: {max_steps: 1}}\n"
    )
    code = (
        "import sys; from rlft.cli import main; assert main(['validate', sys.argv[1]]) == 0; "
        "heavy = [m for m in ('trl', 'torch', 'deepspeed', 'wandb', 'transformers', 'datasets') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code, str(pipeline)], check=True)
