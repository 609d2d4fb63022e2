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


def function_problem(spec: str, *, base_dir: str | Path = ".") -> str | None:
    """Why `load_function(spec)` would fail, found without running the user's code (a file or module is
    parsed, not executed), or None when it looks loadable. For checking a config before a run."""
    import ast

    module_part, sep, name = spec.rpartition(":")
    if not sep or not module_part or not name:
        return f"'{spec}': write it as module:function or file.py:function"
    if module_part.endswith(".py"):
        path = Path(module_part).expanduser()
        path = path if path.is_absolute() else Path(base_dir) / path
        if not path.is_file():
            return (
                f"'{spec}': file {path} does not exist (relative paths start from the pipeline file's folder)"
            )
        source = path
    else:
        try:
            found = importlib.util.find_spec(module_part)
        except (ImportError, ValueError) as e:
            found, error = None, e
        else:
            error = None
        if found is None:
            why = f" ({error})" if error else ""
            return (
                f"'{spec}': cannot find module '{module_part}'{why}; install it, put its folder on PYTHONPATH, "
                "or write file.py:function"
            )
        if not found.origin or not found.origin.endswith(".py"):
            return None  # a compiled or namespace module: checked when loaded
        source = Path(found.origin)
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError) as e:
        return f"'{spec}': cannot read {source}: {type(e).__name__}: {e}"
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if any(a.name == "*" for a in node.names):
                return None  # a star import may bring it: checked when loaded
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    if name in names or "__getattr__" in names:
        return None
    functions = sorted(
        n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")
    )
    return f"'{spec}': {source} defines no '{name}' (functions: {', '.join(functions) or 'none'})"
