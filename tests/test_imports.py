"""The package's shape: an import graph without cycles, layers that only look down, a light CLI start."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "mimi_cli"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """Imports under ``if TYPE_CHECKING:`` are for annotations only, never run."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skipped.update(id(inner) for inner in ast.walk(node))
    return skipped


def import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports, at module level or inside functions (lazy imports count)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skipped = _type_checking_nodes(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets.update(resolve(a.name) for a in node.names if a.name.startswith("mimi_cli"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                if base.startswith("mimi_cli"):
                    targets.update(resolve(f"{base}.{a.name}") if f"{base}.{a.name}" in modules else resolve(base)
                                   for a in node.names)
        graph[name] = {t for t in targets if t and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
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


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_layers_only_look_down():
    """core knows no codec, weights/ no model, models/ no CLI or engine; the CLI talks to the library."""
    graph = import_graph()
    rules = {"mimi_cli.core": ("mimi_cli.models", "mimi_cli.weights", "mimi_cli.pipeline", "mimi_cli.batch",
                               "mimi_cli.cli", "mimi_cli.coreml"),
             "mimi_cli.weights": ("mimi_cli.models", "mimi_cli.pipeline", "mimi_cli.batch", "mimi_cli.cli",
                                  "mimi_cli.coreml"),
             "mimi_cli.models": ("mimi_cli.pipeline", "mimi_cli.batch", "mimi_cli.ray_engine", "mimi_cli.cli"),
             "mimi_cli.coreml": ("mimi_cli.models", "mimi_cli.pipeline", "mimi_cli.batch", "mimi_cli.cli")}

    def within(module: str, package: str) -> bool:  # mimi_cli.coreml is not inside mimi_cli.core
        return module == package or module.startswith(package + ".")

    wrong = [(module, target) for module, targets in graph.items() for package, banned in rules.items()
             if within(module, package) for target in targets if any(within(target, b) for b in banned)]
    assert wrong == []


def test_importing_the_cli_loads_no_numpy():
    """`mimi --help` and the option defaults need no NumPy (start-up time); the work imports it when needed."""
    code = "import sys, mimi_cli.cli; print(sorted(m for m in ('numpy', 'scipy', 'soundfile') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
