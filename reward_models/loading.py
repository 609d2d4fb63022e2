"""Load a user's reward function by `module:function` or `path/to/file.py:function`."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path


class RewardLoadError(ValueError):
    """A reward function spec that cannot be loaded; the message says why and what to write."""


def load_function(spec: str, *, base_dir: str | Path = ".") -> Callable[..., list[float]]:
    """`reward_models.tasks:uppercase_copy` or `rewards.py:my_reward` (relative to base_dir)."""
    module_part, sep, name = spec.rpartition(":")
    if not sep or not module_part or not name:
        raise RewardLoadError(f"reward function '{spec}': write it as module:function or file.py:function")
    if module_part.endswith(".py"):
        path = Path(module_part).expanduser()
        path = path if path.is_absolute() else Path(base_dir) / path
        if not path.is_file():
            raise RewardLoadError(f"reward function '{spec}': file {path} does not exist")
        mod_name = f"rlft_user_reward_{abs(hash(str(path.resolve())))}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        loader_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_part)
        except ImportError as e:
            raise RewardLoadError(
                f"reward function '{spec}': cannot import module '{module_part}' ({e})"
            ) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        available = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise RewardLoadError(
            f"reward function '{spec}': module '{module_part}' has no function '{name}' "
            f"(functions: {', '.join(available) or 'none'})"
        )
    return fn
