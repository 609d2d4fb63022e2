"""The import graph of rlft and reward_models: no cycles, and layers that point one way.

Every import counts: top-level and function-local ones, those under `if TYPE_CHECKING`, and a
string constant that names a module of the packages (`"rlft.stages.sft:SFTStage"` in the stage
registry, `"rlft.stages.runner"` in a launch command): what importlib or a child process loads.
Importing `a.b` also runs `a/__init__.py`; those implicit edges to a parent package are not
counted (a package's `__init__` may re-export its own modules), nor is a string that is only a
package's name ("rlft" is also the default W&B project).
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGES = ("rlft", "reward_models")

# Lowest first. A module may import its own layer and the ones below, never one above. An entry
# names a module exactly, or a package and everything in it ("rlft.data."): the longest match wins.
LAYERS: list[tuple[str, list[str]]] = [
    (
        "leaves",
        [
            "rlft.errors",
            "rlft.artifacts",
            "rlft.config",
            "rlft.resources",
            "rlft.distributed",
            "rlft.trainer_fields",
            "rlft.log",
            "rlft.yamlio",
            "rlft.faults",
            "rlft.runlock",
            "rlft.diskspace",
            "rlft.processes",
        ],
    ),
    (
        "building blocks",
        [
            "rlft.models",
            "rlft.models.",
            "rlft.data",
            "rlft.data.",
            "rlft.tracking",
            "rlft.guards",
            "rlft.rl",
            "rlft.rl.",
            "rlft.rewards",
            "rlft.losses",
            "rlft.embeddings",
            "rlft.multitask",
            "rlft.evaluation",
            "rlft.generation",
            "rlft.comparisons",
            "rlft.judge",
            "rlft.tasks",
            "rlft.tasks.",
            "reward_models",
            "reward_models.",
        ],
    ),
    ("stage base types", ["rlft.stages.base"]),
    ("reference", ["rlft.reference"]),
    ("shared stage setup", ["rlft.stages.common"]),
    ("stage kinds", ["rlft.stages."]),
    ("stage registry and runner", ["rlft.stages", "rlft.stages.runner"]),
    (
        "pipeline files, launch rules, launched mode",
        [
            "rlft.pipeline_file",
            "rlft.launch_rules",
            "rlft.launched",
            "rlft.stage_server",
            "rlft.config_reference",
        ],
    ),
    ("pipeline and sweep", ["rlft.pipeline", "rlft.sweep", "rlft.run_evaluation", "rlft.report"]),
    ("Python API and CLI", ["rlft.api", "rlft.cli", "rlft", "rlft.__main__"]),
]


def modules(root: Path = REPO) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for f in sorted((root / package).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = f
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules `name` (its file at `path`) imports, by any of the ways above."""

    def owner(dotted: str | None) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {owner(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            submodules = {f"{module}.{a.name}" for a in node.names} & known.keys()
            found |= submodules  # `from package import module`: the module (its package is a parent)
            if len(submodules) < len(node.names):
                found.add(owner(module))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            module = node.value.partition(":")[0]
            if module in known and module not in PACKAGES:  # "rlft" alone is a name (W&B project, a version)
                found.add(module)
    return {m for m in found if m is not None and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for i, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            matches = module == entry or (entry.endswith(".") and module.startswith(entry))
            if matches and len(entry) > best_len:
                best, best_len = i, len(entry)
    return best


def test_cycle_finder_finds_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(edges) == [["a", "b", "c"]]


def test_the_graph_sees_every_kind_of_import():
    """Function-local imports and registry strings are edges too (else a cycle could hide in them)."""
    edges = graph()
    assert "rlft.stages.sft" in edges["rlft.stages"]  # the registry's "rlft.stages.sft:SFTStage"
    assert "rlft.stages.runner" in edges["rlft.pipeline"]  # the child process's `-m rlft.stages.runner`
    assert "rlft.models.tuning" in edges["rlft.models.loading"]  # imported inside a function


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_every_module_has_a_layer():
    missing = [m for m in modules() if layer_of(m) is None]
    assert not missing, f"add these modules to LAYERS in {__file__}: {missing}"


def test_layers_point_one_way():
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in graph().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "\n".join(upward)


def test_reward_models_does_not_import_rlft():
    """reward_models scores; it must work without the training framework (DESIGN.md decision 9)."""
    edges = graph()
    leaks = {m: sorted(t for t in targets if t.startswith("rlft")) for m, targets in edges.items()}
    assert {m: t for m, t in leaks.items() if m.startswith("reward_models") and t} == {}
