"""Rows per second of rlft's data layer: validation alone, and validation + curation.

    python benchmarks/data_throughput.py                # 100,000 rows
    python benchmarks/data_throughput.py --rows 20000
    python benchmarks/data_throughput.py --rows 20000 --compare   # near_dedup: numpy vs datasketch

Writes a synthetic preference JSONL (seeded) to a temporary folder: prompts of 20-60 words,
answers of 20-80, from a 2,000-word vocabulary, with about 5% exact duplicates (case and spacing
changed), 5% near-duplicates (one prompt word replaced) and 1% pairs whose chosen and rejected
differ only in case. Then times, one after the other:
- `load_stage_data` the first time (JSON -> Arrow conversion, then validation);
- `load_stage_data` again (Arrow cached): validation alone;
- `load_stage_data` with curate: dedup, near_dedup, drop_identical_pairs, flip_fraction;
- each curation step on its own, over the validated rows.
With --compare, only near_dedup instead: rlft's (numpy, batched) and the per-row datasketch
version it replaced (kept here, `near_duplicates_datasketch`), interleaved (A B A B ...) so that
both see the same load, and the rows each finds.
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


def near_duplicates_datasketch(ds, *, fields, threshold: float, num_perm: int, shingle: int, seed: int):
    """rlft's near_dedup before it moved to numpy (the reference for --compare): per row, a
    rolling hash of its shingles as a Python list, a datasketch MinHash (its default scheme,
    affine32 in datasketch 2) and a MinHashLSH query, then an insert when the row is kept."""
    import numpy as np
    from datasketch import MinHash, MinHashLSH

    from rlft.data.curate import Removal, normalized_texts

    def shingle_hashes(text: str, size: int) -> list[int]:
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        size = max(1, min(size, len(points)))
        count = max(0, len(points) - size + 1)
        hashes = np.zeros(count, dtype=np.uint64)
        for j in range(size):
            hashes = hashes * np.uint64(0x100000001B3) + points[j : j + count]
        hashes ^= hashes >> np.uint64(29)
        return (hashes & np.uint64(0xFFFFFFFF)).tolist()

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.05, 0.95))
    kept: dict[int, np.ndarray] = {}
    hashed = (shingle_hashes(text, shingle) for text in normalized_texts(ds, fields))
    minhashes = MinHash.generator(hashed, num_perm=num_perm, seed=seed % 2**32, hashfunc=int)
    removal = Removal(details={"threshold": threshold, "num_perm": num_perm, "shingle_chars": shingle})
    for i, minhash in enumerate(minhashes):
        best, best_similarity = None, 0.0
        for j in sorted(lsh.query(minhash)):
            similarity = float(np.mean(kept[j] == minhash.hashvalues))
            if similarity >= threshold and similarity > best_similarity:
                best, best_similarity = j, similarity
        if best is None:
            lsh.insert(i, minhash, check_duplication=False)
            kept[i] = minhash.hashvalues
        else:
            removal.reasons[i] = (
                f"near-duplicate of an earlier row: estimated Jaccard similarity {best_similarity:.2f} "
                f">= threshold {threshold} ({shingle}-character shingles of the normalised text)"
            )
            removal.duplicate_of[i] = best
    return removal


def compare_near_dedup(train, *, fields, near, seed: int, repeats: int) -> None:
    """Time rlft's near_dedup against the datasketch version, interleaved, and compare the rows found."""
    from rlft.data.curate import find_near_duplicates

    kwargs = dict(
        fields=fields, threshold=near.threshold, num_perm=near.num_perm, shingle=near.shingle, seed=seed
    )
    versions = {
        "datasketch (per row)": near_duplicates_datasketch,
        "rlft (numpy, batched)": find_near_duplicates,
    }
    seconds: dict[str, list[float]] = {name: [] for name in versions}
    found = {}
    for find in versions.values():  # imports and first-call costs, untimed
        find(train.select(range(min(200, len(train)))), **kwargs)
    for _ in range(repeats):
        for name, find in versions.items():
            begin = time.perf_counter()
            found[name] = find(train, **kwargs)
            seconds[name].append(time.perf_counter() - begin)
    print(f"\nnear_dedup over {len(train):,} rows, {repeats} interleaved runs each (seconds, rows/s)")
    for name, times in seconds.items():
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(
            f"  {name:<22} {runs}  mean {sum(times) / len(times):.2f} s, {len(train) * len(times) / sum(times):,.0f} rows/s"
        )
    old, new = (found[name] for name in versions)
    ratio = sum(seconds["datasketch (per row)"]) / sum(seconds["rlft (numpy, batched)"])
    print(f"  ratio {ratio:.2f}x")
    both = old.reasons.keys() & new.reasons.keys()
    print(
        f"  found: datasketch {len(old.reasons)}, rlft {len(new.reasons)}; both {len(both)}, "
        f"only rlft (extra) {len(new.reasons.keys() - both)}, only datasketch (missed) {len(old.reasons.keys() - both)}; "
        f"same reasons {old.reasons == new.reasons}, same duplicate_of {old.duplicate_of == new.duplicate_of}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of synthetic data (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data and the curation")
    parser.add_argument("--json", type=Path, help="also write the timings here (benchmarks/run.py)")
    parser.add_argument(
        "--compare", action="store_true", help="time near_dedup against the datasketch version, interleaved"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs of each version with --compare")
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

        if args.compare:
            data, _ = load()
            fields = text_fields(data.train, "preference")
            near = CurateConfig(near_dedup=True).near_dedup
            compare_near_dedup(data.train, fields=fields, near=near, seed=args.seed, repeats=args.repeats)
            return

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
