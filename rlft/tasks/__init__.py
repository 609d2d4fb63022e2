"""Generators of the shipped tasks' data (quickstart, paraphrase pairs, reverse copy, review prompts)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def write_jsonl_files(
    out_dir: str | os.PathLike, files: dict[str, Iterable[dict[str, Any]]], *, ensure_ascii: bool = False
) -> dict[str, Path]:
    """Write each file's rows as JSON lines into ``out_dir`` (made if missing), each file through a temporary
    one and a rename, so a reader never sees half a file. Returns the paths by file name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in files.items():
        paths[name] = out / name
        tmp = out / f".{name}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=ensure_ascii) + "\n")
        os.replace(tmp, paths[name])
    return paths
