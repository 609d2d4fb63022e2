"""The multitask stage on a tiny model: SFT and DPO tasks mixed, per-task metrics under their names,
the DPO reference right (full and LoRA), resume, temperature mixing, config errors, two processes."""

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import QUICKSTART_DATA, REPO, stage_context

from rlft.errors import ConfigError, DataError
from rlft.models.tiny import build_tiny_from_texts
from rlft.pipeline_file import pipeline_from_dict
from rlft.stages import multitask
from rlft.stages.base import StageContext
from rlft.tracking import read_metrics

REVERSE_DATA = REPO / "configs" / "data" / "reverse"
UPPER = {
    "name": "upper",
    "data": {
        "train": str(QUICKSTART_DATA / "sft_train.jsonl"),
        "eval": str(QUICKSTART_DATA / "sft_eval.jsonl"),
        "max_rows": 256,
    },
    "reward": "reward_models.tasks:uppercase_copy",
    "eval_prompts": str(QUICKSTART_DATA / "heldout_prompts.jsonl"),
}
REVERSE = {
    "name": "reverse",
    "data": {"train": str(REVERSE_DATA / "sft_train.jsonl"), "max_rows": 256},
    "reward": "reward_models.tasks:reverse_copy",
    "eval_prompts": str(REVERSE_DATA / "heldout_prompts.jsonl"),
}
PREFS = {
    "name": "prefs",
    "objective": "dpo",
    "data": {
        "train": str(QUICKSTART_DATA / "prefs_train.jsonl"),
        "eval": str(QUICKSTART_DATA / "prefs_eval.jsonl"),
        "max_rows": 128,
    },
    "beta": 0.1,
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    texts = (QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines()
    texts += (REVERSE_DATA / "sft_train.jsonl").read_text().splitlines()
    return build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("tiny") / "model", hidden_size=32, num_layers=2, num_heads=2
    )


def make(
    tmp_path: Path, tiny_model: Path, work: str = "work", **overrides
) -> tuple[multitask.MultitaskStage, StageContext]:
    spec = {
        "name": "mt",
        "kind": "multitask",
        "model": {"path": str(tiny_model)},
        "tasks": [UPPER, REVERSE],
        "steps": 6,
        "batch_size": 8,
        "learning_rate": 3e-3,
        "logging_steps": 1,
        "eval_batch_size": 64,
        "eval_max_prompts": 8,
        "eval_max_new_tokens": 8,
        **overrides,
    }
    cfg = multitask.MultitaskStage.model_validate(spec)
    work_dir = tmp_path / work
    (work_dir / "artifact").mkdir(parents=True, exist_ok=True)
    ctx = stage_context(tmp_path, work_dir)
    return cfg, ctx


def logged(ctx: StageContext, key: str) -> list[tuple[int, float]]:
    return [(m["step"], m[key]) for m in read_metrics(ctx.metrics_path) if key in m]


def test_sft_and_dpo_tasks_train_together_with_per_task_metrics(tmp_path, tiny_model):
    from transformers import AutoModelForCausalLM

    tasks = [
        {**UPPER, "weight": 1},
        {**PREFS, "weight": 1, "loss_type": ["sigmoid", "sft"]},
        {**REVERSE, "weight": 2},
    ]
    cfg, ctx = make(tmp_path, tiny_model, tasks=tasks, steps=40, logging_steps=5, eval_steps=20)
    result = multitask.run(cfg, ctx)

    for name in ("upper", "prefs", "reverse"):  # every evaluation: a loss per task, under its name
        assert [s for s, _ in logged(ctx, f"task/{name}/loss")] == [20, 40]
        assert all(math.isfinite(v) for _, v in logged(ctx, f"task/{name}/loss"))
        assert len(logged(ctx, f"task/{name}/train_loss")) >= 6
        assert [s for s, _ in logged(ctx, f"task/{name}/share")] == [5, 10, 15, 20, 25, 30, 35, 40]
    for name in ("upper", "reverse"):  # and the reward of the tasks that have one
        assert [s for s, _ in logged(ctx, f"task/{name}/reward")] == [20, 40]
    assert [s for s, _ in logged(ctx, "task/prefs/accuracy")] == [20, 40]
    assert not logged(ctx, "task/prefs/reward")
    upper = [v for _, v in logged(ctx, "task/upper/train_loss")]
    # it learns: 10 of its own micro-batches in 40 steps took it from 5.77 to 4.63 (0.80x) when measured;
    # the bound leaves room for the row order (seeded by the task's name), and the loss falls every time
    assert upper[-1] < 0.9 * upper[0], upper
    assert all(b < a for a, b in itertools.pairwise(upper)), upper

    metrics = result.metrics
    counts = {row["task"]: row["micro_batches"] for row in result.info["tasks"]}
    assert counts == {"upper": 10, "prefs": 10, "reverse": 20}  # 40 draws at 1/4, 1/4, 1/2
    assert (metrics["task/reverse/share"], metrics["task/reverse/target_share"]) == (0.5, 0.5)
    assert {k for k in metrics if k.startswith("task/upper/")} == {
        "task/upper/loss",
        "task/upper/reward",
        "task/upper/share",
        "task/upper/target_share",
    }
    assert 0 <= metrics["task/prefs/accuracy"] <= 1 and "task/reverse/loss" in metrics
    rows = {row["task"]: row for row in result.info["tasks"]}
    assert rows["reverse"]["loss_on"].startswith("train batches") and rows["upper"]["loss_on"] == "eval rows"
    assert rows["upper"]["samples"] and result.info["reference"].startswith("the starting model")
    assert (ctx.artifact_dir / "task_upper_samples.jsonl").exists()

    before = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    after = AutoModelForCausalLM.from_pretrained(ctx.artifact_dir).state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "tuning", [{"method": "full"}, {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0}]
)
def test_a_preference_task_starts_at_its_reference(tmp_path, tiny_model, tuning):
    """The reference is the starting model: at the first step the policy is it, so every pair's DPO loss
    is log 2; with LoRA the reference is the policy with its new adapter disabled."""
    cfg, ctx = make(tmp_path, tiny_model, tasks=[PREFS], steps=3, tuning=tuning)
    result = multitask.run(cfg, ctx)
    first = logged(ctx, "train/loss")[0]
    assert first[0] == 1 and first[1] == pytest.approx(math.log(2), abs=1e-5)
    assert logged(ctx, "train/loss")[-1][1] < math.log(2)  # and it learns from there
    assert ("adapter disabled" in result.info["reference"]) == (tuning["method"] == "lora")
    if tuning["method"] == "lora":
        params = result.info["parameters"]
        assert 0 < params["trainable"] < params["total"] * 0.5
        assert result.info["saved"]["merged"] and (ctx.artifact_dir / "adapter").is_dir()


def test_resume_continues_from_the_saved_step(tmp_path, tiny_model):
    """Resumed from checkpoint-3, the run goes on as the uninterrupted one: same tasks drawn (the sampler's
    state), same losses (weights, optimizer, schedule), same final weights."""
    settings = {"tasks": [UPPER, {**PREFS, "weight": 0.5}, REVERSE], "steps": 6, "save_steps": 3}
    cfg, ctx = make(tmp_path, tiny_model, **settings)
    first = multitask.run(cfg, ctx)
    checkpoint = ctx.checkpoint_dir / "checkpoint-3"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 3

    cfg2, ctx2 = make(tmp_path, tiny_model, work="resumed", **settings)
    ctx2.resume_from = str(checkpoint)
    second = multitask.run(cfg2, ctx2)
    assert [s for s, _ in logged(ctx2, "train/loss")] == [4, 5, 6]
    assert [v for _, v in logged(ctx2, "train/loss")] == pytest.approx(
        [v for _, v in logged(ctx, "train/loss")][3:], rel=1e-5
    )
    assert second.rank["losses"] == pytest.approx(first.rank["losses"], rel=1e-5)
    assert second.metrics["task/prefs/share"] == first.metrics["task/prefs/share"]
    assert second.rank["param_checksum"] == pytest.approx(first.rank["param_checksum"], rel=1e-6)


def test_mixing_by_temperature_follows_the_task_sizes(tmp_path, tiny_model):
    small = {**UPPER, "data": {**UPPER["data"], "max_rows": 40}}
    large = {**REVERSE, "data": {**REVERSE["data"], "max_rows": 160}}
    cfg, ctx = make(
        tmp_path, tiny_model, tasks=[small, large], mixing={"by": "temperature", "temperature": 2.0}, steps=2
    )
    result = multitask.run(cfg, ctx)
    shares = [row["target_share"] for row in result.info["tasks"]]
    assert shares == pytest.approx(
        [40**0.5 / (40**0.5 + 160**0.5), 160**0.5 / (40**0.5 + 160**0.5)], abs=1e-4
    )  # 1/3, 2/3


def test_a_task_prefix_and_system_prompt_reach_training_and_evaluation(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    task = {**UPPER, "prefix": "[up] ", "system_prompt": "Be loud."}
    cfg, ctx = make(tmp_path, tiny_model, tasks=[task])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    loaded = multitask.load_task(0, cfg, ctx, tokenizer=tokenizer)
    text = tokenizer.decode(loaded.train[0]["input_ids"])
    assert text.startswith("<|system|>\nBe loud.<|end|>\n<|user|>\n[up] shout: ")
    assert loaded.prompts[0]["prompt"][1]["content"].startswith("[up] shout: ")  # what the model is asked
    assert loaded.prompts[0]["original_prompt"][0]["content"].startswith("shout: ")  # what the reward reads


def test_a_preference_task_given_sft_data_says_so(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    cfg, ctx = make(tmp_path, tiny_model, tasks=[{**UPPER, "objective": "dpo"}])
    with pytest.raises(
        DataError, match=r"tasks\[0\] \(task 'upper'\): objective dpo trains on preference pairs"
    ) as e:
        multitask.load_task(0, cfg, ctx, tokenizer=AutoTokenizer.from_pretrained(tiny_model))
    assert "use objective: sft" in str(e.value)


def pipeline_error(tmp_path, **stage) -> str:
    spec = {"name": "mt", "kind": "multitask", "model": "m/m", "steps": 1, "tasks": [UPPER, REVERSE], **stage}
    with pytest.raises(ConfigError) as e:
        pipeline_from_dict({"name": "p", "stages": [spec]}, base_dir=tmp_path)
    return str(e.value)


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([{**UPPER, "wieght": 2}, REVERSE], "stages[0].tasks[0].wieght: unknown key; did you mean weight?"),
        ([{"name": "upper"}, REVERSE], "stages[0].tasks[0].data: missing; this key is required"),
        ([{**UPPER, "weight": 0}, {**REVERSE, "weight": 0}], "stages[0]: tasks: the weights sum to 0"),
        (
            [UPPER, {**REVERSE, "name": "upper"}],
            "stages[0]: tasks[1].name: 'upper' is the name of tasks[0] too",
        ),
        (
            [{**UPPER, "eval_prompts": None}],
            "stages[0].tasks[0]: reward is measured with eval_prompts: give both",
        ),
        ([{**PREFS, "loss_type": "dpo"}], "stages[0].tasks[0].loss_type[0]: Input should be 'sigmoid'"),
        ([], "stages[0].tasks: List should have at least 1 item"),
    ],
    ids=[
        "unknown-field",
        "no-data",
        "weights-sum-0",
        "duplicate-names",
        "reward-without-prompts",
        "bad-loss",
        "no-tasks",
    ],
)
def test_bad_configs_give_one_clear_error_each(tmp_path, tasks, message):
    error = pipeline_error(tmp_path, tasks=tasks)
    assert message in error and error.count("\n") == 0, error


def test_temperature_and_weights_do_not_mix(tmp_path):
    error = pipeline_error(
        tmp_path, tasks=[{**UPPER, "weight": 2}, REVERSE], mixing={"by": "temperature", "temperature": 2}
    )
    assert "tasks[0].weight: mixing by temperature sets the shares from the tasks' sizes" in error
    assert "by: temperature needs temperature" in pipeline_error(tmp_path, mixing={"by": "temperature"})


def test_the_pipeline_checks_and_hashes_every_tasks_files(tmp_path):
    from rlft.pipeline import stage_fingerprint

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "reverse: a b", "answer": "b a"}\n')
    spec = {
        "name": "mt",
        "kind": "multitask",
        "model": "m/m",
        "steps": 1,
        "tasks": [UPPER, {**REVERSE, "eval_prompts": "prompts.jsonl"}],
    }
    pipeline = pipeline_from_dict({"name": "p", "stages": [spec]}, base_dir=tmp_path)
    _, inputs = stage_fingerprint(pipeline, pipeline.stages[0], tmp_path, {}, {})
    files = set(inputs["data"])
    for path in (
        UPPER["data"]["train"],
        UPPER["data"]["eval"],
        UPPER["eval_prompts"],
        REVERSE["data"]["train"],
        prompts,
    ):
        assert str(Path(path).resolve()) in files
    prompts.write_text('{"prompt": "reverse: a c", "answer": "c a"}\n')
    assert (
        stage_fingerprint(pipeline, pipeline.stages[0], tmp_path, {}, {})[1] != inputs
    )  # changed file: re-run
    missing = {**spec, "tasks": [UPPER, {**REVERSE, "data": {"train": "nope.jsonl"}}]}
    with pytest.raises(ConfigError, match=r"stages\[0\]\.tasks\[1\]\.data\.train: .*nope\.jsonl"):
        pipeline_from_dict({"name": "p", "stages": [missing]}, base_dir=tmp_path)
    no_prompts = {**spec, "tasks": [UPPER, {**REVERSE, "eval_prompts": "gone.jsonl"}]}
    with pytest.raises(
        ConfigError, match=r"stages\[0\]\.tasks\[1\]\.eval_prompts: .*gone\.jsonl does not exist"
    ):
        pipeline_from_dict({"name": "p", "stages": [no_prompts]}, base_dir=tmp_path)


def test_two_cpu_processes_train_one_model(tmp_path):
    """launch: cpu_2proc: two real processes (world size asserted: the `--cpu` trap starts one) draw the
    same tasks and each trains on its own rows; the loss averaged over them is the same on both ranks
    from the first step, and so are the weights. A preference task's reference log-probs are split
    between them and gathered."""
    from rlft.pipeline import run_pipeline
    from rlft.pipeline_file import load_pipeline

    def flow(task: dict) -> str:
        return json.dumps({**task, "data": {**task["data"], "max_rows": 64}})

    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"""
name: p2
launch: cpu_2proc
model:
  tiny: {{hidden_size: 32, num_layers: 2, num_heads: 2, tokenizer_texts: [{QUICKSTART_DATA}/sft_train.jsonl, {REVERSE_DATA}/sft_train.jsonl]}}
stages:
  - name: mt
    kind: multitask
    tasks: [{flow(UPPER)}, {flow(PREFS)}, {flow(REVERSE)}]
    steps: 4
    batch_size: 4
    learning_rate: 1.0e-3
    logging_steps: 1
    eval_max_prompts: 4
    eval_max_new_tokens: 4
    save_steps: 2
"""
    )
    run_dir = tmp_path / "run"
    run_pipeline(load_pipeline(pipeline), run_dir=run_dir)
    record = json.loads((run_dir / "mt" / "stage.json").read_text())
    assert record["status"] == "done" and record["world_size"] == 2
    ranks = [json.loads((run_dir / "mt" / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    assert (
        len(ranks[0]["losses"]) == 4 and ranks[0]["losses"][0] == ranks[1]["losses"][0]
    )  # the first step's loss
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert ranks[0]["local_losses"][0] != ranks[1]["local_losses"][0]  # each rank trained on its own rows
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]  # one model, kept in sync
    for name in ("upper", "prefs", "reverse"):
        assert f"task/{name}/loss" in record["metrics"]
    summary = {e["stage"]: e for e in json.loads((run_dir / "summary.json").read_text())}
    assert "task/upper/reward" in summary["mt"] and "task/prefs/accuracy" in summary["mt"]
