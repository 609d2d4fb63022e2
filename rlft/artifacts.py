"""Stage artifacts: content hashes, stage.json, and atomic writes.

A finished stage is a plain Hugging Face folder ``runs/<pipeline>/<stage>/`` (weights as
safetensors, tokenizer with its chat template) plus ``stage.json`` and ``metrics.jsonl``.
It is assembled in the stage's work folder and moved into place with one rename, so the stage
folder is always either the previous complete artifact or the new complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = (
    "rlft",
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "accelerate",
    "deepspeed",
    "tokenizers",
)


def sha256_file(path: Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_path(path: Path) -> str:
    """Content hash of a file, or of a folder (relative names + contents of every file in it)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def hash_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def git_commit(cwd: Path | None = None) -> str | None:
    """The commit of the checkout rlft runs from (with `+dirty` when it has local changes), if any.

    By default asks about rlft's own folder, and only when git tracks rlft's files there: an installed
    rlft (a wheel in site-packages) has no commit, even when its virtualenv lies inside some other
    project's repository (DESIGN.md decision 14).
    """
    git = ["git", "-C", str(cwd or Path(__file__).resolve().parent)]
    run = {"capture_output": True, "text": True, "timeout": 5}
    try:
        if cwd is None:
            subprocess.run(
                [*git, "ls-files", "--error-unmatch", "--", Path(__file__).name], check=True, **run
            )
        commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, **run).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or None when it is missing or not valid JSON (a stage that never finished)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON to a temp file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(value, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; artifacts are meant to be shared
    os.replace(tmp, path)


def replace_dir(src: Path, dst: Path) -> None:
    """Move folder `src` to `dst`, replacing any previous `dst` (old one removed after the swap)."""
    src, dst = Path(src), Path(dst)
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


CHECKPOINT_STATE = "trainer_state.json"  # written last into a checkpoint folder (HF Trainer and rlft's loops)


def is_complete_checkpoint(folder: Path) -> bool:
    """Whether a `checkpoint-N` folder was written to its end: its state file, written last, exists and
    parses. A process killed during a save leaves a folder without it, or with half of it."""
    state = Path(folder) / CHECKPOINT_STATE
    try:
        return isinstance(json.loads(state.read_text()), dict)
    except (OSError, ValueError):
        return False


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """The complete `checkpoint-N` folders in `checkpoint_dir`, oldest (lowest N) first."""
    found = [p for p in Path(checkpoint_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted((p for p in found if is_complete_checkpoint(p)), key=lambda p: int(p.name.split("-")[-1]))


def model_files_hash(folder: Path) -> str:
    """Hash of what defines a model artifact: weights, configs, tokenizer (not logs or metrics)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        logs = {"checkpoints", "wandb", "tensorboard"} & set(f.relative_to(folder).parts)  # not weights
        if f.is_file() and f.name not in ("stage.json", "metrics.jsonl") and not logs:
            h.update(str(f.relative_to(folder)).encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()


def link_dir(src: Path, dst: Path) -> None:
    """Make `dst` a copy of folder `src` made of hard links (plain copies where linking fails), swapped
    into place with one rename. Safe for artifacts: their files are replaced, never edited in place."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.link-{uuid.uuid4().hex[:8]}")
    shutil.copytree(src, tmp, copy_function=_link_or_copy)
    replace_dir(tmp, dst)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)
