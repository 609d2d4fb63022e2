"""`rlft sweep`: grid parsing, point names, which stages a key changes, and a 2-point sweep end to end."""

import csv
import json
import textwrap

import pytest
from conftest import QUICKSTART_DATA

from rlft.cli import main
from rlft.errors import ConfigError, RlftError
from rlft.pipeline_file import expand_override, load_pipeline
from rlft.sweep import changed_stages, parse_grid, points

PIPELINE = f"""
name: sw
model:
  tiny: {{hidden_size: 32, num_layers: 2, num_heads: 2, tokenizer_texts: [{QUICKSTART_DATA}/sft_train.jsonl, {QUICKSTART_DATA}/prefs_train.jsonl]}}
evaluate: {{prompts: {QUICKSTART_DATA}/heldout_prompts.jsonl, reward: reward_models.tasks:uppercase_copy, max_prompts: 8, max_new_tokens: 8}}
stages:
  - {{name: sft, kind: sft, data: {{train: {QUICKSTART_DATA}/sft_train.jsonl, max_rows: 64}}, trainer: {{max_steps: 4}}}}
  - name: dpo
    kind: dpo
    model: {{from: sft}}
    data: {{train: {QUICKSTART_DATA}/prefs_train.jsonl, max_rows: 64}}
    max_length: 64
    precompute_reference: true
    trainer: {{max_steps: 4, logging_steps: 2, learning_rate: 1.0e-3}}
"""


@pytest.fixture
def pipeline(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(PIPELINE))
    return path


def test_grid_values_are_yaml_lists_and_points_their_product(tmp_path):
    grid = parse_grid(["stages.dpo.beta=[0.05, 0.1]", "data.curate.flip_fraction=[0,0.2]"])
    assert grid == {"stages.dpo.beta": [0.05, 0.1], "data.curate.flip_fraction": [0, 0.2]}
    names = [p.name for p in points(grid, tmp_path)]
    assert names == [
        "beta=0.05,flip_fraction=0",
        "beta=0.05,flip_fraction=0.2",
        "beta=0.1,flip_fraction=0",
        "beta=0.1,flip_fraction=0.2",
    ]
    losses = points(parse_grid(["stages.dpo.loss_type=[[sigmoid],[sigmoid,sft]]"]), tmp_path)
    assert [p.name for p in losses] == ["loss_type=sigmoid", "loss_type=sigmoid+sft"]
    same_tail = points(parse_grid(["stages.a.beta=[1]", "stages.b.beta=[2]"]), tmp_path)
    assert same_tail[0].name == "stages.a.beta=1,stages.b.beta=2"  # full keys when short ones collide
    for bad in ("stages.dpo.beta=0.1", "stages.dpo.beta=[]", "=[1]", "stages.dpo.beta"):
        with pytest.raises(RlftError, match="KEY="):
            parse_grid([bad])


def test_data_keys_apply_to_preference_stages(pipeline):
    raw = {
        "stages": [
            {"name": "sft", "kind": "sft"},
            {"name": "rm", "kind": "reward"},
            {"name": "d", "kind": "dpo"},
        ]
    }
    assert expand_override(raw, "data.curate.flip_fraction") == [
        "stages.rm.data.curate.flip_fraction",
        "stages.d.data.curate.flip_fraction",
    ]
    assert expand_override(raw, "stages.sft.trainer.max_steps") == ["stages.sft.trainer.max_steps"]
    with pytest.raises(ConfigError, match="no stage trains on preference data"):
        expand_override({"stages": [{"name": "sft", "kind": "sft"}]}, "data.max_rows")
    loaded = load_pipeline(pipeline, overrides={"data.curate.flip_fraction": 0.25})
    stages = {s.name: s for s in loaded.stages}
    assert stages["dpo"].data.curate.flip_fraction == 0.25 and stages["sft"].data.curate.flip_fraction == 0


def test_changed_stages_follow_from_references(pipeline):
    loaded = load_pipeline(pipeline)
    assert changed_stages(loaded, ["stages.dpo.beta"]) == ["dpo"]
    assert changed_stages(loaded, ["stages.sft.trainer.learning_rate"]) == ["sft", "dpo"]
    assert changed_stages(loaded, ["seed"]) == ["base", "sft", "dpo"]


@pytest.mark.slow
def test_two_point_beta_sweep_shares_sft_and_the_reference_cache(tmp_path, pipeline, capsys):
    out = tmp_path / "out"
    assert main(["sweep", str(pipeline), "--grid", "stages.dpo.beta=[0.1,0.5]", "--sweep-dir", str(out)]) == 0

    with open(out / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["stages.dpo.beta"] for r in table] == ["0.1", "0.5"] and [r["point"] for r in table] == [
        "beta=0.1",
        "beta=0.5",
    ]
    assert all(r["status"] == "done" for r in table)
    assert [r["ran"] for r in table] == ["base sft dpo", "dpo"]  # the second point trains DPO only
    for r in table:
        assert 0 <= float(r["task_reward"]) <= 1 and float(r["train/loss"]) > 0 and r["rewards/margins"]

    second = out / "beta=0.5"
    statuses = {e["stage"]: e["status"] for e in json.loads((second / "summary.json").read_text())}
    assert statuses == {"base": "shared", "sft": "shared", "dpo": "ran"}
    assert (second / "sft" / "model.safetensors").stat().st_ino == (
        out / "beta=0.1" / "sft" / "model.safetensors"
    ).stat().st_ino  # a hard link, not a copy
    cache = json.loads((second / "dpo" / "stage.json").read_text())["info"]["reference"]["cache"]
    assert [e["status"] for e in cache] == ["hit"]  # the reference model did not run again
    assert (out / "cache" / "ref_logps").is_dir()
    printed = capsys.readouterr().out
    assert "rlft sweep" in printed and "sweep table:" in printed

    # every point evaluated, then one report over both: DPO of each point placed by reward and KL
    for point in ("beta=0.1", "beta=0.5"):
        rows = {r["stage"]: r for r in json.loads((out / point / "eval.json").read_text())}
        assert rows["dpo"]["baseline"] == "sft" and rows["dpo"]["kl"] == rows["dpo"]["kl"]  # not NaN
    page = (out / "report.html").read_text()
    assert f"sweep report: {out / 'report.html'}" in printed
    assert "run beta=0.1" in page and "run beta=0.5" in page and 'alt="reward against KL"' in page
    assert (out / "summary.md").read_text().startswith("# rlft report")
