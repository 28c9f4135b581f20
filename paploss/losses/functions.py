"""The monotone piecewise-linear functions of the PAP loss and their search parametrisation.

Each of the five functions H1, H2, I1, I2, I3 of a head maps [0, 1] to [0, 1], is non-decreasing,
has f(0) = 0 and f(1) = 1, and is piecewise linear through six knots: (0, 0), four free interior
knots, (1, 1). Outside [0, 1] a function is constant (0 below, 1 above), which makes
``f(clamp(x, 0, 1)) == f(x)``.

The search parametrises the interior knots of one function by ``theta [8]`` in [0, 1], laid out as
``(t1x, t1y, t2x, t2y, t3x, t3y, t4x, t4y)``, turned into sorted coordinates by stick-breaking
``p_1 = t_1``, ``p_m = p_{m-1} + t_m (1 - p_{m-1})`` (per coordinate). The x coordinates are then
mapped affinely to ``x_m = m * min_spacing + (1 - 5 * min_spacing) * p_m`` so consecutive knots
(including the fixed ends) are at least ``min_spacing`` apart: no zero-width segment, no infinite
slope. The map keeps the identity: ``theta = (.2, .2, .25, .25, 1/3, 1/3, .5, .5)`` gives knots
.2/.4/.6/.8 on the diagonal for any spacing.
"""

from typing import Dict, Iterator, List, Mapping, Sequence, Tuple, Union

import torch
from torch import nn

from .pairwise import piecewise_linear
from .published import published_knots

__all__ = [
    "FUNCTION_NAMES",
    "IDENTITY_THETA",
    "MIN_KNOT_SPACING",
    "NUM_INTERIOR_KNOTS",
    "theta_to_knots",
    "knots_to_theta",
    "PiecewiseLinear",
    "PAPFunctions",
]

#: The five functions of one head, in the flat order of the published code (rows of ``theta``).
FUNCTION_NAMES: Tuple[str, ...] = ("H2", "I2", "I3", "I1", "H1")
#: Interior knots per function.
NUM_INTERIOR_KNOTS = 4
#: Default minimum x distance between consecutive knots (the published knots keep >= 1e-3).
MIN_KNOT_SPACING = 1e-4
#: ``theta [8]`` of the identity function.
IDENTITY_THETA: Tuple[float, ...] = (0.2, 0.2, 0.25, 0.25, 1 / 3, 1 / 3, 0.5, 0.5)

KnotsLike = Union[torch.Tensor, Sequence[Sequence[float]]]


def _as_float_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            value = value.to(torch.float64)
        return value
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be convertible to a float tensor: {e}") from None


def _check_min_spacing(min_spacing: float, num_knots: int) -> None:
    if not 0.0 <= min_spacing < 1.0 / (num_knots + 1):
        raise ValueError(
            f"min_spacing must lie in [0, 1/{num_knots + 1}) for {num_knots} interior knots, "
            f"got {min_spacing}"
        )


def theta_to_knots(theta, min_spacing: float = MIN_KNOT_SPACING) -> torch.Tensor:
    """Turn search parameters into sorted interior knots by stick-breaking.

    Differentiable; works on any batch shape.

    Args:
        theta: ``[..., 8]`` in [0, 1], layout ``(t1x, t1y, ..., t4x, t4y)``.
        min_spacing: minimum x distance between consecutive knots, the ends (0, 0) and (1, 1)
            included.

    Returns:
        ``[..., 4, 2]`` interior knots ``(x, y)``: x strictly increasing in
        ``[min_spacing, 1 - min_spacing]``, y non-decreasing in [0, 1].

    Raises:
        ValueError: if ``theta`` has the wrong shape or values outside [0, 1].
    """
    theta = _as_float_tensor(theta, "theta")
    if theta.dim() == 0 or theta.shape[-1] != 2 * NUM_INTERIOR_KNOTS:
        raise ValueError(
            f"theta must have shape [..., {2 * NUM_INTERIOR_KNOTS}], got {list(theta.shape)}"
        )
    if theta.numel() and not bool(((theta >= 0) & (theta <= 1)).all()):
        raise ValueError("theta must lie in [0, 1] (and not be NaN)")
    _check_min_spacing(min_spacing, NUM_INTERIOR_KNOTS)
    pairs = theta.reshape(*theta.shape[:-1], NUM_INTERIOR_KNOTS, 2)
    # p_m = p_{m-1} + t_m (1 - p_{m-1})  <=>  1 - p_m = prod_{l <= m} (1 - t_l).
    sticks = 1 - torch.cumprod(1 - pairs, dim=-2)
    steps = torch.arange(1, NUM_INTERIOR_KNOTS + 1, dtype=theta.dtype, device=theta.device)
    x = steps * min_spacing + (1 - (NUM_INTERIOR_KNOTS + 1) * min_spacing) * sticks[..., 0]
    return torch.stack([x, sticks[..., 1]], dim=-1)


def knots_to_theta(knots: KnotsLike, min_spacing: float = MIN_KNOT_SPACING) -> torch.Tensor:
    """Exact inverse of :func:`theta_to_knots`.

    Where a stick is used up (a coordinate already at 1) the later ``t`` are free; they are
    returned as 0.

    Args:
        knots: ``[..., 4, 2]`` interior knots.
        min_spacing: the spacing used by :func:`theta_to_knots`.

    Returns:
        ``[..., 8]`` theta in [0, 1].

    Raises:
        ValueError: if ``knots`` has the wrong shape or cannot come from :func:`theta_to_knots`
            (coordinates outside [0, 1], decreasing, or x closer than ``min_spacing``).
    """
    knots = _as_float_tensor(knots, "knots")
    if knots.dim() < 2 or tuple(knots.shape[-2:]) != (NUM_INTERIOR_KNOTS, 2):
        raise ValueError(
            f"knots must have shape [..., {NUM_INTERIOR_KNOTS}, 2], got {list(knots.shape)}"
        )
    _check_min_spacing(min_spacing, NUM_INTERIOR_KNOTS)
    steps = torch.arange(1, NUM_INTERIOR_KNOTS + 1, dtype=knots.dtype, device=knots.device)
    sticks = torch.stack(
        [
            (knots[..., 0] - steps * min_spacing) / (1 - (NUM_INTERIOR_KNOTS + 1) * min_spacing),
            knots[..., 1],
        ],
        dim=-1,
    )
    tol = 64 * torch.finfo(knots.dtype).eps
    previous = torch.cat([torch.zeros_like(sticks[..., :1, :]), sticks[..., :-1, :]], dim=-2)
    valid = (sticks >= -tol) & (sticks <= 1 + tol) & (sticks - previous >= -tol)
    if knots.numel() and not bool(valid.all()):
        raise ValueError(
            "knots must be in [0, 1], non-decreasing, with x at least "
            f"min_spacing={min_spacing} apart (ends included), got {knots.tolist()}"
        )
    sticks = sticks.clamp(0, 1)
    previous = previous.clamp(0, 1)
    remaining = 1 - previous
    used_up = remaining <= tol
    theta = torch.where(
        used_up, torch.zeros_like(sticks), (sticks - previous) / remaining.clamp_min(tol)
    )
    return theta.clamp(0, 1).reshape(*knots.shape[:-2], 2 * NUM_INTERIOR_KNOTS)


def _validate_interior_knots(knots: KnotsLike, name: str) -> torch.Tensor:
    """Check ``[K, 2]`` interior knots of a monotone [0,1] -> [0,1] function; return float64."""
    try:
        knots = torch.as_tensor(
            knots.detach().cpu() if isinstance(knots, torch.Tensor) else knots,
            dtype=torch.float64,
        )
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name}: knots must be a [K, 2] list of (x, y) pairs: {e}") from None
    if knots.dim() != 2 or knots.shape[1] != 2:
        raise ValueError(f"{name}: knots must have shape [K, 2], got {list(knots.shape)}")
    if not bool(torch.isfinite(knots).all()):
        raise ValueError(f"{name}: knots must be finite, got {knots.tolist()}")
    if bool((knots < 0).any()) or bool((knots > 1).any()):
        raise ValueError(f"{name}: knot coordinates must lie in [0, 1], got {knots.tolist()}")
    xs = torch.cat([knots.new_zeros(1), knots[:, 0], knots.new_ones(1)])
    ys = torch.cat([knots.new_zeros(1), knots[:, 1], knots.new_ones(1)])
    if not bool((xs[1:] > xs[:-1]).all()):
        raise ValueError(
            f"{name}: knot x must be strictly increasing within (0, 1), got {knots[:, 0].tolist()}"
        )
    if not bool((ys[1:] >= ys[:-1]).all()):
        raise ValueError(f"{name}: knot y must be non-decreasing, got {knots[:, 1].tolist()}")
    return knots


class PiecewiseLinear(nn.Module):
    """A monotone map [0, 1] -> [0, 1] through (0, 0), the interior knots and (1, 1).

    Callable on a tensor of any shape and dtype; values outside [0, 1] map to 0 or 1. Autograd
    gives the slope of the segment at the input (the right slope exactly at a knot, 0 at and
    beyond x = 1). The knots are float64 buffers, so they follow ``.to(device)`` and are cast to
    the input dtype at evaluation.

    Attributes:
        knots_x: ``[K + 2]`` buffer, 0, interior x, 1.
        knots_y: ``[K + 2]`` buffer, 0, interior y, 1.
    """

    def __init__(self, interior_knots: KnotsLike, *, name: str = "function"):
        """
        Args:
            interior_knots: ``[K, 2]`` ``(x, y)`` pairs, x strictly increasing in (0, 1), y
                non-decreasing in [0, 1].
            name: used in error messages.

        Raises:
            ValueError: naming ``name`` if the knots are invalid.
        """
        super().__init__()
        knots = _validate_interior_knots(interior_knots, name)
        zero, one = knots.new_zeros(1), knots.new_ones(1)
        # Not persistent: a loss comes from its config, never from a model checkpoint.
        self.register_buffer("knots_x", torch.cat([zero, knots[:, 0], one]), persistent=False)
        self.register_buffer("knots_y", torch.cat([zero, knots[:, 1], one]), persistent=False)

    @classmethod
    def identity(cls, num_interior_knots: int = NUM_INTERIOR_KNOTS) -> "PiecewiseLinear":
        """The identity on [0, 1] with evenly spaced interior knots."""
        grid = [(k + 1) / (num_interior_knots + 1) for k in range(num_interior_knots)]
        return cls([[g, g] for g in grid], name="identity")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate on ``x`` (any shape); returns the same shape and dtype."""
        return piecewise_linear(x, self.knots_x, self.knots_y)

    @property
    def interior_knots(self) -> torch.Tensor:
        """``[K, 2]`` the interior ``(x, y)`` knots."""
        return torch.stack([self.knots_x[1:-1], self.knots_y[1:-1]], dim=1)

    def gap_knots(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Knots of ``d -> f(d / 2 + 1/2)``, the function of a logit gap ``d = s_j - s_i``.

        Returns:
            ``(knots_x, knots_y)``, each ``[K + 2]``; ``knots_x = 2 x - 1`` spans [-1, 1].
        """
        return 2 * self.knots_x - 1, self.knots_y

    def to_list(self) -> List[List[float]]:
        """Interior knots as plain python floats ``[[x, y], ...]``."""
        return [[float(x), float(y)] for x, y in self.interior_knots.tolist()]

    def extra_repr(self) -> str:
        return "knots=" + ", ".join(f"({x:.4g}, {y:.4g})" for x, y in self.to_list())


class PAPFunctions(nn.Module):
    """The five monotone functions H1, H2, I1, I2, I3 of one head's PAP loss.

    Access by name, ``functions["H1"]`` or ``functions.H1``. Build with :meth:`identity`,
    :meth:`from_knots`, :meth:`from_theta` or :meth:`published`; convert back with
    :meth:`to_dict` (configs, reports) or :meth:`to_theta` (search).
    """

    def __init__(self, functions: Mapping[str, PiecewiseLinear]):
        """
        Args:
            functions: a :class:`PiecewiseLinear` for each name in :data:`FUNCTION_NAMES`.
        """
        super().__init__()
        if set(functions) != set(FUNCTION_NAMES):
            raise ValueError(
                f"functions must have exactly the keys {sorted(FUNCTION_NAMES)}, "
                f"got {sorted(functions)}"
            )
        for name in FUNCTION_NAMES:
            function = functions[name]
            if not isinstance(function, PiecewiseLinear):
                raise ValueError(
                    f"{name}: expected a PiecewiseLinear, got {type(function).__name__}"
                )
            self.add_module(name, function)

    @classmethod
    def identity(cls) -> "PAPFunctions":
        """All five functions the identity (knots .2/.4/.6/.8 on the diagonal)."""
        return cls({name: PiecewiseLinear.identity() for name in FUNCTION_NAMES})

    @classmethod
    def from_knots(cls, knots: Mapping[str, KnotsLike]) -> "PAPFunctions":
        """Build from ``{"H1": [[x, y]] * 4, "H2": ..., "I1": ..., "I2": ..., "I3": ...}``.

        Raises:
            ValueError: if a name is missing or unknown, or (naming the function) if a function
                does not have 4 interior knots in [0, 1] with x strictly increasing and y
                non-decreasing.
        """
        if not isinstance(knots, Mapping) or set(knots) != set(FUNCTION_NAMES):
            got = sorted(knots) if isinstance(knots, Mapping) else type(knots).__name__
            raise ValueError(f"knots must map exactly {sorted(FUNCTION_NAMES)} to knots, got {got}")
        functions = {}
        for name in FUNCTION_NAMES:
            function = PiecewiseLinear(knots[name], name=name)
            num = function.knots_x.numel() - 2
            if num != NUM_INTERIOR_KNOTS:
                raise ValueError(f"{name}: expected {NUM_INTERIOR_KNOTS} interior knots, got {num}")
            functions[name] = function
        return cls(functions)

    @classmethod
    def from_theta(cls, theta, min_spacing: float = MIN_KNOT_SPACING) -> "PAPFunctions":
        """Build from search parameters ``theta [5, 8]``, rows in :data:`FUNCTION_NAMES` order.

        Raises:
            ValueError: if ``theta`` is not ``[5, 8]`` or has values outside [0, 1].
        """
        theta = _as_float_tensor(theta, "theta")
        expected = (len(FUNCTION_NAMES), 2 * NUM_INTERIOR_KNOTS)
        if tuple(theta.shape) != expected:
            raise ValueError(f"theta must have shape {list(expected)}, got {list(theta.shape)}")
        knots = theta_to_knots(theta.detach(), min_spacing)
        return cls.from_knots({name: knots[row] for row, name in enumerate(FUNCTION_NAMES)})

    @classmethod
    def published(cls, name: str) -> "PAPFunctions":
        """The published searched functions of a head.

        Args:
            name: ``retinanet``, ``faster_rcnn_rpn`` or ``faster_rcnn_roi``.
        """
        return cls.from_knots(published_knots(name))

    def __getitem__(self, name: str) -> PiecewiseLinear:
        if name not in FUNCTION_NAMES:
            raise KeyError(f"unknown function {name!r}; expected one of {list(FUNCTION_NAMES)}")
        return getattr(self, name)

    def keys(self) -> Tuple[str, ...]:
        return FUNCTION_NAMES

    def items(self) -> Iterator[Tuple[str, PiecewiseLinear]]:
        return ((name, self[name]) for name in FUNCTION_NAMES)

    def to_dict(self) -> Dict[str, List[List[float]]]:
        """Interior knots as plain python floats ``{name: [[x, y]] * 4}``."""
        return {name: function.to_list() for name, function in self.items()}

    def to_theta(self, min_spacing: float = MIN_KNOT_SPACING) -> torch.Tensor:
        """Search parameters ``[5, 8]`` (float64, rows in :data:`FUNCTION_NAMES` order).

        Raises:
            ValueError: if some knots are closer than ``min_spacing`` (not reachable by theta).
        """
        knots = torch.stack([self[name].interior_knots for name in FUNCTION_NAMES])
        return knots_to_theta(knots.detach().to(torch.float64), min_spacing)
