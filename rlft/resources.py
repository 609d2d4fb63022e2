"""The files rlft ships: launch configs (with their DeepSpeed JSONs) and the quickstart's config and data.

They live in the repository's top-level `launch/` and `configs/` and go into the wheel as package
data (`rlft/launch` and `rlft/configs`, links to them in a checkout), so an installed rlft finds
them exactly as a clone does (DESIGN.md decision 14): through `importlib.resources`, never
relative to a git checkout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from rlft import yamlio
from rlft.errors import ConfigError, RlftError


def shipped(*parts: str) -> Path:
    """A file or folder rlft ships, e.g. `shipped("launch", "zero3.yaml")`."""
    root = resources.files("rlft")
    if not isinstance(root, Path):  # a zip import: accelerate and DeepSpeed need files on disk
        raise RlftError(
            f"rlft is installed as an archive ({root}); install it as a folder to use its shipped files"
        )
    return root.joinpath(*parts)


def _listed(names: list[str]) -> str:
    """The shipped names for an error message, or why there are none (an install without its files)."""
    if names:
        return f"shipped: {', '.join(names)}"
    return f"and rlft's shipped files are missing from {shipped()}: reinstall rlft"


def quickstart_config() -> Path:
    return shipped("configs", "quickstart.yaml")


def shipped_pipeline_names() -> list[str]:
    """The pipeline files one can name without a path: `quickstart`, `examples/smollm2_sft_lora`."""
    root = shipped("configs")
    return sorted(str(f.relative_to(root).with_suffix("")) for f in root.rglob("*.yaml"))


def find_pipeline_file(pipeline: str | Path) -> Path:
    """A pipeline file: a path, or the name of one rlft ships (`quickstart` -> configs/quickstart.yaml)."""
    path = Path(pipeline).expanduser()
    if path.is_file() or path.suffix in (".yaml", ".yml") or path.is_absolute():
        return path  # a path: load_pipeline says so when it does not exist
    name = str(pipeline)
    if name in shipped_pipeline_names():
        return shipped("configs", f"{name}.yaml")
    raise ConfigError(
        f"{pipeline}: no such pipeline file, nor one rlft ships ({_listed(shipped_pipeline_names())})"
    )


def shipped_launch_names() -> list[str]:
    """The launch configs one can name without a path: `zero3` for launch/zero3.yaml."""
    return sorted(f.stem for f in shipped("launch").glob("*.yaml"))


def find_launch_config(launch: str, *, base_dir: Path) -> Path:
    """A launch config: a shipped name (`zero3` -> launch/zero3.yaml), or a path relative to the
    pipeline file, the working folder, or the shipped files (`launch/zero3.yaml`)."""
    p = Path(launch).expanduser()
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = [base_dir / p, Path.cwd() / p, shipped() / p, shipped("launch") / p]
        if not p.suffix:
            candidates.append(shipped("launch", f"{launch}.yaml"))
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise ConfigError(
        f"launch: {launch}: no such accelerate config ({_listed(shipped_launch_names())}; or give a path)"
    )


def resolved_launch_config(config: Path, out: Path) -> Path:
    """A copy of the launch config with its DeepSpeed JSON path made absolute (it is relative to the config)."""
    data = yamlio.safe_load(config.read_text()) or {}
    ds = data.get("deepspeed_config") or {}
    if ds.get("deepspeed_config_file") and not Path(ds["deepspeed_config_file"]).is_absolute():
        ds["deepspeed_config_file"] = str((config.parent / ds["deepspeed_config_file"]).resolve())
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out
