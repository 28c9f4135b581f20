"""No import cycles in paploss, and its packages in layers.

**Cycles.** The graph of imports between paploss's modules is acyclic, both for the imports run
when a module is imported (so every module can be imported first) and for all of them, those
inside functions included (a function-level import is a dependency all the same; it only runs
later). Imports under ``if TYPE_CHECKING`` are not dependencies and do not count.

**Layers.** paploss's packages, from the bottom up (a module imports only modules of its own
package or of a lower layer, every import counted as above; packages of one layer do not import
each other)::

    utils                 helpers: registries, validation, file I/O, lazy exports
    heads                 the names of the PAP-loss heads (no torch, no Detectron2)
    losses                the losses, plain PyTorch (losses.graph: loss graphs), no Detectron2
    modeling | data       Detectron2 models and their head losses | datasets, mappers
    engine                training: setup, trainer, hooks, validation
    search                the loss search (spaces, proposers, screening, trials, ...)
    lossgraph             former home of the loss graphs, its names kept importable

so ``losses ← modeling ← engine ← search``, with ``data`` beside ``modeling``. The root
``paploss`` imports nothing.
"""

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "paploss"

#: paploss's packages (and top-level modules) from the bottom layer up (see the docstring).
LAYERS = [
    ("utils",),
    ("heads",),
    ("losses",),
    ("modeling", "data"),
    ("engine",),
    ("search",),
    ("lossgraph",),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module, function_level: bool) -> List[ast.stmt]:
    """Import statements of a module: those executed when the module is imported (at the top
    level, also inside ``if``/``try``/``with``/loops there), and with ``function_level`` also
    those inside functions and classes; never those under ``if TYPE_CHECKING``."""
    found: List[ast.stmt] = []
    pending: List[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            pending += node.orelse if _is_type_checking(node) else node.body + node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody
            for handler in node.handlers:
                pending += handler.body
        elif isinstance(node, (ast.With, ast.For, ast.While)):
            pending += node.body + getattr(node, "orelse", [])
        elif function_level and isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        ):
            pending += node.body
    return found


def import_graph(function_level: bool = True) -> Dict[str, Set[str]]:
    """paploss module → the paploss modules it imports (with ``function_level``, also inside
    functions and classes; else only at module level).

    ``from package import name`` counts as an import of ``package.name`` when that is a module,
    else of ``package`` (whose ``__init__`` provides the name).
    """
    paths = {_module_name(p): p for p in PACKAGE_ROOT.rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for module, path in paths.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        targets: Set[str] = set()
        for node in _imports(tree, function_level):
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


def package_of(module: str) -> str:
    """``paploss.search.spaces.pap`` → ``search``; ``paploss.heads`` → ``heads``; the root
    ``paploss`` → ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_violations(graph: Dict[str, Set[str]]) -> List[str]:
    """``"a -> b"`` for each import of a module of a higher layer, or of another package of the
    same layer (the root ``paploss`` imports nothing)."""
    rank = {package: i for i, layer in enumerate(LAYERS) for package in layer}
    found = []
    for module, targets in sorted(graph.items()):
        source = package_of(module)
        for target in sorted(targets):
            imported = package_of(target)
            if imported == source:
                continue
            if not source or rank[imported] >= rank[source]:
                found.append(f"{module} -> {target}")
    return found


def test_the_graph_sees_the_imports() -> None:
    graph = import_graph(function_level=False)
    assert "paploss.search.controller" in graph and len(graph) > 50
    assert "paploss.search.settings" in graph["paploss.search.controller"]
    assert "paploss.modeling.head_loss" in graph["paploss.modeling"]  # relative, from a package
    assert "paploss.search.screening.batch" in graph["paploss.search.screening.screener"]
    # Imports under TYPE_CHECKING or inside functions are not module-level imports ...
    assert "paploss.engine.hooks" not in graph["paploss.search.trials.proxy_config"]
    assert "paploss.search.journal" not in graph["paploss.search.proposers.base"]
    # ... those inside functions count with function_level; those under TYPE_CHECKING never.
    everything = import_graph()
    assert "paploss.engine.hooks" in everything["paploss.search.trials.proxy_config"]
    assert "paploss.search.journal" not in everything["paploss.search.proposers.base"]
    assert graph["paploss.search.settings"] <= everything["paploss.search.settings"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles_in_paploss() -> None:
    cycle = find_cycle(import_graph(function_level=False))
    assert cycle is None, "import cycle at module level: " + " -> ".join(cycle)


def test_no_import_cycles_in_paploss_counting_imports_in_functions() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle (imports in functions counted): " + " -> ".join(cycle)


def test_every_package_has_a_layer() -> None:
    packages = {package_of(module) for module in import_graph()} - {""}
    placed = {package for layer in LAYERS for package in layer}
    assert packages == placed, "place new packages in LAYERS (and the docstring)"


def test_the_layers_check_finds_upward_imports() -> None:
    assert layer_violations({"paploss.losses.pap": {"paploss.modeling.head_loss"}}) == [
        "paploss.losses.pap -> paploss.modeling.head_loss"
    ]
    assert layer_violations({"paploss.data.mapper": {"paploss.modeling"}}) != []  # same layer
    assert layer_violations({"paploss": {"paploss.utils"}}) != []
    assert layer_violations({"paploss.search.cli": {"paploss.engine", "paploss.search"}}) == []


def test_packages_import_only_lower_layers() -> None:
    violations = layer_violations(import_graph())
    assert not violations, "imports from a higher (or the same) layer:\n" + "\n".join(violations)
