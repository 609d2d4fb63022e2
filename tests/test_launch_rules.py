"""`rlft validate` (and `rlft run`) refuse known-bad stage x launch combinations, naming the stage,
the rule and its source; the good neighbour of each combination passes."""

import json

import pytest

from rlft.cli import main
from rlft.errors import ConfigError
from rlft.launch_rules import RULES, check_launch_rules, rule_source
from rlft.pipeline import run_pipeline
from rlft.pipeline_file import load_pipeline


def write_launch(tmp_path, *, accelerate: str, deepspeed: dict | None = None) -> str:
    """An accelerate YAML (and its DeepSpeed JSON, named relative to it) in tmp_path; returns its path."""
    if deepspeed is not None:
        (tmp_path / "ds.json").write_text(json.dumps(deepspeed))
    path = tmp_path / "launch.yaml"
    path.write_text(accelerate)
    return str(path)


DEEPSPEED_YAML = """\
compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config:
  deepspeed_config_file: ds.json
  zero3_init_flag: false
num_machines: 1
num_processes: 2
machine_rank: 0
use_cpu: false
"""


def zero(stage: int, **extra) -> dict:
    return {
        "zero_optimization": {"stage": stage},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        **extra,
    }


def write_pipeline(tmp_path, stage: str, *, launch: str) -> str:
    """One stage (YAML flow mapping) on a hub model name: validate never loads it."""
    (tmp_path / "t.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (tmp_path / "prefs.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    path = tmp_path / "p.yaml"
    path.write_text(f"name: x\nmodel: org/model\nlaunch: {launch}\nstages:\n  - {stage}\n")
    return str(path)


SFT = "{{name: sft, kind: sft, data: {{train: t.jsonl}}, tuning: {tuning}, trainer: {trainer}}}"
PPO = "{name: ppo, kind: ppo, steps: 2, data: {train: prefs.jsonl}, reward: {function: reward_models.tasks:uppercase_copy}}"

# (rule, bad combination, good neighbour): each as (stage, accelerate YAML, DeepSpeed JSON or None)
CASES = {
    "gradual_unfreezing_under_zero": (
        (
            SFT.format(tuning="{method: freeze, last_n_blocks: 1, unfreeze_every: 5}", trainer="{}"),
            DEEPSPEED_YAML,
            zero(2),
        ),
        (SFT.format(tuning="{method: freeze, last_n_blocks: 1}", trainer="{}"), DEEPSPEED_YAML, zero(2)),
    ),
    "prompt_learning_under_zero3": (
        (SFT.format(tuning="{method: prefix_tuning}", trainer="{}"), DEEPSPEED_YAML, zero(3)),
        (SFT.format(tuning="{method: prefix_tuning}", trainer="{}"), DEEPSPEED_YAML, zero(2)),
    ),
    "deepspeed_values_match_trainer": (
        (
            SFT.format(tuning="{method: full}", trainer="{per_device_train_batch_size: 4}"),
            DEEPSPEED_YAML,
            zero(2, train_micro_batch_size_per_gpu=8, optimizer={"type": "AdamW", "params": {"lr": 1e-4}}),
        ),
        (
            SFT.format(
                tuning="{method: full}", trainer="{per_device_train_batch_size: 8, learning_rate: 1.0e-4}"
            ),
            DEEPSPEED_YAML,
            zero(2, train_micro_batch_size_per_gpu=8, optimizer={"type": "AdamW", "params": {"lr": 1e-4}}),
        ),
    ),
    "own_loop_with_deepspeed_optimizer": (
        (PPO, DEEPSPEED_YAML, zero(2, optimizer={"type": "AdamW", "params": {"lr": "auto"}})),
        (PPO, DEEPSPEED_YAML, zero(2)),
    ),
    "offload_replaces_the_optimizer": (
        (
            SFT.format(tuning="{method: full}", trainer="{optim: sgd}"),
            DEEPSPEED_YAML,
            zero(3) | {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}},
        ),
        (
            SFT.format(tuning="{method: full}", trainer="{optim: adamw_torch}"),
            DEEPSPEED_YAML,
            zero(3) | {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}},
        ),
    ),
    "accelerate_settings_beside_deepspeed_file": (
        (
            SFT.format(tuning="{method: full}", trainer="{}"),
            DEEPSPEED_YAML + 'mixed_precision: "no"\n',
            zero(2),
        ),
        (SFT.format(tuning="{method: full}", trainer="{}"), DEEPSPEED_YAML, zero(2)),
    ),
    "multi_cpu_starts_one_process": (
        (
            SFT.format(tuning="{method: full}", trainer="{}"),
            "distributed_type: MULTI_CPU\nnum_processes: 2\nuse_cpu: true\n",
            None,
        ),
        (
            SFT.format(tuning="{method: full}", trainer="{}"),
            "distributed_type: MULTI_GPU\nnum_processes: 2\nuse_cpu: false\n",
            None,
        ),
    ),
}


def test_every_rule_has_a_case_and_a_source():
    assert sorted(CASES) == sorted(rule.__name__ for rule in RULES)
    for rule in RULES:
        assert rule_source(rule).startswith(
            ("https://", "accelerate/", "deepspeed/", "transformers/", "peft/")
        )


@pytest.mark.parametrize("rule", sorted(CASES))
def test_validate_refuses_the_bad_combination_and_passes_its_neighbour(rule, tmp_path, capsys):
    (bad_stage, bad_yaml, bad_ds), (good_stage, good_yaml, good_ds) = CASES[rule]
    launch = write_launch(tmp_path, accelerate=bad_yaml, deepspeed=bad_ds)
    assert main(["validate", write_pipeline(tmp_path, bad_stage, launch=launch)]) == 2
    err = capsys.readouterr().err
    stage = "ppo" if bad_stage is PPO else "sft"
    assert f"stages.{stage} " in err and f"[rule {rule}; source: " in err, err

    launch = write_launch(tmp_path, accelerate=good_yaml, deepspeed=good_ds)
    assert main(["validate", write_pipeline(tmp_path, good_stage, launch=launch)]) == 0, (
        capsys.readouterr().err
    )


def test_batch_size_product_is_checked(tmp_path):
    stage = SFT.format(
        tuning="{method: full}", trainer="{per_device_train_batch_size: 4, gradient_accumulation_steps: 2}"
    )
    launch = write_launch(tmp_path, accelerate=DEEPSPEED_YAML, deepspeed=zero(2, train_batch_size=8))
    with pytest.raises(ConfigError, match=r"train_batch_size=8 but 2 processes x .* 4 x .* 2 = 16"):
        check_launch_rules(load_pipeline(write_pipeline(tmp_path, stage, launch=launch)))
    launch = write_launch(tmp_path, accelerate=DEEPSPEED_YAML, deepspeed=zero(2, train_batch_size=16))
    check_launch_rules(load_pipeline(write_pipeline(tmp_path, stage, launch=launch)))


def test_trainer_default_learning_rate_is_the_trainer_configs(tmp_path):
    """Not set on the stage: SFTConfig's default (2e-5) is what the HF trainer compares with."""
    stage = SFT.format(tuning="{method: full}", trainer="{}")
    ds = zero(2, optimizer={"type": "AdamW", "params": {"lr": 1e-4}})
    launch = write_launch(tmp_path, accelerate=DEEPSPEED_YAML, deepspeed=ds)
    with pytest.raises(ConfigError, match=r"optimizer.params.lr=0.0001 but trainer.learning_rate=2e-05"):
        check_launch_rules(load_pipeline(write_pipeline(tmp_path, stage, launch=launch)))


def test_run_launch_override_is_checked_before_any_work(tmp_path):
    stage = SFT.format(tuning="{method: freeze, last_n_blocks: 1, unfreeze_every: 5}", trainer="{}")
    pipeline = load_pipeline(write_pipeline(tmp_path, stage, launch="cpu_2proc"))
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"stages.sft \(sft\) with launch zero3: gradual unfreezing"):
        run_pipeline(pipeline, run_dir=run_dir, launch="zero3")
    assert not run_dir.exists()


def test_under_an_outer_launch_its_environment_counts(tmp_path, monkeypatch):
    """`accelerate launch --config_file launch/zero3.yaml -m rlft run ...`: the stage's own launch is ignored."""
    stage = SFT.format(tuning="{method: prompt_tuning}", trainer="{}")
    pipeline = load_pipeline(write_pipeline(tmp_path, stage, launch="cpu_2proc"))
    check_launch_rules(pipeline)  # cpu_2proc: DDP
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv(
        "ACCELERATE_DEEPSPEED_CONFIG_FILE", "deepspeed/zero3.json"
    )  # as launch/zero3.yaml writes it
    with pytest.raises(
        ConfigError, match="with launch the outer accelerate launch: prompt_tuning under DeepSpeed ZeRO-3"
    ):
        check_launch_rules(pipeline)
