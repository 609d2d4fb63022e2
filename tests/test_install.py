"""Installed is the same as cloned (DESIGN.md decision 14): a wheel, installed without the repository.

The test copies the repository's git-tracked files to a temporary folder (the links rlft/launch and
rlft/configs kept as links), builds a wheel there, installs it (not editable, `--no-deps`) into a
fresh virtualenv, and runs the `rlft` command of that virtualenv from an empty folder, with no
PYTHONPATH: `rlft validate quickstart --launch zero3` and a 5-step SFT of the quickstart.

The dependencies (torch, transformers, trl, ...) are not installed again: a .pth file in the fresh
virtualenv's site-packages holds one plain line, the path of the current environment's
site-packages, which Python appends to `sys.path` after the fresh site-packages. A plain path line
is only added to `sys.path`; the folder is not processed as a site directory, so the current
environment's own .pth files are NOT executed. Among them is the editable install's finder, which
would map `import rlft` to the repository; without it, `rlft` can only come from the wheel, and the
test asserts that it does (and that its shipped files are the wheel's, not the repository's).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def _copy_tracked_files(dest: Path) -> None:
    """The files git tracks, as they are in the working tree; links stay links (rlft/launch -> ../launch)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail(f"{REPO} is not a git checkout: this test builds the wheel from the tracked files")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in sorted(filter(None, listed.decode().split("\0"))):
        src, dst = REPO / rel, dest / rel
        if not os.path.lexists(src):  # deleted in the working tree, not yet committed
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)


def _run(cmd: list, *, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"{cmd} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc


def test_wheel_installed_without_the_repository_runs_the_quickstart(tmp_path):
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(WANDB_MODE="disabled", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

    # 1. A wheel from the tracked files only (build/ and *.egg-info stay in the temporary copy).
    src, wheels = tmp_path / "src", tmp_path / "wheels"
    _copy_tracked_files(src)
    assert (src / "rlft" / "launch").is_symlink() and (src / "rlft" / "configs").is_symlink()
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, "."],
        cwd=src,
        env=env,
        timeout=300,
    )
    (wheel,) = sorted(wheels.glob("rlft-*.whl"))

    # 2. A fresh virtualenv with the wheel, not editable; the dependencies through a plain path line.
    # It lies inside someone else's git repository (as a project's .venv does): not rlft's checkout.
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    _run([*git, "init", "-q"], cwd=tmp_path, env=env, timeout=60)
    _run([*git, "commit", "-q", "--allow-empty", "-m", "a project"], cwd=tmp_path, env=env, timeout=60)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path, env=env, timeout=120)
    python, rlft = venv / "bin" / "python", venv / "bin" / "rlft"
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel],
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    site = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=tmp_path,
            env=env,
            timeout=60,
        ).stdout.strip()
    )
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "_current_env_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))

    # 3. From an empty folder, with no PYTHONPATH: rlft comes from the fresh site-packages, files too.
    work = tmp_path / "work"
    work.mkdir()
    where = _run(
        [
            python,
            "-c",
            "import rlft, reward_models; from rlft.resources import shipped;"
            "print(rlft.__file__); print(reward_models.__file__); print(shipped('launch', 'zero3.yaml'))",
        ],
        cwd=work,
        env=env,
        timeout=60,
    ).stdout.split()
    for path in map(Path, where):
        assert path.is_relative_to(site), f"{path} is not from the installed wheel in {site}"
        assert not path.resolve().is_relative_to(REPO), f"{path} leads to the repository"
    assert Path(where[2]).is_file()
    assert not (site / "rlft" / "launch").is_symlink()  # the wheel holds the files, not links

    _run([rlft, "validate", "quickstart", "--launch", "zero3"], cwd=work, env=env, timeout=120)
    _run(
        [rlft, "quickstart", "--only", "sft", "--set", "stages.sft.trainer.max_steps=5"],
        cwd=work,
        env=env,
        timeout=600,
    )
    sft = work / "runs" / "quickstart" / "sft"
    assert (sft / "model.safetensors").is_file()
    record = json.loads((sft / "stage.json").read_text())
    assert record["status"] == "done"
    assert (
        record["git_commit"] is None
    )  # an installed rlft has no commit (the repository around it is not rlft's)
    print(f"built, installed and ran from the wheel in {time.monotonic() - started:.1f} s")
