"""Loss graphs: a loss as an expression tree of guarded primitive operators (pure PyTorch).

A graph is a tree of :class:`Node`: an operator with its operands, a named input (``x``, ``y``,
...) or a non-negative numeric constant. Its text form is the one way graphs are written in
configs, journals and reports::

    neg(add(mul(y,log(x)),mul(sub(1,y),log(sub(1,x)))))

:func:`parse` reads it back (``parse(str(node)) == node`` for every graph), :func:`evaluate`
computes it as a plain differentiable torch function of its inputs, :func:`canonical` and
:func:`structural_hash` identify graphs that are equal up to operand order and a few exact
identities.

**Values and shapes.** Every input is a 2-D tensor ``[N, C]`` (``N`` rows: RoIs or positives;
``C`` columns: classes, box coordinates or 1); constants are ``[1, 1]``. Element-wise operators
broadcast; the reductions keep two dimensions: ``mean_c`` averages the columns (``[N, 1]``) and
``mean_all`` every entry (``[1, 1]``).

**Guarded numerics** (as AutoLoss-Zero guards its primitives, so that no operator itself produces
NaN or an infinity from finite inputs), with ``eps = EPS`` and ``sign(0) = +1``:

* ``log(a) = log(|a| + eps)``;
* ``div(a, b) = a / (sign(b) max(|b|, eps))``, ``recip(a) = 1 / (sign(a) max(|a|, eps))``;
* ``sqrt(a) = sqrt(max(|a|, eps))`` (finite gradient at 0);
* ``exp(a) = exp(min(a, EXP_MAX))``.

Compositions can still overflow (a product of many large values); the screening treats a
non-finite loss or gradient as an invalid candidate.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

__all__ = [
    "EPS",
    "EXP_MAX",
    "OPERATORS",
    "UNARY_OPERATORS",
    "BINARY_OPERATORS",
    "Operator",
    "Node",
    "GraphSyntaxError",
    "parse",
    "evaluate",
    "canonical",
    "structural_hash",
    "depth",
    "size",
    "input_names",
    "walk",
    "subtree",
    "replace_subtree",
]

#: Floor of the magnitude of a denominator, a log argument and a square-root argument.
EPS = 1e-12
#: ``exp`` saturates above this argument (``exp(20) ~ 4.9e8``).
EXP_MAX = 20.0


def _guard(a: torch.Tensor) -> torch.Tensor:
    """``sign(a) max(|a|, eps)`` with ``sign(0) = +1``: never 0, same sign as ``a``."""
    sign = torch.where(a < 0, -torch.ones_like(a), torch.ones_like(a))
    return sign * a.abs().clamp_min(EPS)


def _mean_all(a: torch.Tensor) -> torch.Tensor:
    return a.mean().reshape(1, 1)


@dataclass(frozen=True)
class Operator:
    """A primitive operator.

    Attributes:
        name: its name in the text form.
        arity: 1 or 2.
        commutative: operands may be swapped (binary only).
        function: the guarded torch implementation.
    """

    name: str
    arity: int
    commutative: bool
    function: Callable[..., torch.Tensor]


_OPERATOR_LIST = [
    Operator("add", 2, True, torch.add),
    Operator("sub", 2, False, torch.sub),
    Operator("mul", 2, True, torch.mul),
    Operator("div", 2, False, lambda a, b: a / _guard(b)),
    Operator("max", 2, True, torch.maximum),
    Operator("min", 2, True, torch.minimum),
    Operator("neg", 1, False, torch.neg),
    Operator("abs", 1, False, torch.abs),
    Operator("recip", 1, False, lambda a: 1.0 / _guard(a)),
    Operator("square", 1, False, lambda a: a * a),
    Operator("sqrt", 1, False, lambda a: a.abs().clamp_min(EPS).sqrt()),
    Operator("log", 1, False, lambda a: (a.abs() + EPS).log()),
    Operator("exp", 1, False, lambda a: a.clamp_max(EXP_MAX).exp()),
    Operator("tanh", 1, False, torch.tanh),
    Operator("mean_c", 1, False, lambda a: a.mean(dim=-1, keepdim=True)),
    Operator("mean_all", 1, False, _mean_all),
]
#: Operator name → :class:`Operator`.
OPERATORS: Dict[str, Operator] = {op.name: op for op in _OPERATOR_LIST}
#: Names of the unary / binary operators, in a fixed order (random choices index these).
UNARY_OPERATORS: Tuple[str, ...] = tuple(op.name for op in _OPERATOR_LIST if op.arity == 1)
BINARY_OPERATORS: Tuple[str, ...] = tuple(op.name for op in _OPERATOR_LIST if op.arity == 2)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _format_constant(value: float) -> str:
    """The text of a constant: an integer without a point, otherwise Python's shortest repr."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


@dataclass(frozen=True)
class Node:
    """A graph node: an operator applied to ``children``, an input, or a constant.

    Attributes:
        name: an operator name (:data:`OPERATORS`), an input name, or a constant's text
            (``"1"``, ``"0.5"``).
        children: the operands (empty for inputs and constants).
    """

    name: str
    children: Tuple["Node", ...] = ()

    @property
    def is_operator(self) -> bool:
        return bool(self.children)

    @property
    def is_constant(self) -> bool:
        return not self.children and not _NAME.fullmatch(self.name)

    @property
    def is_input(self) -> bool:
        return not self.children and bool(_NAME.fullmatch(self.name))

    @classmethod
    def constant(cls, value: float) -> "Node":
        """A constant node; ``value`` must be finite and >= 0 (write ``neg(c)`` otherwise)."""
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"a constant must be finite and >= 0, got {value!r}")
        return cls(_format_constant(float(value)))

    def __str__(self) -> str:
        if not self.children:
            return self.name
        return f"{self.name}({','.join(str(child) for child in self.children)})"


class GraphSyntaxError(ValueError):
    """A loss-graph text that cannot be parsed (one line: what, where, the text)."""


class _Parser:
    def __init__(self, text: str, inputs: Optional[Sequence[str]]) -> None:
        self.text = text
        self.inputs = None if inputs is None else tuple(inputs)
        self.pos = 0

    def fail(self, message: str, pos: Optional[int] = None) -> GraphSyntaxError:
        at = self.pos if pos is None else pos
        return GraphSyntaxError(f"{message} at position {at} in {self.text!r}")

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def expect(self, char: str) -> None:
        self.skip()
        if not self.text.startswith(char, self.pos):
            found = repr(self.text[self.pos]) if self.pos < len(self.text) else "the end"
            raise self.fail(f"expected {char!r}, found {found}")
        self.pos += 1

    def node(self) -> Node:
        self.skip()
        start = self.pos
        number = _NUMBER.match(self.text, self.pos)
        if number:
            self.pos = number.end()
            return Node.constant(float(number.group()))
        name = _NAME.match(self.text, self.pos)
        if not name:
            found = repr(self.text[self.pos]) if self.pos < len(self.text) else "the end"
            raise self.fail(f"expected an operator, an input or a number, found {found}")
        self.pos = name.end()
        word = name.group()
        self.skip()
        if self.text.startswith("(", self.pos):
            operator = OPERATORS.get(word)
            if operator is None:
                raise self.fail(
                    f"unknown operator {word!r} (known: {', '.join(OPERATORS)})", pos=start
                )
            self.pos += 1
            children = [self.node()]
            while True:
                self.skip()
                if self.text.startswith(",", self.pos):
                    self.pos += 1
                    children.append(self.node())
                    continue
                self.expect(")")
                break
            if len(children) != operator.arity:
                raise self.fail(
                    f"{word!r} takes {operator.arity} operand(s), got {len(children)}", pos=start
                )
            return Node(word, tuple(children))
        if word in OPERATORS:
            raise self.fail(f"operator {word!r} needs operands", pos=start)
        if self.inputs is not None and word not in self.inputs:
            raise self.fail(f"unknown input {word!r} (known: {', '.join(self.inputs)})", pos=start)
        return Node(word)


def parse(text: str, inputs: Optional[Sequence[str]] = None) -> Node:
    """Parse the text form of a graph.

    Args:
        text: e.g. ``"mul(neg(y),log(x))"``; whitespace is ignored; constants are non-negative
            decimal numbers.
        inputs: the allowed input names (None: any identifier).

    Returns:
        The graph; ``str()`` of it is the normalised text (no spaces, ``1.0`` → ``1``).

    Raises:
        GraphSyntaxError: one line saying what is wrong and where.
    """
    if not isinstance(text, str):
        raise GraphSyntaxError(f"a loss graph must be a string, got {type(text).__name__}")
    parser = _Parser(text, inputs)
    node = parser.node()
    parser.skip()
    if parser.pos != len(text):
        raise parser.fail(f"unexpected {text[parser.pos]!r} after a complete expression")
    return node


def evaluate(node: Node, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The graph's value: a differentiable torch function of ``inputs``.

    Args:
        node: the graph.
        inputs: input name → 2-D tensor ``[N, C]``, broadcastable against each other; the first
            one sets the dtype and device of constants.

    Returns:
        A 2-D tensor (``[N, C]``, ``[N, 1]`` or ``[1, 1]`` depending on the reductions).

    Raises:
        KeyError: naming an input the graph uses but ``inputs`` lacks.
    """
    reference = next(iter(inputs.values()))
    constants: Dict[str, torch.Tensor] = {}

    def value(n: Node) -> torch.Tensor:
        if n.children:
            return OPERATORS[n.name].function(*(value(child) for child in n.children))
        if n.is_constant:
            if n.name not in constants:
                constants[n.name] = torch.full(
                    (1, 1), float(n.name), dtype=reference.dtype, device=reference.device
                )
            return constants[n.name]
        if n.name not in inputs:
            raise KeyError(f"the graph uses input {n.name!r}, not given (given: {sorted(inputs)})")
        return inputs[n.name]

    return value(node)


# Exact identities (also under the guards) applied by canonical(): f(g(a)) -> replacement.
_ABSORBED_BY_ABS = ("abs", "square", "sqrt", "exp")
_IDEMPOTENT = ("abs", "mean_c", "mean_all")


def canonical(node: Node) -> Node:
    """A canonical form: equal canonical forms mean the same function.

    Bottom-up: operands of commutative operators sorted by their text; ``neg(neg(a)) → a``;
    ``abs(abs(a))``, ``abs(neg(a)) → abs(a)``; ``abs(square(a)) → square(a)`` (likewise
    ``sqrt``, ``exp``: non-negative already); ``mean_c(mean_c(a)) → mean_c(a)``; a ``mean_all``
    over or under a ``mean_c`` or ``mean_all`` → ``mean_all(a)``; ``max(a, a)``,
    ``min(a, a) → a``; a subtree without inputs → its value (``c`` or ``neg(c)``).
    Functions equal only through other algebra are left to the gradient-equivalence check.
    """
    if not node.children:
        return node
    children = tuple(canonical(child) for child in node.children)
    name = node.name
    if not any(n.is_input for child in children for _, n in walk(child)):
        folded = _fold_constants(Node(name, children))
        if folded is not None:
            return folded
    if OPERATORS[name].commutative:
        children = tuple(sorted(children, key=str))
        if name in ("max", "min") and children[0] == children[1]:
            return children[0]
    if len(children) == 1:
        inner = children[0]
        if name == "neg" and inner.name == "neg":
            return inner.children[0]
        if name == "abs" and inner.name == "neg":
            return canonical(Node("abs", inner.children))
        if name == "abs" and inner.name in _ABSORBED_BY_ABS:
            return inner
        if name in _IDEMPOTENT and inner.name == name:
            return inner
        if name == "mean_all" and inner.name == "mean_c":
            return Node("mean_all", inner.children)
        if name == "mean_c" and inner.name == "mean_all":
            return inner
    return Node(name, children)


def _fold_constants(node: Node) -> Optional[Node]:
    """The constant ``node`` evaluates to (float64), or None when it is not finite."""
    value = float(evaluate(node, {"_": torch.zeros((1, 1), dtype=torch.float64)}))
    if not math.isfinite(value):
        return None
    if value >= 0:
        return Node.constant(value)
    constant = Node.constant(-value)
    return Node("neg", (constant,))


def structural_hash(*nodes: Node) -> str:
    """A short hex digest of the canonical text of ``nodes`` (e.g. a candidate's branches)."""
    text = "|".join(str(canonical(node)) for node in nodes)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def depth(node: Node) -> int:
    """Operator levels: 0 for an input or constant, ``1 + max(children)`` for an operator."""
    return 1 + max(depth(child) for child in node.children) if node.children else 0


def size(node: Node) -> int:
    """Number of nodes."""
    return 1 + sum(size(child) for child in node.children)


def input_names(node: Node) -> List[str]:
    """The distinct inputs the graph uses, sorted."""
    return sorted({n.name for _, n in walk(node) if n.is_input})


Path = Tuple[int, ...]


def walk(node: Node, path: Path = ()) -> Iterator[Tuple[Path, Node]]:
    """Every ``(path, node)`` in pre-order; a path is the child indices from the root."""
    yield path, node
    for index, child in enumerate(node.children):
        yield from walk(child, path + (index,))


def subtree(node: Node, path: Path) -> Node:
    """The node at ``path``."""
    for index in path:
        node = node.children[index]
    return node


def replace_subtree(node: Node, path: Path, new: Node) -> Node:
    """A copy of ``node`` with the node at ``path`` replaced by ``new``."""
    if not path:
        return new
    index = path[0]
    children = list(node.children)
    children[index] = replace_subtree(children[index], path[1:], new)
    return Node(node.name, tuple(children))
