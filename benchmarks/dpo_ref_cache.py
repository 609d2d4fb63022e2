"""Wall time of a DPO β sweep with rlft's reference log-prob cache, and without it.

    python benchmarks/dpo_ref_cache.py                       # 3 betas, quickstart-sized model, 1 epoch each
    python benchmarks/dpo_ref_cache.py --steps 250 --hidden 256 --layers 4

Builds a tiny Llama (the quickstart's size by default) on the quickstart's preference pairs
(2,000 train, 200 eval) and trains one DPO stage per β, in this process, one after the other, in
three ways:
- `no precompute`: TRL's default, the reference model runs beside the policy at every step;
- `precompute, no cache`: reference log-probs computed once per point, before training (each
  point gets an empty cache folder, so nothing is reused);
- `precompute + cache`: one cache for the sweep: the first point computes and stores the
  log-probs, the next ones read them (rlft sweep does this for its points).
Each point is timed from building the trainer (data, tokenisation, reference) to the end of
training; no task evaluation. Prints the seconds per point, the sweep totals and the speed-ups.
Single process; set OMP_NUM_THREADS=1 on a shared machine.

Measured here (2 CPU cores, 1 thread, torch 2.13, trl 1.16), seconds for the 3-point sweep:
- defaults (571k parameters, 125 steps): 34.5 cached, 41.7 precomputed per point (1.21x),
  35.9 with the reference at every step (1.04x); reference pass 3.4 cached vs 11.7.
- `--hidden 256 --layers 4 --steps 250` (4.3M parameters): 219 cached, 290 per point (1.32x),
  323 at every step (1.47x); reference pass 12.3 vs 45.2 (other jobs shared the cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "configs" / "data" / "quickstart"
MODES = ("no precompute", "precompute, no cache", "precompute + cache")


def run_point(model: Path, work: Path, *, beta: float, precompute: bool, steps: int, batch: int) -> dict:
    """One DPO stage in this process: seconds to build the trainer, to train, and the cache events."""
    from rlft.stages import dpo
    from rlft.stages.base import StageContext
    from rlft.tracking import Tracker

    cfg = dpo.DPOStage.model_validate(
        {
            "name": "dpo",
            "kind": "dpo",
            "model": {"path": str(model)},
            "data": {"train": str(DATA / "prefs_train.jsonl"), "eval": str(DATA / "prefs_eval.jsonl")},
            "beta": beta,
            "max_length": 64,
            "precompute_reference": precompute,
            "evaluate": False,
            "trainer": {
                "max_steps": steps,
                "per_device_train_batch_size": batch,
                "learning_rate": 1e-4,
                "logging_steps": 50,
                "save_strategy": "no",
                "eval_strategy": "no",
            },
        }
    )
    ctx = StageContext(
        pipeline="bench",
        run_dir=work,
        work_dir=work / "work",
        artifact_dir=work / "work" / "artifact",
        base_dir=work,
        model_paths={},
        tracker=Tracker(work / "work" / "metrics.jsonl"),
    )
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        start = time.perf_counter()  # the stage's log lines and progress bars go to /dev/null
        trainer, info = dpo.make_trainer(cfg, ctx)
        built = time.perf_counter()
        trainer.train()
        done = time.perf_counter()
    events = info["reference"]["cache"] or []
    return {
        "build_s": built - start,
        "train_s": done - built,
        "total_s": done - start,
        "reference_s": sum(e["seconds"] for e in events),
        "cache": "/".join(e["status"] for e in events) or "-",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--betas", default="0.05,0.1,0.3", help="comma-separated β values (default 0.05,0.1,0.3)"
    )
    parser.add_argument("--steps", type=int, default=125, help="DPO steps per point (default 125: one epoch)")
    parser.add_argument("--batch", type=int, default=16, help="pairs per step (default 16)")
    parser.add_argument("--hidden", type=int, default=128, help="model width (default 128, the quickstart's)")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (default 2)")
    parser.add_argument(
        "--json", type=Path, help="also write the seconds per mode and point here (benchmarks/run.py)"
    )
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TQDM_DISABLE", "1")
    betas = [float(b) for b in args.betas.split(",")]

    import datasets
    import torch
    from rich.console import Console
    from rich.table import Table

    from rlft.models.tiny import build_tiny_from_texts

    datasets.disable_caching()  # TRL's own cache of the datasets library must not help any mode
    datasets.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="rlft-bench-") as tmp:
        root = Path(tmp)
        texts = (DATA / "sft_train.jsonl").read_text().splitlines() + (
            DATA / "prefs_train.jsonl"
        ).read_text().splitlines()
        model = build_tiny_from_texts(
            texts, root / "model", hidden_size=args.hidden, num_layers=args.layers, num_heads=4
        )
        from transformers import AutoModelForCausalLM

        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model).parameters())
        results: dict[str, list[dict]] = {}
        for mode in MODES:
            results[mode] = []
            for i, beta in enumerate(betas):
                work = root / mode.replace(" ", "_").replace(",", "").replace("+", "and") / f"point{i}"
                # a cache shared by the sweep's points, or an empty one per point
                shared = root / "shared-cache" if mode == "precompute + cache" else work / "cache"
                os.environ["RLFT_CACHE_DIR"] = str(shared)
                results[mode].append(
                    run_point(
                        model,
                        work,
                        beta=beta,
                        precompute=mode != "no precompute",
                        steps=args.steps,
                        batch=args.batch,
                    )
                )
                r = results[mode][-1]
                print(
                    f"{mode:22s} β={beta:<5} {r['total_s']:6.1f} s (reference {r['reference_s']:.1f} s, {r['cache']})",
                    flush=True,
                )
        os.environ.pop("RLFT_CACHE_DIR", None)

    totals = {mode: sum(r["total_s"] for r in rows) for mode, rows in results.items()}
    table = Table(
        title=(
            f"DPO β sweep, {len(betas)} points of {args.steps} steps x {args.batch} pairs (2,000 train + 200 eval pairs), "
            f"Llama {n_params:,} parameters (hidden {args.hidden}, {args.layers} layers), "
            f"{torch.get_num_threads()} torch thread(s); seconds summed over the points"
        ),
        title_justify="left",
    )
    for col in ("mode", "per point s", "setup + reference s", "of which reference", "train s", "sweep s"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    table.add_column("speed-up vs no cache", justify="right")
    table.add_column("vs no precompute", justify="right")
    for mode, rows in results.items():
        table.add_row(
            mode,
            " / ".join(f"{r['total_s']:.1f}" for r in rows),
            f"{sum(r['build_s'] for r in rows):.1f}",
            f"{sum(r['reference_s'] for r in rows):.1f} ({' '.join(r['cache'] for r in rows)})",
            f"{sum(r['train_s'] for r in rows):.1f}",
            f"{totals[mode]:.1f}",
            f"{totals['precompute, no cache'] / totals[mode]:.2f}x",
            f"{totals['no precompute'] / totals[mode]:.2f}x",
        )
    Console(width=220).print(table)
    if args.json:
        args.json.write_text(
            json.dumps({"totals": totals, "points": results, "betas": betas, "steps": args.steps})
        )


if __name__ == "__main__":
    main()
