"""Rows per second of rlft's data layer: validation alone, and validation + curation.

    python benchmarks/data_throughput.py                # 100,000 rows
    python benchmarks/data_throughput.py --rows 20000

Writes a synthetic preference JSONL (seeded) to a temporary folder: prompts of 20-60 words,
answers of 20-80, from a 2,000-word vocabulary, with about 5% exact duplicates (case and spacing
changed), 5% near-duplicates (one prompt word replaced) and 1% pairs whose chosen and rejected
differ only in case. Then times, one after the other:
- `load_stage_data` the first time (JSON -> Arrow conversion, then validation);
- `load_stage_data` again (Arrow cached): validation alone;
- `load_stage_data` with curate: dedup, near_dedup, drop_identical_pairs, flip_fraction;
- each curation step on its own, over the validated rows.
Single process; set OMP_NUM_THREADS=1 on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path


def synthetic_rows(n: int, *, seed: int) -> list[dict]:
    """Preference rows with some exact duplicates, near-duplicates and identical pairs."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gu", "he", "ji"]
    vocab = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(4000)})[:2000]

    def words(low: int, high: int) -> str:
        return " ".join(rng.choices(vocab, k=rng.randint(low, high)))

    rows: list[dict] = []
    while len(rows) < n:
        kind = rng.random()
        if rows and kind < 0.05:  # exact duplicate after normalisation
            row = dict(rng.choice(rows))
            row["prompt"] = "  " + row["prompt"].upper()
        elif rows and kind < 0.10:  # near-duplicate: one prompt word replaced
            row = dict(rng.choice(rows))
            prompt = row["prompt"].split()
            prompt[rng.randrange(len(prompt))] = rng.choice(vocab)
            row["prompt"] = " ".join(prompt)
        elif kind < 0.11:  # chosen and rejected identical after normalisation
            answer = words(20, 80)
            row = {"prompt": words(20, 60), "chosen": answer, "rejected": answer.capitalize() + " "}
        else:
            row = {"prompt": words(20, 60), "chosen": words(20, 80), "rejected": words(20, 80)}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of synthetic data (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data and the curation")
    parser.add_argument("--json", type=Path, help="also write the timings here (benchmarks/run.py)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rlft-bench-") as tmp:
        folder = Path(tmp)
        os.environ["HF_DATASETS_CACHE"] = str(folder / "hf_cache")  # before datasets is imported
        import datasets

        from rlft.data import DataConfig, load_stage_data
        from rlft.data.config import CurateConfig
        from rlft.data.curate import (
            find_exact_duplicates,
            find_identical_pairs,
            find_near_duplicates,
            flip_labels,
            text_fields,
        )

        datasets.disable_progress_bars()
        started = time.perf_counter()
        path = folder / "prefs.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for row in synthetic_rows(args.rows, seed=args.seed):
                f.write(json.dumps(row) + "\n")
        size_mb = path.stat().st_size / 2**20
        print(
            f"{args.rows:,} rows, {size_mb:.1f} MiB, written in {time.perf_counter() - started:.1f}s to {path}"
        )

        def load(**cfg):
            config = DataConfig(train=str(path), seed=args.seed, **cfg)
            begin = time.perf_counter()
            data = load_stage_data(
                config, formats=("preference",), base_dir=folder, rejects_path=folder / "rejects.jsonl"
            )
            return data, time.perf_counter() - begin

        timings: list[tuple[str, int, float, str]] = []  # (what, rows in, seconds, note)
        _, seconds = load()
        timings.append(("load_stage_data, first (JSON -> Arrow + validation)", args.rows, seconds, ""))
        data, seconds = load()
        timings.append(("load_stage_data: validation alone (Arrow cached)", args.rows, seconds, ""))
        curate = CurateConfig(dedup=True, near_dedup=True, drop_identical_pairs=True, flip_fraction=0.1)
        curated, seconds = load(curate=curate)
        removed = ", ".join(f"{e['step']} -{e['removed']}" for e in curated.report["curation"][:-1])
        timings.append(("load_stage_data: validation + curation", args.rows, seconds, removed))

        train = data.train
        fields = text_fields(train, "preference")
        near = curate.near_dedup
        steps = {
            "dedup": lambda: find_exact_duplicates(train, fields=fields),
            "near_dedup": lambda: find_near_duplicates(
                train,
                fields=fields,
                threshold=near.threshold,
                num_perm=near.num_perm,
                shingle=near.shingle,
                seed=args.seed,
            ),
            "drop_identical_pairs": lambda: find_identical_pairs(
                train, format="preference", style="standard"
            ),
            "flip (10%)": lambda: flip_labels(train, format="preference", fraction=0.1, seed=args.seed),
        }
        for name, step in steps.items():
            begin = time.perf_counter()
            result = step()
            found = (
                f"{len(result.reasons)} found" if hasattr(result, "reasons") else f"{len(result[1])} flipped"
            )
            timings.append((f"  step {name} alone", len(train), time.perf_counter() - begin, found))

    width = max(len(t[0]) for t in timings)
    print(f"\n{'what':<{width}}  {'rows':>9}  {'seconds':>8}  {'rows/s':>9}  note")
    for what, rows, seconds, note in timings:
        print(f"{what:<{width}}  {rows:>9,}  {seconds:>8.2f}  {rows / seconds:>9,.0f}  {note}")
    if args.json:
        args.json.write_text(
            json.dumps([{"what": w.strip(), "rows": r, "seconds": s, "note": n} for w, r, s, n in timings])
        )


if __name__ == "__main__":
    main()
