"""`rlft eval RUN_DIR` (rlft/run_evaluation.py) on a tiny finished run: one row per policy stage, every column."""

import csv
import json

import pytest

from rlft.cli import main
from rlft.errors import ConfigError
from rlft.run_evaluation import COLUMNS, evaluate_run

pytestmark = pytest.mark.slow

SECOND_SFT = """
- name: more
  kind: sft
  model: {from: sft}
  data: {train: %s/sft_train.jsonl, max_rows: 64}
  trainer: {max_steps: 4, learning_rate: 5.0e-3, logging_steps: 1}
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import QUICKSTART_DATA, tiny_pipeline_yaml

    folder = tmp_path_factory.mktemp("evalrun")
    pipeline = folder / "p.yaml"
    yaml = tiny_pipeline_yaml(
        evaluate=True,
        sft_trainer="{max_steps: 4, logging_steps: 1}",
        extra_stage=SECOND_SFT % QUICKSTART_DATA,
    )
    pipeline.write_text(yaml)
    assert main(["run", str(pipeline), "--run-dir", str(folder / "run")]) == 0
    return folder / "run"


def test_every_policy_stage_gets_a_row_with_its_baseline(run_dir, capsys):
    assert main(["eval", str(run_dir), "--samples", "2"]) == 0
    printed = capsys.readouterr().out
    assert "rlft eval" in printed and "eval.json" in printed
    rows = json.loads((run_dir / "eval.json").read_text())
    assert [r["stage"] for r in rows] == ["sft", "more"]  # `base` measures only: no model of its own
    first, second = rows
    assert first["baseline"] is None and "win_rate" not in first  # sft started from the tiny model, no stage
    assert second["baseline"] == "sft" and second["judge"] == "task reward"
    for row in rows:
        assert (
            0 <= row["task_reward"] <= 1 and 0 <= row["task_reward_sampled"] <= 1 and row["mean_length"] >= 0
        )
        assert (
            row["median_length"] <= row["p90_length"] and 0 <= row["empty_share"] + row["repeat_share"] <= 1
        )
    assert second["wins"] + second["ties"] + second["losses"] == 8  # evaluate.max_prompts
    assert second["win_rate_low"] <= second["win_rate"] <= second["win_rate_high"]
    assert 0 <= second["lc_win_rate"] <= 1
    assert second["kl"] > 0 and second["kl_stderr"] > 0  # more training moved it away from sft
    with open(run_dir / "eval.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(COLUMNS) and [r["stage"] for r in table] == ["sft", "more"]


def test_against_names_the_baseline_of_every_stage(run_dir):
    rows = evaluate_run(run_dir, stages=["more"], against="more", samples=0)
    assert rows[0]["baseline"] is None  # a stage against itself has no baseline
    rows = evaluate_run(run_dir, stages=["sft"], against="more", samples=0)
    assert rows[0]["baseline"] == "more" and "task_reward_sampled" not in rows[0]
    with pytest.raises(ConfigError, match="no finished policy stage 'base'.*finished: sft, more"):
        evaluate_run(run_dir, against="base")


def test_report_embeds_its_images_and_renders_in_headless_chromium(run_dir, tmp_path):
    """`rlft report` writes one self-contained page; Chromium loads it with every image decoded."""
    import re
    import shutil
    import subprocess

    evaluate_run(run_dir, samples=2)
    out = tmp_path / "report.html"
    assert main(["report", str(run_dir), str(run_dir), "--out", str(out)]) == 0
    page = out.read_text()
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,', page)
    assert "reward against KL" in images and "loss" in images  # the frontier and the stages' curves
    assert 'src="http' not in page and "<link" not in page  # nothing outside the file
    assert "<table>" in page and ">more</td>" in page and "samples side by side" in page
    assert "[{&#x27;role&#x27;" not in page and "[{'role'" not in page  # a conversation shows as its words
    assert (tmp_path / "summary.md").read_text().startswith("# rlft report")

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "headless Chromium is needed (Debian: apt-get install chromium; .ci/run installs it)"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([*common, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert 'data-images-loaded="true"' in dom.stdout, dom.stderr[-2000:]
    assert int(re.search(r'data-tables="(\d+)"', dom.stdout).group(1)) >= 3
    shot = tmp_path / "report.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1300,2400", out.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 10_000  # a page with plots, not a blank one


def test_a_pairwise_judge_scores_each_stage_against_its_baseline(run_dir, capsys, monkeypatch):
    """`--judge`: the judge's win rate is the mean of its both-orders outcomes on the greedy answers."""
    from rlft.config import DEFAULT_JUDGE_TEMPLATE, EvaluateConfig
    from rlft.evaluation import greedy_completions
    from rlft.judge import judge_pairs
    from rlft.run_evaluation import _load, _prompt_rows

    monkeypatch.chdir(run_dir)  # a folder on the command line is relative to here, not to the pipeline file
    assert main(["eval", str(run_dir), "--samples", "0", "--judge", "./sft"]) == 0
    assert "judge win" in capsys.readouterr().out
    first, second = json.loads((run_dir / "eval.json").read_text())
    assert "judge_win_rate" not in first  # no baseline, nothing to judge against
    assert second["judge_win_rate_low"] <= second["judge_win_rate"] <= second["judge_win_rate_high"]
    assert 0 <= second["judge_ties"] <= 8

    import yaml

    evaluate = EvaluateConfig.model_validate(
        yaml.safe_load((run_dir / "pipeline.yaml").read_text())["evaluate"]
    )
    rows = _prompt_rows(evaluate, run_dir, evaluate.max_prompts)
    prompts = [r["prompt"] for r in rows]
    judge, tokenizer = _load(run_dir / "sft")
    answers = {
        name: greedy_completions(*_load(run_dir / name), prompts, max_new_tokens=evaluate.max_new_tokens)
        for name in ("sft", "more")
    }
    judged = judge_pairs(
        judge, tokenizer, prompts, answers["more"], answers["sft"], template=DEFAULT_JUDGE_TEMPLATE
    )
    assert second["judge_win_rate"] == pytest.approx(judged.outcomes.mean())
    assert second["judge_ties"] == int((judged.outcomes == 0.5).sum())


RICH = """
name: rich
model:
  tiny: {{hidden_size: 32, num_layers: 2, num_heads: 2, tokenizer_texts: [{d}/sft_train.jsonl, {d}/prefs_train.jsonl]}}
tracking: {{wandb: offline, project: rlft-test}}
evaluate: {{prompts: {d}/heldout_prompts.jsonl, reward: reward_models.tasks:uppercase_copy, max_prompts: 6, max_new_tokens: 6}}
stages:
  - {{name: sft, kind: sft, data: {{train: {d}/sft_train.jsonl, max_rows: 48, eval_fraction: 0.25}}, trainer: {{max_steps: 3}}}}
  - name: rm
    kind: reward
    model: {{from: sft}}
    data: {{train: {d}/prefs_train.jsonl, max_rows: 64, eval_fraction: 0.5}}
    trainer: {{max_steps: 3, max_length: 64}}
  - name: dpo
    kind: dpo
    model: {{from: sft}}
    data: {{train: {d}/prefs_train.jsonl, max_rows: 32, eval_fraction: 0.25}}
    max_length: 64
    trainer: {{max_steps: 3, learning_rate: 1.0e-3}}
"""


@pytest.fixture(scope="module")
def rich_run(tmp_path_factory):
    """SFT, a reward model and DPO, each with held-out data, tracked by W&B offline."""
    import os

    from conftest import QUICKSTART_DATA

    folder = tmp_path_factory.mktemp("richrun")
    (folder / "p.yaml").write_text(RICH.format(d=QUICKSTART_DATA))
    with pytest.MonkeyPatch.context() as env:
        for key in [k for k in os.environ if k.startswith("WANDB_")]:  # conftest sets WANDB_MODE=disabled
            env.delenv(key)
        assert main(["run", str(folder / "p.yaml"), "--run-dir", str(folder / "run")]) == 0
        rows = evaluate_run(folder / "run", samples=0)
    return folder / "run", rows


def test_held_out_columns_of_sft_reward_and_preference_stages(rich_run):
    import math

    run_dir, rows = rich_run
    assert [r["stage"] for r in rows] == ["sft", "rm", "dpo"]  # in run order; the reward model has its row
    sft, rm, dpo = rows
    records = {r["stage"]: json.loads((run_dir / r["stage"] / "stage.json").read_text()) for r in rows}
    assert sft["perplexity"] == pytest.approx(math.exp(records["sft"]["metrics"]["eval/loss"]))
    assert sft["perplexity"] > 1 and "preference_accuracy" not in sft
    # every policy stage on the SFT stage's held-out rows (its seeded split, read again): the SFT stage
    # itself close to what TRL measured on them (TRL averages per batch, rlft per token)
    assert sft["sft_heldout_of"] == dpo["sft_heldout_of"] == "sft"
    assert sft["sft_heldout_perplexity"] == pytest.approx(sft["perplexity"], rel=0.1)
    assert dpo["sft_heldout_perplexity"] > 1 and "sft_heldout_perplexity" not in rm
    assert dpo["preference_accuracy"] == records["dpo"]["metrics"]["eval/rewards/accuracies"]
    assert dpo["judge"] == "reward model" and "task_reward" in dpo and "pair_accuracy" not in dpo

    assert rm["kind"] == "reward" and "task_reward" not in rm  # measured, not generated from
    assert rm["pair_accuracy"] == records["rm"]["metrics"]["reward_accuracy"]
    assert rm["ece"] == records["rm"]["metrics"]["eval/rewards/ece"]
    assert sum(b["n"] for b in rm["reliability"]) == 32  # 64 pairs, half held out
    assert rm["ece"] == pytest.approx(
        sum(b["n"] / 32 * abs(b["accuracy"] - b["confidence"]) for b in rm["reliability"])
    )
    with open(run_dir / "eval.csv") as f:
        table = {r["stage"]: r for r in csv.DictReader(f)}
    assert float(table["rm"]["ece"]) == pytest.approx(rm["ece"]) and "reliability" not in table["rm"]
    assert evaluate_run(run_dir, stages=["rm"], samples=0)[0]["pair_accuracy"] == rm["pair_accuracy"]


def test_the_evaluation_goes_to_wandb_as_tables(rich_run):
    """The run used W&B (offline): `rlft eval` logs its table and samples as a W&B run of the same group."""
    from test_tracking import wandb_run_contents

    run_dir, rows = rich_run
    run_files = list((run_dir / "_eval" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1, run_files
    run, config, history = wandb_run_contents(run_files[0])
    run_id = json.loads((run_dir / "dpo" / "stage.json").read_text())["run_id"]
    assert (run.run_group, run.job_type) == (f"rich-{run_id}", "eval")
    assert config["stages"] == ["sft", "rm", "dpo"]
    logged = {key: value for row in history for key, value in row.items()}
    assert logged["eval/table/_type"] == logged["eval/samples/_type"] == "table-file"
    assert (logged["eval/table/nrows"], logged["eval/samples/nrows"]) == (3, 12)
    table = json.loads((run_files[0].parent / "files" / logged["eval/table/path"]).read_text())
    assert table["columns"] == list(COLUMNS) and [r[0] for r in table["data"]] == ["sft", "rm", "dpo"]
    samples = [
        json.loads(line) for line in (run_dir / "_eval" / "eval_samples.jsonl").read_text().splitlines()
    ]
    assert [s["stage"] for s in samples] == ["sft"] * 6 + ["dpo"] * 6  # 6 prompts (max_prompts) each
    dpo = [s for s in samples if s["stage"] == "dpo"]
    assert all(s["baseline"] == "sft" for s in dpo)
    assert [s["baseline_completion"] for s in dpo] == [
        s["completion"] for s in samples if s["stage"] == "sft"
    ]
    assert sum(s["task_reward"] for s in dpo) / 6 == pytest.approx(rows[2]["task_reward"])


def test_encoders_and_reward_models_are_reported_not_generated_from():
    """Which stages `rlft eval` generates from, and the rows it reads from stage.json for the others."""
    from rlft.run_evaluation import _is_policy, _measured, _recorded_policy_columns, _recorded_row

    encoder = {
        "kind": "contrastive",
        "config": {"mode": "representation"},
        "metrics": {"retrieval/accuracy@1": 0.62, "retrieval/mrr": 0.7, "eval/loss": 1.1},
    }
    cpo = {
        "kind": "contrastive",
        "config": {"mode": "preference"},
        "metrics": {"eval/rewards/accuracies": 0.8},
    }
    reward = {
        "kind": "reward",
        "config": {},
        "metrics": {"reward_accuracy": 0.9},
    }  # before calibration was kept
    assert [(_is_policy(r), _measured(r)) for r in (encoder, cpo, reward)] == [
        (False, True),
        (True, False),
        (False, True),
    ]
    assert _recorded_row("emb", encoder) == {
        "stage": "emb",
        "kind": "contrastive",
        "baseline": None,
        "retrieval_accuracy": 0.62,
        "retrieval_mrr": 0.7,
    }
    assert _recorded_row("rm", reward) == {
        "stage": "rm",
        "kind": "reward",
        "baseline": None,
        "pair_accuracy": 0.9,
    }
    assert _recorded_policy_columns("contrastive", cpo) == {"preference_accuracy": 0.8}
    assert (
        _recorded_policy_columns("dpo", {"metrics": {"eval/loss": 0.7}}) == {}
    )  # a DPO loss is no perplexity


KEPT_BASE = """
name: kept
model:
  tiny: {hidden_size: 32, num_layers: 2, num_heads: 2, tokenizer_texts: [%(data)s/sft_train.jsonl]}
evaluate: {prompts: %(data)s/heldout_prompts.jsonl, reward: reward_models.tasks:uppercase_copy, max_prompts: 8, max_new_tokens: 8}
stages:
  - {name: base, kind: evaluate, save_model: true}
  - name: sft
    kind: sft
    model: {from: base}
    data: {train: %(data)s/sft_train.jsonl, max_rows: 64}
    trainer: {max_steps: 4, learning_rate: 5.0e-3}
"""


def test_a_base_stage_that_keeps_its_model_is_every_stage_baseline_and_rows_are_reused(tmp_path, monkeypatch):
    """`save_model: true` keeps the starting model as `base`'s artifact: later stages start from it and rlft eval
    measures them against it; `--set` overrides reach the run's pipeline.yaml (so rlft eval reads them); a
    stage whose weights, baseline and settings were measured before is not measured again (`known`)."""
    from conftest import QUICKSTART_DATA

    import rlft.run_evaluation as run_evaluation

    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(KEPT_BASE % {"data": QUICKSTART_DATA})
    run = tmp_path / "run"
    assert main(["run", str(pipeline), "--run-dir", str(run), "--set", "evaluate.max_prompts=4"]) == 0
    assert (run / "base" / "config.json").is_file()
    assert json.loads((run / "base" / "stage.json").read_text())["has_model"] is True
    assert "max_prompts: 4" in (run / "pipeline.yaml").read_text()

    known: dict = {}
    rows = {r["stage"]: r for r in evaluate_run(run, samples=1, known=known)}
    assert rows["base"]["baseline"] is None and rows["sft"]["baseline"] == "base"
    assert rows["sft"]["wins"] + rows["sft"]["ties"] + rows["sft"]["losses"] == 4  # the --set max_prompts
    assert rows["sft"]["kl"] > 0 and len(known) == 2

    def measured_again(*args, **kwargs):
        raise AssertionError("a stage measured before was measured again")

    monkeypatch.setattr(run_evaluation, "_evaluate_stage", measured_again)
    assert evaluate_run(run, samples=1, known=known) == list(rows.values())
    monkeypatch.undo()
    assert (
        evaluate_run(run, stages=["sft"], samples=0, known=known)[0]["stage"] == "sft"
    )  # other settings: measured
    assert len(known) == 3
