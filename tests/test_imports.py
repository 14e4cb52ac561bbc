"""Imports point down: no import circle between perceptrl's modules, and the layers keep their order.

Read from the source (the AST of every module under src/perceptrl), so an import inside a function
counts as much as one at the top: a lazy import hides a circle from Python, not from the design.
``from perceptrl.a import b`` is an edge to ``perceptrl.a.b`` when that is a module, else to
``perceptrl.a`` (a package's ``__init__`` is a module of its own). Imports by name at run time
(``importlib.import_module``, the CLI's command modules) are not seen.

Layers (README, DESIGN.md): cli -> eval / bench / demo -> train -> models, algorithms, vision, data,
rewards.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
# Each layer may import from the layers after it, never from one before it. Modules outside these
# packages (perceptrl.config, perceptrl.timing, the package itself) are shared by all.
LAYERS = (
    ("cli",),
    ("eval", "bench", "demo"),
    ("train",),
    ("models", "algorithms", "vision", "data", "rewards"),
)
# Upward imports allowed on purpose, ``(importer, imported): reason``. None today.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "perceptrl").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _target(name: str, modules) -> str | None:
    """The module ``name`` is, or the nearest package that holds it."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


@functools.lru_cache(maxsize=None)
def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported module: line}}`` over perceptrl's own modules, lazy imports included."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                if target.split(".")[0] != "perceptrl":
                    continue
                resolved = _target(target, modules)
                if resolved and resolved != name:
                    edges.setdefault(resolved, node.lineno)
        graph[name] = edges
    return graph


def circles(graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _describe(component, graph) -> str:
    return "; ".join(f"{a} -> {b} (line {graph[a][b]})" for a in component for b in component if b in graph[a])


def test_no_import_circles():
    graph = import_graph()
    assert len(graph) > 50 and "perceptrl.models.policy" in graph["perceptrl.models.loading"]  # the reader works
    found = circles(graph)
    assert not found, "import circles: " + " | ".join(_describe(c, graph) for c in found)


def test_circle_finder_finds_a_lazy_circle():
    graph = {"a": {"b": 1}, "b": {"c": 3}, "c": {"a": 9}, "d": {"a": 1}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b": 1}, "b": {}}) == []


def _rank(module: str) -> int | None:
    """The index in ``LAYERS`` of the layer ``module`` belongs to; None for the shared modules."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    return next((rank for rank, names in enumerate(LAYERS) if parts[1] in names), None)


def upward_imports(graph) -> list[str]:
    """Every import from a layer to one above it, less ``EXCEPTIONS``."""
    bad = []
    for module, edges in graph.items():
        for target, line in edges.items():
            low, high = _rank(module), _rank(target)
            if low is not None and high is not None and high < low and (module, target) not in EXCEPTIONS:
                bad.append(f"{module} -> {target} (line {line})")
    return bad


def test_layers_point_down():
    """cli -> eval / bench / demo -> train -> models, algorithms, vision, data, rewards, never back."""
    bad = upward_imports(import_graph())
    assert not bad, "imports that point up: " + "; ".join(bad)


def test_layer_check_finds_an_upward_import():
    graph = {
        "perceptrl.models.lora": {"perceptrl.train.checkpoint": 7, "perceptrl.models.policy": 3, "perceptrl.config": 1},
        "perceptrl.train.rl": {"perceptrl.eval.pipeline": 5, "perceptrl.models.lora": 2},
        "perceptrl.bench.runner": {"perceptrl.cli": 4, "perceptrl.train.rl": 1},
        "perceptrl.demo": {"perceptrl.eval.compare": 2},
        "perceptrl.config": {"perceptrl.data.synthetic": 9},
    }
    assert upward_imports(graph) == [
        "perceptrl.models.lora -> perceptrl.train.checkpoint (line 7)",
        "perceptrl.train.rl -> perceptrl.eval.pipeline (line 5)",
        "perceptrl.bench.runner -> perceptrl.cli (line 4)",
    ]
