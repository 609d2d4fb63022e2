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


def test_a_pairwise_judge_scores_each_stage_against_its_baseline(run_dir, capsys):
    """`--judge`: the judge's win rate is the mean of its both-orders outcomes on the greedy answers."""
    from rlft.config import DEFAULT_JUDGE_TEMPLATE, EvaluateConfig
    from rlft.evaluation import greedy_completions
    from rlft.judge import judge_pairs
    from rlft.run_evaluation import _load, _prompt_rows

    assert main(["eval", str(run_dir), "--samples", "0", "--judge", str(run_dir / "sft")]) == 0
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
