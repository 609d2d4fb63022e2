"""Wrapper overhead: rlft's SFT, reward, DPO and GRPO stages against plain TRL scripts doing the same training.

    python benchmarks/run.py --only wrapper [--quick]

Both sides train the same model folder (a quickstart-sized tiny Llama, built once) on the same
quickstart JSONL with the same trainer config values: rlft runs a one-stage pipeline first, and the
plain script (benchmarks/plain_trl.py, which imports nothing from rlft) is given the settings that
stage gave TRL (stage.json `info.trainer_settings`). Each side runs in its own process, alternately
(rlft, TRL, rlft, TRL, ...), with a fresh `datasets` cache and a fresh rlft cache, so that
neither reads what the other computed.

Figures per kind:
- `loop`: TRL's `train_runtime` on both sides (rlft's is its stage's `train/runtime`): the goal
  holds this ratio to <= 1.02;
- `end to end`: the whole process, from `python` to exit (rlft: `rlft run`, including its data
  checks and report, the stage's own process, the task evaluation when the stage has one (off
  here), the saving and the run's report);
- rlft's time outside the loop, split into its process starts + imports and the rest.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from common import REPO, Figure, Ratio, interleave, python, quiet_env, run_command, run_stage, write_pipeline

DATA = REPO / "configs" / "data" / "quickstart"
KINDS = {
    "sft": {"data": "sft_train.jsonl", "extra": {"evaluate": False}},
    "reward": {"data": "prefs_train.jsonl", "extra": {}},
    "dpo": {
        "data": "prefs_train.jsonl",
        "extra": {"beta": 0.1, "max_length": 64, "precompute_reference": True},
    },
    # GRPO: prompts of the preference file, the quickstart's verifier as the reward (a plain function that
    # TRL takes as it is), 8 completions of at most 16 tokens per prompt, 2 prompts per step
    "grpo": {
        "data": "prefs_train.jsonl",
        "extra": {"reward": {"function": "reward_models.tasks:uppercase_copy"}, "evaluate": False},
        "trainer": {"num_generations": 8, "max_completion_length": 16, "learning_rate": 1.0e-5},
    },
}


def build_model(folder: Path) -> Path:
    from rlft.models.tiny import _strings_from_jsonl, build_tiny_from_texts

    texts = list(_strings_from_jsonl([DATA / "sft_train.jsonl", DATA / "prefs_train.jsonl"]))
    return build_tiny_from_texts(texts, folder / "model", hidden_size=128, num_layers=2)


def stage_config(kind: str, model: Path, steps: int) -> dict[str, Any]:
    """The one stage of `kind` both sides train."""
    return {
        "name": kind,
        "kind": kind,
        "model": {"path": str(model)},
        "data": {"train": str(DATA / KINDS[kind]["data"])},
        "trainer": {
            "learning_rate": 1.0e-3 if kind != "dpo" else 3.0e-4,
            "max_steps": steps,
            "per_device_train_batch_size": 16,
            "logging_steps": 10,
            "save_steps": 10 * steps,  # no checkpoint inside the timed loop, on either side
            **({"max_length": 64} if kind in ("sft", "reward") else {}),
            **KINDS[kind].get("trainer", {}),
        },
        **KINDS[kind]["extra"],
    }


def rlft_side(kind: str, pipeline: Path, work: Path, counter: list[int], settings: dict) -> dict[str, float]:
    counter[0] += 1
    run_dir = work / f"rlft-{counter[0]}"
    env = {"HF_DATASETS_CACHE": str(run_dir / "hf"), "RLFT_CACHE_DIR": str(run_dir / "cache")}
    run = run_stage(pipeline, run_dir, kind, env=env)
    settings.setdefault("values", run.record["info"]["trainer_settings"])
    return {
        "end_to_end": run.seconds,
        "loop": run.loop,
        "stage": run.record["seconds"],
        "last_loss": run.losses[-1],
    }


def trl_side(kind: str, model: Path, work: Path, counter: list[int], settings: dict) -> dict[str, float]:
    counter[0] += 1
    out = work / f"trl-{counter[0]}"
    out.mkdir(parents=True)
    values = dict(settings["values"])
    (out / "settings.json").write_text(json.dumps(values))
    env = {**quiet_env(), "HF_DATASETS_CACHE": str(out / "hf")}
    cmd = [
        python(),
        str(REPO / "benchmarks" / "plain_trl.py"),
        "--kind",
        kind,
        "--model",
        str(model),
        "--train",
        str(DATA / KINDS[kind]["data"]),
        "--settings",
        str(out / "settings.json"),
        "--out",
        str(out / "model"),
    ]
    seconds, output = run_command(cmd, env=env)
    result = json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])
    return {
        "end_to_end": seconds,
        "loop": result["train_runtime"],
        "imports": result["imports"],
        "setup": result["setup"],
        "save": result["save"],
        "last_loss": result["last_loss"],
    }


def where_time_goes(figures: dict[str, dict[str, list[float]]]) -> str:
    """Medians of each side's end-to-end time split into its parts (rlft: outside its stage process = the CLI,
    its imports, data checks and planning, the stage server's start, the report; in the stage outside the loop =
    model, data, trainer, evaluation, saving; TRL: imports, set-up, save)."""
    import statistics

    r, t = ({k: statistics.median(v) for k, v in figures[side].items()} for side in ("rlft", "trl"))
    return (
        f"rlft: loop {r['loop']:.1f} s, rest of its stage {r['stage'] - r['loop']:.1f} s, outside the stage "
        f"{r['end_to_end'] - r['stage']:.1f} s; TRL: loop {t['loop']:.1f} s, imports {t['imports']:.1f} s, set-up "
        f"{t['setup']:.1f} s, save {t['save']:.1f} s"
    )


def run(quick: bool) -> dict[str, Any]:
    # the SFT loop: ~4 s at 150 steps, against ~10 s of start-up
    steps, repeats = (150, 2) if quick else (300, 4)
    results: dict[str, Any] = {"steps": steps, "repeats": repeats, "kinds": {}}
    rows = []
    with tempfile.TemporaryDirectory(prefix="rlft-bench-wrapper-") as tmp:
        work = Path(tmp)
        model = build_model(work)
        for kind in KINDS:
            print(f"wrapper: {kind}, {steps} steps, {repeats} repeats each side", flush=True)
            pipeline = write_pipeline(
                work / f"{kind}.yaml", f"wrapper-{kind}", stage_config(kind, model, steps)
            )
            settings: dict = {}
            counter = [0]
            figures = interleave(
                {
                    "rlft": lambda k=kind, p=pipeline, s=settings, c=counter: rlft_side(k, p, work / k, c, s),
                    "trl": lambda k=kind, s=settings, c=counter: trl_side(k, model, work / k, c, s),
                },
                repeats,
            )
            loop = Ratio(
                f"{kind} loop",
                Figure("rlft loop", "s", figures["rlft"]["loop"]),
                Figure("TRL loop", "s", figures["trl"]["loop"]),
                goal="<= 1.02",
            )
            e2e = Ratio(
                f"{kind} end to end",
                Figure("rlft run", "s", figures["rlft"]["end_to_end"]),
                Figure("plain TRL script", "s", figures["trl"]["end_to_end"]),
            )
            results["kinds"][kind] = {
                "loop": loop.as_dict(),
                "end_to_end": e2e.as_dict(),
                "figures": {
                    side: {k: Figure(k, "s", v).as_dict() for k, v in f.items()}
                    for side, f in figures.items()
                },
                "trainer_settings": settings.get("values"),
            }
            for ratio in (loop, e2e):
                rows.append(
                    {
                        "figure": f"wrapper: {ratio.name}",
                        "rlft": f"{ratio.a.median:.2f} s",
                        "baseline": f"{ratio.b.median:.2f} s (TRL)",
                        "ratio": ratio.as_dict(),
                        **({"note": where_time_goes(figures)} if ratio is e2e else {}),
                    }
                )
    results["rows"] = rows
    return results
