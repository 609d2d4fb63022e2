"""kind: generate on a tiny model: pairs oriented by score, min_margin, best-of-N rows, determinism under a
seed; `data: {train: {from: STAGE}}` validated, run, skipped when nothing changed, re-run when it did."""

import json
import textwrap
import time
from pathlib import Path

import pytest
from conftest import QUICKSTART_DATA, stage_context

from rlft.errors import ConfigError
from rlft.models.tiny import build_tiny_from_texts
from rlft.pipeline import run_pipeline
from rlft.pipeline_file import load_pipeline
from rlft.stages import generate
from rlft.stages.base import StageContext

PROMPTS = QUICKSTART_DATA / "heldout_prompts.jsonl"
# shorter completions score higher: an untrained model's samples differ in length, so pairs exist
SHORT = {
    "function": "reward_models.functions:length_penalty",
    "kwargs": {"target": 0, "scale": 1000, "unit": "chars"},
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    texts = (QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines()
    return build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("tiny") / "model", hidden_size=32, num_layers=2, num_heads=2
    )


def context(tmp_path: Path) -> StageContext:
    work = tmp_path / "work"
    return stage_context(tmp_path, work)


def make(model: Path, **overrides) -> generate.GenerateStage:
    spec = {
        "name": "gen",
        "kind": "generate",
        "model": {"path": str(model)},
        "prompts": {"train": str(PROMPTS), "max_rows": 12},
        "reward": SHORT,
        "num_samples": 4,
        "max_new_tokens": 8,
        "batch_size": 16,
        "write": {"pairs": "best_worst", "best_of_n": True, "scored": True},
        **overrides,
    }
    return generate.GenerateStage.model_validate(spec)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def text(completion) -> str:
    return completion[0]["content"]  # conversational prompts: completions are assistant turns


def test_pairs_best_of_n_and_scored_rows_agree(tiny_model, tmp_path):
    cfg = make(tiny_model)
    ctx = context(tmp_path)
    start = time.time()
    result = generate.run(cfg, ctx)
    seconds = time.time() - start
    out = ctx.artifact_dir
    scored = rows(out / "scored.jsonl")
    assert len(scored) == 12 * 4
    score = {(json.dumps(r["prompt"]), text(r["completion"])): r["score"] for r in scored}
    pairs = rows(out / "pairs.jsonl")
    report = json.loads((out / "generate_report.json").read_text())
    assert report["pairs"] == len(pairs) and report["pairs"] + report["ties_dropped"] == 12
    assert len(pairs) >= 6
    for pair in pairs:  # oriented: chosen scored above rejected
        key = json.dumps(pair["prompt"])
        assert score[(key, text(pair["chosen"]))] > score[(key, text(pair["rejected"]))]
        assert len(text(pair["chosen"])) < len(text(pair["rejected"]))
    best = rows(out / "best_of_n.jsonl")
    assert len(best) == 12
    by_prompt: dict[str, list[float]] = {}
    for r in scored:
        by_prompt.setdefault(json.dumps(r["prompt"]), []).append(r["score"])
    for r in best:
        assert score[(json.dumps(r["prompt"]), text(r["completion"]))] == max(
            by_prompt[json.dumps(r["prompt"])]
        )
    assert report["mean_score_chosen"] > report["mean_score_rejected"]
    assert result.metrics["generate/pairs"] == len(pairs) and not result.has_model
    print(
        f"generate: {len(scored)} samples of <= 8 tokens in {seconds:.2f} s (whole stage), "
        f"sampling {report['sampling_seconds']} s, {report['samples_per_second']} samples/s"
    )


def test_min_margin_and_all_pairs(tiny_model, tmp_path):
    cfg = make(tiny_model, write={"pairs": "all"}, min_margin=0.003)
    ctx = context(tmp_path)
    generate.run(cfg, ctx)
    pairs = rows(ctx.artifact_dir / "pairs.jsonl")
    report = json.loads((ctx.artifact_dir / "generate_report.json").read_text())
    assert report["pairs"] == len(pairs) > 12  # more than one pair per prompt
    assert report["pairs"] + report["ties_dropped"] + report["below_margin_dropped"] == 12 * 6
    for pair in pairs:  # 1/1000 per character: a gap of 0.003 is 3 characters
        assert len(text(pair["rejected"])) - len(text(pair["chosen"])) >= 3
    assert not (ctx.artifact_dir / "best_of_n.jsonl").exists()


def test_same_seed_same_data_other_seed_other_data(tiny_model, tmp_path):
    outputs = []
    for i, seed in enumerate((3, 3, 4)):
        ctx = context(tmp_path / str(i))
        generate.run(make(tiny_model, seed=seed, batch_size=8, write=["scored"]), ctx)
        outputs.append((ctx.artifact_dir / "scored.jsonl").read_text())
    assert outputs[0] == outputs[1] and outputs[0] != outputs[2]


def test_config_shorthands_and_checks(tiny_model):
    cfg = make(tiny_model, prompts=str(PROMPTS), write=["pairs", "best_of_n"])
    assert cfg.prompts.train == str(PROMPTS)
    assert cfg.output_files() == ["pairs.jsonl", "best_of_n.jsonl"]
    with pytest.raises(ValueError, match="num_samples >= 2"):
        make(tiny_model, num_samples=1)
    make(tiny_model, num_samples=1, write=["best_of_n"])
    with pytest.raises(ValueError, match="unknown output"):
        make(tiny_model, write=["pairz"])


def pipeline_yaml(
    *, gen_seed: int = 0, dpo_data: str = "{train: {from: gen}}", order: str = "gen-dpo"
) -> str:
    gen = f"""
      - name: gen
        kind: generate
        seed: {gen_seed}
        prompts: {{train: {PROMPTS}, max_rows: 16}}
        reward: {{function: "reward_models.functions:length_penalty", kwargs: {{target: 0, scale: 1000, unit: chars}}}}
        max_new_tokens: 8
        batch_size: 32
        write: [pairs, best_of_n]
    """
    dpo = f"""
      - name: dpo
        kind: dpo
        data: {dpo_data}
        max_length: 64
        trainer: {{max_steps: 1, per_device_train_batch_size: 4}}
    """
    stages = gen + dpo if order == "gen-dpo" else dpo + gen
    text = f"""
    name: g
    model:
      tiny: {{hidden_size: 32, num_layers: 1, num_heads: 2, tokenizer_texts: [{QUICKSTART_DATA}/sft_train.jsonl]}}
    stages:
    """
    return textwrap.dedent(text) + textwrap.dedent(stages).strip("\n") + "\n"


def test_from_stage_data_is_checked_at_validate_time(tmp_path):
    path = tmp_path / "p.yaml"
    cases = [
        (dict(dpo_data="{train: {from: gen}}", order="dpo-gen"), "it comes later"),
        (dict(dpo_data="{train: {from: nope}}"), "'nope' is not an earlier stage"),
        (
            dict(dpo_data="{train: {from: gen, file: scored}}"),
            "writes pairs.jsonl, best_of_n.jsonl, not scored",
        ),
        (dict(dpo_data="{train: {from: gen, path: x.jsonl}}"), "either `path` or `from`"),
    ]
    for kwargs, message in cases:
        path.write_text(pipeline_yaml(**kwargs))
        with pytest.raises(ConfigError, match=message):
            load_pipeline(path)
    sft = f"- {{name: sft, kind: sft, data: {{train: {QUICKSTART_DATA}/sft_train.jsonl}}}}\n- name: dpo\n"
    text = pipeline_yaml().replace("- name: dpo\n", sft)
    path.write_text(text.replace("{from: gen}", "{from: sft}"))
    with pytest.raises(ConfigError, match=r"stage 'sft' \(sft\) writes no data"):
        load_pipeline(path)


@pytest.mark.slow
def test_generate_then_dpo_runs_skips_and_reruns_on_change(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(pipeline_yaml())
    run_dir = tmp_path / "run"
    first = run_pipeline(load_pipeline(path), run_dir=run_dir)
    assert [o.status for o in first] == ["ran", "ran"]
    dpo_inputs = first[1].record["inputs"]["data"]
    assert list(dpo_inputs) == ["from:gen/pairs.jsonl"] and len(dpo_inputs["from:gen/pairs.jsonl"]) == 64
    read = first[1].record["info"]["data"]["train"]  # DPO read the generated pairs
    assert read["rows"] == first[0].record["metrics"]["generate/pairs"] > 0
    assert str(run_dir / "gen" / "pairs.jsonl") in json.dumps(read)

    second = run_pipeline(load_pipeline(path), run_dir=run_dir)
    assert [o.status for o in second] == ["skipped", "skipped"]

    path.write_text(pipeline_yaml(gen_seed=1))  # other samples -> other pairs -> DPO's input changed
    third = run_pipeline(load_pipeline(path), run_dir=run_dir)
    assert [o.status for o in third] == ["ran", "ran"]
    assert third[1].record["inputs"]["data"] != dpo_inputs


def test_a_sweep_over_the_generate_stage_changes_its_readers(tmp_path):
    from rlft.sweep import changed_stages

    path = tmp_path / "p.yaml"
    path.write_text(pipeline_yaml())
    assert changed_stages(load_pipeline(path), ["stages.gen.temperature"]) == ["gen", "dpo"]
    assert changed_stages(load_pipeline(path), ["stages.dpo.beta"]) == ["dpo"]


@pytest.mark.slow
def test_two_processes_write_the_same_files_as_one(tmp_path):
    """launch/cpu_2proc: each rank samples and scores every other batch; rank 0 writes them all."""
    files = {}
    for launch in ("", "launch: cpu_2proc\n"):
        text = pipeline_yaml().split("- name: dpo\n")[0]  # the generate stage alone
        text = text.replace("batch_size: 32", "batch_size: 8").replace(
            "write: [pairs, best_of_n]", "write: [pairs, scored]"
        )
        path = tmp_path / f"p{len(launch)}.yaml"
        path.write_text(text.replace("stages:", f"{launch}stages:"))
        run_dir = tmp_path / f"run{len(launch)}"
        run_pipeline(load_pipeline(path), run_dir=run_dir)
        files[launch] = [(run_dir / "gen" / name).read_text() for name in ("pairs.jsonl", "scored.jsonl")]
    record = json.loads((run_dir / "gen" / "stage.json").read_text())
    assert record["world_size"] == 2 and record["info"]["generate"]["processes"] == 2
    ranks = [json.loads((run_dir / "gen" / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["batches"] for r in ranks] == [[0, 2, 4, 6], [1, 3, 5, 7]]  # 16 prompts x 4 samples / 8
    assert files[""] == files["launch: cpu_2proc\n"]
