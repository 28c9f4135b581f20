"""Random loss graphs and their mutations, within the limits of a :class:`GraphSpace`.

Everything random takes a ``random.Random``, so a caller that seeds it reproduces its graphs
exactly (the evolution seeds one per proposal).

Mutations (AutoLoss-Zero's):

* ``insert``: a random operator is put above a random node (a binary one gets a random input,
  constant or one-operator graph as its other operand, on a random side);
* ``delete``: a random operator node is replaced by one of its operands;
* ``replace``: a random node is replaced by another of its kind: an operator by another of the
  same arity, an input or constant by another input or constant.

A mutation is retried until its result is valid in the space (depth and size limits, reads the
predictions) and differs from the parent after :func:`~paploss.losses.graph.graph.canonical`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Tuple

from paploss.losses.graph.branches import Branch
from paploss.losses.graph.graph import (
    BINARY_OPERATORS,
    OPERATORS,
    UNARY_OPERATORS,
    Node,
    canonical,
    depth,
    input_names,
    replace_subtree,
    size,
    subtree,
    walk,
)
from paploss.utils.validation import is_int, is_number

__all__ = ["GraphSpace", "MUTATIONS", "random_graph", "mutate"]

#: The mutation kinds, in the order they are drawn from.
MUTATIONS = ("insert", "delete", "replace")

# Attempts of a mutation (random_graph: of a draw) before giving up.
_ATTEMPTS = 50


@dataclass(frozen=True)
class GraphSpace:
    """The graphs one branch's search may produce.

    Attributes:
        inputs: input names random graphs draw from.
        predictions: inputs that depend on the predictions; a valid graph uses one.
        unary: unary operators drawn from.
        binary: binary operators drawn from.
        constants: constants drawn from (their text).
        constant_probability: chance that a drawn leaf is a constant rather than an input.
        init_depth: ``(min, max)`` operator depth of random initial graphs.
        max_depth: largest operator depth of any graph (mutations included).
        max_nodes: largest number of nodes.
    """

    inputs: Tuple[str, ...]
    predictions: Tuple[str, ...]
    unary: Tuple[str, ...] = UNARY_OPERATORS
    binary: Tuple[str, ...] = BINARY_OPERATORS
    constants: Tuple[str, ...] = ("1",)
    constant_probability: float = 0.1
    init_depth: Tuple[int, int] = (1, 3)
    max_depth: int = 6
    max_nodes: int = 16

    @classmethod
    def for_branch(cls, branch: Branch, **settings: Any) -> "GraphSpace":
        """The space of ``branch`` with its default search inputs, updated by ``settings``."""
        space = cls(inputs=branch.search_inputs, predictions=branch.predictions)
        space = replace(
            space, **{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
        )
        space.validate()
        return space

    def validate(self, prefix: str = "graph space") -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        for name in ("unary", "binary"):
            unknown = [op for op in getattr(self, name) if op not in OPERATORS]
            if unknown:
                raise ValueError(f"{prefix}.{name}: unknown operator(s) {unknown}")
            arity = 1 if name == "unary" else 2
            wrong = [op for op in getattr(self, name) if OPERATORS[op].arity != arity]
            if wrong:
                raise ValueError(f"{prefix}.{name}: {wrong} do not take {arity} operand(s)")
        if not self.unary and not self.binary:
            raise ValueError(f"{prefix}: no operators")
        if not self.inputs or not set(self.inputs) & set(self.predictions):
            raise ValueError(f"{prefix}.inputs must include one of {list(self.predictions)}")
        for constant in self.constants:
            if not (is_number(_as_float(constant)) and _as_float(constant) >= 0):
                raise ValueError(f"{prefix}.constants: {constant!r} is not a number >= 0")
        if not (is_number(self.constant_probability) and 0 <= self.constant_probability <= 1):
            raise ValueError(f"{prefix}.constant_probability must lie in [0, 1]")
        low, high = self.init_depth
        if not (is_int(low, 0) and is_int(high, low) and high <= self.max_depth):
            raise ValueError(
                f"{prefix}.init_depth must be [min, max] with 0 <= min <= max <= max_depth"
            )
        if not is_int(self.max_depth, 1) or not is_int(self.max_nodes, 1):
            raise ValueError(f"{prefix}.max_depth and max_nodes must be integers >= 1")

    def check(self, node: Node) -> Optional[str]:
        """Why ``node`` is not a valid graph of the space, or None."""
        if depth(node) > self.max_depth:
            return f"depth {depth(node)} > {self.max_depth}"
        if size(node) > self.max_nodes:
            return f"{size(node)} nodes > {self.max_nodes}"
        if not set(input_names(node)) & set(self.predictions):
            return "does not read the predictions"
        return None

    def is_valid(self, node: Node) -> bool:
        return self.check(node) is None

    def to_dict(self) -> Dict[str, Any]:
        return {
            "inputs": list(self.inputs),
            "predictions": list(self.predictions),
            "unary": list(self.unary),
            "binary": list(self.binary),
            "constants": list(self.constants),
            "constant_probability": self.constant_probability,
            "init_depth": list(self.init_depth),
            "max_depth": self.max_depth,
            "max_nodes": self.max_nodes,
        }


def _as_float(text: str) -> Any:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _leaf(rng: random.Random, space: GraphSpace) -> Node:
    if space.constants and rng.random() < space.constant_probability:
        return Node(rng.choice(space.constants))
    return Node(rng.choice(space.inputs))


def _operator(rng: random.Random, space: GraphSpace) -> str:
    return rng.choice(space.unary + space.binary)


def _grow(rng: random.Random, space: GraphSpace, levels: int, forced: int) -> Node:
    """A graph of at most ``levels`` operator levels, of at least ``forced`` on its first path."""
    if levels == 0 or (forced <= 0 and rng.random() < 0.3):
        return _leaf(rng, space)
    name = _operator(rng, space)
    children = [_grow(rng, space, levels - 1, forced - 1)]
    if OPERATORS[name].arity == 2:
        other = _grow(rng, space, levels - 1, 0)
        children = [other, children[0]] if rng.random() < 0.5 else [children[0], other]
    return Node(name, tuple(children))


def _with_prediction(rng: random.Random, space: GraphSpace, node: Node) -> Node:
    """``node``, or when it reads no prediction, with a random leaf replaced by one."""
    if set(input_names(node)) & set(space.predictions):
        return node
    predictions = [name for name in space.inputs if name in space.predictions]
    leaves = [path for path, n in walk(node) if not n.children]
    return replace_subtree(node, rng.choice(leaves), Node(rng.choice(predictions)))


def random_graph(rng: random.Random, space: GraphSpace) -> Node:
    """A random valid graph of the space, of an operator depth drawn from ``space.init_depth``.

    The first ``min`` levels are operators on one path, deeper levels stop at a leaf with
    probability 0.3; a graph reading no prediction gets one at a random leaf.
    """
    low, high = space.init_depth
    node = Node(space.inputs[0])
    for _ in range(_ATTEMPTS):
        levels = rng.randint(low, high)
        node = _with_prediction(rng, space, _grow(rng, space, levels, levels if low else 0))
        if space.is_valid(node):
            return node
    return _with_prediction(rng, space, _leaf(rng, space))


def _insert(rng: random.Random, space: GraphSpace, node: Node) -> Node:
    paths = [path for path, _ in walk(node)]
    path = rng.choice(paths)
    target = subtree(node, path)
    name = _operator(rng, space)
    if OPERATORS[name].arity == 1:
        new = Node(name, (target,))
    else:
        other = _grow(rng, space, 1, 0)
        new = Node(name, (target, other) if rng.random() < 0.5 else (other, target))
    return replace_subtree(node, path, new)


def _delete(rng: random.Random, space: GraphSpace, node: Node) -> Node:
    paths = [path for path, n in walk(node) if n.children]
    path = rng.choice(paths)
    return replace_subtree(node, path, rng.choice(subtree(node, path).children))


def _replace(rng: random.Random, space: GraphSpace, node: Node) -> Node:
    path, target = rng.choice(list(walk(node)))
    if target.children:
        pool = space.unary if len(target.children) == 1 else space.binary
        choices = [name for name in pool if name != target.name]
        if not choices:
            return node
        return replace_subtree(node, path, Node(rng.choice(choices), target.children))
    choices = [name for name in space.inputs + space.constants if name != target.name]
    return replace_subtree(node, path, Node(rng.choice(choices)))


_MUTATORS = {"insert": _insert, "delete": _delete, "replace": _replace}


def mutate(
    rng: random.Random, node: Node, space: GraphSpace, kinds: Tuple[str, ...] = MUTATIONS
) -> Optional[Tuple[Node, str]]:
    """A valid mutant of ``node`` that differs from it after canonicalisation.

    Args:
        rng: the random source.
        node: the parent graph.
        space: the limits the mutant must respect.
        kinds: mutation kinds to draw from (uniformly; ``delete`` only when ``node`` has an
            operator).

    Returns:
        ``(mutant, kind)``, or None when no attempt gave a valid, different graph.
    """
    applicable: List[str] = [k for k in kinds if k != "delete" or node.children]
    if not applicable:
        return None
    parent = canonical(node)
    for _ in range(_ATTEMPTS):
        kind = rng.choice(applicable)
        mutant = _MUTATORS[kind](rng, space, node)
        if space.is_valid(mutant) and canonical(mutant) != parent:
            return mutant, kind
    return None
