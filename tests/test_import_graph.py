"""No import cycles in paploss: the graph of module-level imports between paploss's modules is
acyclic (so every module can be imported first, and a package's layout shows its dependencies)."""

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "paploss"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.Module) -> List[ast.stmt]:
    """Import statements executed when the module is imported: at the top level, also inside
    ``if``/``try`` blocks there, but not under ``if TYPE_CHECKING`` nor inside functions."""
    found: List[ast.stmt] = []
    pending: List[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                pending += node.body + node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody
            for handler in node.handlers:
                pending += handler.body
        elif isinstance(node, (ast.With, ast.For, ast.While)):
            pending += node.body
    return found


def import_graph() -> Dict[str, Set[str]]:
    """paploss module → the paploss modules it imports at module level.

    ``from package import name`` counts as an import of ``package.name`` when that is a module,
    else of ``package`` (whose ``__init__`` provides the name).
    """
    paths = {_module_name(p): p for p in PACKAGE_ROOT.rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for module, path in paths.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        targets: Set[str] = set()
        for node in _module_level_imports(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = _resolve(module, is_package, node.module, node.level)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in paths else base)
        graph[module] = {t for t in targets if t in paths and t != module}
    return graph


def _resolve(module: str, is_package: bool, name: Optional[str], level: int) -> str:
    if level == 0:
        return name or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle of the graph as ``[a, b, ..., a]``, or None."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_the_imports() -> None:
    graph = import_graph()
    assert "paploss.search.controller" in graph and len(graph) > 50
    assert "paploss.search.settings" in graph["paploss.search.controller"]
    assert "paploss.modeling.head_loss" in graph["paploss.modeling"]  # relative, from a package
    assert "paploss.search.screening.batch" in graph["paploss.search.screening.screener"]
    # Imports under TYPE_CHECKING or inside functions do not count.
    assert "paploss.engine.hooks" not in graph["paploss.search.settings"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles_in_paploss() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
