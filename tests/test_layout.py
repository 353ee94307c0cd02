"""The import graph follows the layers: no cycle, no torch below the proxies, nothing imports the faces.

Every import of every module counts, at module level or inside a function: a lazy import is
still a dependency, and a lazy ``import torch`` in a planning module would still cost a planner
its fast start. Only the standard library's ``ast`` is used.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from tests.conftest import REPO

# Which layers each layer may import (besides itself). Data flows runs -> store -> fits -> cost
# model -> search; only the faces (search.app) import everything.
BASE = {"scaling.errors", "scaling.cache", "scaling.checks"}
ALLOWED = {
    "scaling.shape": BASE,
    "scaling.proxy": BASE | {"scaling.shape"},
    "scaling.train": BASE | {"scaling.shape", "scaling.proxy"},
    "scaling.runs": BASE | {"scaling.shape", "scaling.proxy", "scaling.train"},
    "scaling.laws": BASE | {"scaling.shape"},
    "scaling.export": BASE | {"scaling.shape"},
    "search.device": BASE | {"scaling.shape", "scaling.laws", "scaling.export"},
    "search.plan": BASE | {"scaling.shape", "scaling.laws", "scaling.export", "search.device"},
    "search.app": None,  # anything
}
TORCH_FREE = (
    "scaling.errors",
    "scaling.cache",
    "scaling.checks",
    "scaling.shape",
    "scaling.laws",
    "scaling.export",
    "search.device",
    "search.plan",
)
HEAVY = ("torch", "mlx")


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for package in ("scaling", "search"):
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module ``path`` imports: our own by full name (the longest known prefix), others by top name."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    resolved = set()
    for target in targets:
        if target.split(".")[0] in ("scaling", "search"):
            parts = target.split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            if parts:
                resolved.add(".".join(parts))
        else:
            resolved.add(target.split(".")[0])
    return resolved - {name}


def layer_of(name: str) -> str | None:
    return next((layer for layer in (*ALLOWED, *BASE) if name == layer or name.startswith(layer + ".")), None)


def violations(root: Path) -> list[str]:
    """Everything wrong with the import graph of the tree at ``root``."""
    found = modules(root)
    graph = {name: imports(path, name, set(found)) for name, path in found.items()}
    problems = []
    for name, targets in graph.items():
        layer = layer_of(name)
        for target in sorted(t for t in targets if t in found):
            target_layer = layer_of(target)
            if target_layer == "search.app" and layer != "search.app":
                problems.append(f"{name} imports the faces ({target})")
            allowed = ALLOWED.get(layer)
            if allowed is not None and target_layer != layer and target_layer not in allowed:
                problems.append(f"{name} ({layer}) imports {target} ({target_layer}) against the flow")
    for name in graph:  # torch reachable from a torch-free module
        if not name.startswith(TORCH_FREE):
            continue
        seen, stack, parent = {name}, [name], {}
        while stack:
            current = stack.pop()
            for target in graph.get(current, ()):
                if target in HEAVY:
                    chain = [target, current]
                    while chain[-1] != name:
                        chain.append(parent[chain[-1]])
                    problems.append(f"{name} reaches {target}: {' <- '.join(chain)}")
                elif target in graph and target not in seen:
                    seen.add(target)
                    parent[target] = current
                    stack.append(target)
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return sorted(set(problems))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_import_graph_follows_the_layers():
    found = modules(REPO)
    assert all(layer_of(name) for name in found if name not in ("scaling", "search")), [
        name for name in found if not layer_of(name) and name not in ("scaling", "search")
    ]
    assert violations(REPO) == []


def test_the_check_catches_torch_in_the_laws_a_cycle_and_an_import_of_the_faces(tmp_path):
    for package in ("scaling", "search"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    fit = tmp_path / "scaling" / "laws" / "fit.py"
    fit.write_text("import torch\n" + fit.read_text())
    cost = tmp_path / "search" / "device" / "cost.py"
    cost.write_text(cost.read_text() + "\n\ndef _late():\n    from search.app import report  # noqa\n")
    store = tmp_path / "scaling" / "runs" / "store.py"
    store.write_text(store.read_text() + "\nfrom scaling.runs import sweep  # noqa\n")
    found = violations(tmp_path)
    assert any(p.startswith("scaling.laws.fit reaches torch") for p in found), found
    assert any(p.startswith("search.plan.planner reaches torch") for p in found), found  # through the laws
    assert "search.device.cost imports the faces (search.app.report)" in found
    assert any(p.startswith("import cycle:") and "scaling.runs.store" in p for p in found), found
