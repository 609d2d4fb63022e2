"""reward_models stays standalone and light: no rlft anywhere, torch and transformers only inside functions."""

import ast
import subprocess
import sys
from pathlib import Path

import reward_models

PACKAGE = Path(reward_models.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))
HEAVY = ("torch", "transformers", "trl", "datasets", "tokenizers", "accelerate")


def imported_names(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((a.name, node) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node


def test_no_module_imports_rlft_and_heavy_imports_are_inside_functions():
    assert {m.stem for m in MODULES} >= {"__init__", "composite", "functions", "loading", "model", "tasks"}
    for path in MODULES:
        tree = ast.parse(path.read_text())
        top_level = {id(n) for n in tree.body}
        for name, node in imported_names(tree):
            root = name.split(".")[0]
            assert root != "rlft", f"{path.name} imports {name}: reward_models must not depend on rlft"
            assert not (root in HEAVY and id(node) in top_level), f"{path.name} imports {name} at module top"


def test_importing_every_module_loads_no_rlft_torch_or_transformers():
    modules = ", ".join(f"reward_models.{m.stem}" for m in MODULES if m.stem != "__init__")
    code = (
        f"import sys, reward_models, {modules}; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {{'rlft', *{HEAVY!r}}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
