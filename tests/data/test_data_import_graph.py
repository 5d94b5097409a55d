"""The data plane's modules import one another without a circle: the factories (`open_store`,
`open_queue`) import the backends on demand, and the backends import only the interface modules
(`store_backend`, `queue_backend`), never the factory that imports them."""

from __future__ import annotations

import ast
from pathlib import Path

import lepton_infra.data

DATA = Path(lepton_infra.data.__file__).parent
PREFIX = "lepton_infra.data."


def _imports(path: Path) -> set[str]:
    """Every `lepton_infra.data.*` module `path` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PREFIX):
            found.add(node.module.removeprefix(PREFIX))
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix(PREFIX) for a in node.names if a.name.startswith(PREFIX))
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in `graph` as a path that ends where it starts, or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        for target in sorted(graph.get(module, ())):
            if found := visit(target, path + [module]):
                return found
        done.add(module)
        return None

    for module in sorted(graph):
        if found := visit(module, []):
            return found
    return None


def test_data_modules_import_each_other_without_a_circle() -> None:
    graph = {p.stem: _imports(p) for p in DATA.glob("*.py") if p.stem != "__init__"}
    assert {"store_local", "queue_local"} <= set(graph)  # the backends were found
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph) or [])}"


def test_the_cycle_finder_reports_a_circle() -> None:
    assert _cycle({"store": {"store_local"}, "store_local": {"store"}}) == ["store", "store_local", "store"]
