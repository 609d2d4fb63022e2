"""Kill a stage anywhere, run again: it resumes and ends as if it had never died.

For every kind that trains, `rlft run` (here: rlft.pipeline.run_pipeline, each stage in its own child
process) of a 5-step stage that checkpoints at step 3 is killed with SIGKILL right after step 5 is
logged (rlft/faults.py: RLFT_KILL_AT_STEP, deterministic, no sleeping). Up to that point the killed
run *is* the uninterrupted run. The second run must resume from checkpoint-3 (the last complete
one), and log the same losses at steps 4 and 5 (relative tolerance 1e-5; measured: equal), the same
optimizer step count and samples seen, and end with the same final loss (well within 1%).
"""

import json

import pytest
from conftest import QUICKSTART_DATA, REPO

from rlft.models.tiny import build_tiny_from_texts
from rlft.pipeline import StageFailed, run_pipeline
from rlft.pipeline_file import load_pipeline
from rlft.tracking import read_metrics

pytestmark = pytest.mark.slow

REVERSE_DATA = REPO / "configs" / "data" / "reverse"
PREFS = f"{{train: {QUICKSTART_DATA}/prefs_train.jsonl, max_rows: 64}}"
SFT = f"{{train: {QUICKSTART_DATA}/sft_train.jsonl, max_rows: 64}}"
PROMPTS = f"{{train: {QUICKSTART_DATA}/heldout_prompts.jsonl, max_rows: 64}}"
TRAINER = "max_steps: 5, save_steps: 3, logging_steps: 1, learning_rate: 1.0e-3"
REWARDS = """
def uppercase_share(prompts, completions, **fields):
    out = []
    for c in completions:
        text = c if isinstance(c, str) else c[-1]["content"]
        letters = [ch for ch in text if ch.isalpha()]
        out.append(sum(ch.isupper() for ch in letters) / len(letters) if letters else 0.0)
    return out
"""

# kind (or kind-variant) -> (its stage keys, the metrics compared step by step, the samples-seen counter)
STAGES = {
    "sft": (
        f"data: {SFT}\ntrainer: {{{TRAINER}, per_device_train_batch_size: 4, max_length: 64}}",
        ["train/loss", "train/grad_norm"],
        "train/samples_seen",
    ),
    "reward": (
        f"data: {PREFS}\ntrainer: {{{TRAINER}, per_device_train_batch_size: 4, max_length: 64}}",
        ["train/loss", "train/accuracy"],
        "train/samples_seen",
    ),
    "dpo": (
        f"data: {PREFS}\nmax_length: 64\ntrainer: {{{TRAINER}, per_device_train_batch_size: 4}}",
        ["train/loss", "rewards/margins"],
        "train/samples_seen",
    ),
    "kto": (
        f"data: {PREFS}\nmax_length: 64\ntrainer: {{{TRAINER}, per_device_train_batch_size: 4}}",
        ["train/loss"],
        "train/samples_seen",
    ),
    "contrastive": (
        f"mode: preference\ndata: {PREFS}\nmax_length: 64\ntrainer: {{{TRAINER}, per_device_train_batch_size: 4}}",
        ["train/loss"],
        "train/samples_seen",
    ),
    "grpo": (
        f"data: {PROMPTS}\nreward: {{function: rewards.py:uppercase_share}}\n"
        f"trainer: {{{TRAINER}, per_device_train_batch_size: 4, num_generations: 4, max_completion_length: 6}}",
        ["train/loss", "train/reward"],
        "train/samples_seen",
    ),
    "rloo": (
        f"data: {PROMPTS}\nreward: {{function: rewards.py:uppercase_share}}\n"
        f"trainer: {{{TRAINER}, per_device_train_batch_size: 4, num_generations: 4, max_completion_length: 6}}",
        ["train/loss", "train/reward"],
        "train/samples_seen",
    ),
    "ppo": (
        f"data: {SFT}\nreward: {{function: rewards.py:uppercase_share}}\nsteps: 5\nsave_steps: 3\n"
        "rollout_batch_size: 8\nminibatch_size: 4\nppo_epochs: 1\nmax_new_tokens: 6\nlearning_rate: 1.0e-3",
        ["ppo/loss", "ppo/score", "ppo/kl"],
        "ppo/episodes",
    ),
    # the critic designs (rlft/stages/ppo.py critic_design): the value head / the critic's adapters resume too
    "ppo-shared": (
        f"data: {SFT}\nreward: {{function: rewards.py:uppercase_share}}\nsteps: 5\nsave_steps: 3\n"
        "rollout_batch_size: 8\nminibatch_size: 4\nppo_epochs: 1\nmax_new_tokens: 6\nlearning_rate: 1.0e-3\n"
        "critic_design: shared",
        ["ppo/loss", "ppo/score", "ppo/kl", "ppo/value_loss"],
        "ppo/episodes",
    ),
    "ppo-lora": (
        f"data: {SFT}\nreward: {{function: rewards.py:uppercase_share}}\nsteps: 5\nsave_steps: 3\n"
        "rollout_batch_size: 8\nminibatch_size: 4\nppo_epochs: 1\nmax_new_tokens: 6\nlearning_rate: 1.0e-3\n"
        "critic_design: lora\ncritic_lora: {r: 4, alpha: 8}",
        ["ppo/loss", "ppo/score", "ppo/kl", "ppo/value_loss"],
        "ppo/episodes",
    ),
    "multitask": (
        f"tasks:\n  - {{name: upper, data: {SFT}}}\n"
        f"  - {{name: reverse, data: {{train: {REVERSE_DATA}/sft_train.jsonl, max_rows: 64}}}}\n"
        "steps: 5\nsave_steps: 3\nbatch_size: 4\nlogging_steps: 1\nlearning_rate: 1.0e-3",
        ["train/loss"],
        "train/samples_seen",
    ),
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    texts = (QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines()
    texts += (REVERSE_DATA / "sft_train.jsonl").read_text().splitlines()
    return build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("tiny") / "model", hidden_size=32, num_layers=2, num_heads=2
    )


def write_pipeline(tmp_path, tiny_model, key):
    keys, _, _ = STAGES[key]
    kind = key.partition("-")[0]
    (tmp_path / "rewards.py").write_text(REWARDS)
    stage = "\n".join("    " + line for line in keys.splitlines())
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"name: r\nreport: false\nmodel: {{path: {tiny_model}}}\nstages:\n"
        f"  - name: {kind}\n    kind: {kind}\n{stage}\n"
    )
    return path


def resume(pipeline, run_dir):
    """The second run, in this process: as `accelerate launch -m rlft run` runs its stages (rlft/launched.py),
    here with one process. The same walk, decision and stage code as a child process, without paying
    its start-up (importing torch, transformers and TRL) once more per kind."""
    from rlft.launched import World
    from rlft.pipeline import _run_stages

    options = dict(only=None, from_stage=None, force=False, launch=None, console=None, reuse=())
    return _run_stages(pipeline, run_dir=run_dir, **options, world=World(rank=0, size=1))


def by_step(metrics, key):
    return {m["step"]: m[key] for m in metrics if key in m}


@pytest.mark.parametrize("key", list(STAGES))
def test_a_stage_killed_between_checkpoints_resumes_to_the_same_result(
    tmp_path, tiny_model, key, monkeypatch
):
    _, compared, samples = STAGES[key]
    kind = key.partition("-")[0]
    pipeline = load_pipeline(write_pipeline(tmp_path, tiny_model, key))
    run_dir = tmp_path / "run"
    work = run_dir / ".work" / kind

    monkeypatch.setenv("RLFT_KILL_AT_STEP", "5")
    with pytest.raises(StageFailed):
        run_pipeline(pipeline, run_dir=run_dir)
    monkeypatch.delenv("RLFT_KILL_AT_STEP")
    assert json.loads((work / "stage.json").read_text())["status"] == "running"  # died: never wrote its end
    first = read_metrics(work / "metrics.jsonl")
    assert max(m["step"] for m in first) == 5 and not (run_dir / kind).exists()

    outcomes = resume(pipeline, run_dir)
    assert [o.status for o in outcomes] == ["ran"]
    record = json.loads((run_dir / kind / "stage.json").read_text())
    assert record["resumed_from"].endswith("checkpoint-3")
    assert record["metrics"]["train/global_step"] == 5
    metrics = read_metrics(run_dir / kind / "metrics.jsonl")  # both runs' records, in order
    second = metrics[len(first) :]
    assert min(m["step"] for m in second) == 4  # from just after the checkpoint, not from step 1
    for key in compared:
        before, after = by_step(first, key), by_step(second, key)
        assert sorted(after) == [4, 5], key
        assert [after[s] for s in (4, 5)] == pytest.approx([before[s] for s in (4, 5)], rel=1e-5), key
    seen = by_step(first, samples)
    assert by_step(second, samples) == {4: seen[4], 5: seen[5]} and seen[5] > seen[4] > 0
    final = record["metrics"].get("train/loss", record["metrics"].get("ppo/loss"))
    assert final == pytest.approx(by_step(first, compared[0])[5], rel=0.01)
