"""Search space of the PAP-loss parameters: flat θ vectors ↔ ``MODEL.PAPLOSS`` config values.

A head (``RETINANET``, ``RPN``, ``ROI_HEADS``, or a head a project registered with
:func:`paploss.heads.register_pap_heads`, e.g. Deformable DETR's ``DETR``) has five monotone
functions, each described by 8 θ values in [0, 1] that stick-breaking turns into four interior
knots (:func:`paploss.losses.theta_to_knots`), and one θ for the gradient scale of its box branch,
``λ = 10^(2θ - 1)`` (:func:`paploss.losses.lambda_from_theta`). The flat θ of a search space
concatenates, head after head in the order of :func:`paploss.heads.pap_heads`, the functions
in the order of :data:`paploss.losses.FUNCTION_NAMES` and then λ: 41 dimensions for one head, 82
for the RPN and the ROI heads of a Faster R-CNN. Dimensions are named
``<HEAD>.<FUNCTION>.theta<m><x|y>`` and ``<HEAD>.lambda``, e.g. ``RETINANET.H2.theta1x`` or
``RPN.lambda``.

Parameter *groups* are ``<HEAD>.<FUNCTION>`` (8 dimensions) and ``<HEAD>.lambda`` (1 dimension).
A group can be fixed: it is then left out of θ and its value (interior knots, or λ) is written into
the config overrides as given.

Config keys (per head): ``MODEL.PAPLOSS.<HEAD>.FUNCTIONS.<FUNCTION>`` holds the four interior knots
as ``[[x, y], ...]`` and ``MODEL.PAPLOSS.<HEAD>.GRAD_SCALE`` holds λ.

The search space of loss graphs (the ``evolution`` and ``random`` methods) is
:class:`paploss.search.spaces.GraphLossSpace`; :func:`paploss.search.spaces.space_from_dict`
rebuilds either from the description a journal stores.
"""

from __future__ import annotations

import ast
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from paploss.heads import (
    BUILT_IN_ARCHITECTURES,
    architecture_heads,
    pap_heads,
    registered_architectures,
)
from paploss.losses import (
    FUNCTION_NAMES,
    IDENTITY_THETA,
    MIN_KNOT_SPACING,
    knots_to_theta,
    lambda_from_theta,
    published_grad_scale,
    published_knots,
    theta_from_lambda,
    theta_to_knots,
)

__all__ = [
    "CONFIG_PREFIX",
    "SearchSpace",
    "heads_from_config",
    "round_overrides",
]

#: Config subtree holding the PAP-loss settings.
CONFIG_PREFIX = "MODEL.PAPLOSS"

_PARAMS_PER_FUNCTION = 8
_LAMBDA = "lambda"
_IDENTITY_LAMBDA_THETA = 0.5
_MISSING = object()
_MAX_DIGITS = 12

#: The published parameter set (:mod:`paploss.losses.published`) of each built-in head.
PUBLISHED_SETS = {
    "RETINANET": "retinanet",
    "RPN": "faster_rcnn_rpn",
    "ROI_HEADS": "faster_rcnn_roi",
}


def _function_key(head: str, function: str) -> str:
    return f"{CONFIG_PREFIX}.{head}.FUNCTIONS.{function}"


def _lambda_key(head: str) -> str:
    return f"{CONFIG_PREFIX}.{head}.GRAD_SCALE"


def _config_get(cfg: Any, dotted_key: str, default: Any = _MISSING) -> Any:
    """Read ``a.b.c`` from a Detectron2 ``CfgNode``, a nested dict or an attribute tree."""
    node = cfg
    for part in dotted_key.split("."):
        if isinstance(node, Mapping):
            node = node.get(part, _MISSING)
        else:
            node = getattr(node, part, _MISSING)
        if node is _MISSING:
            if default is _MISSING:
                raise ValueError(f"config has no key {dotted_key}")
            return default
    return node


def heads_from_config(cfg: Any) -> Tuple[str, ...]:
    """The PAP-loss heads of the model a config describes.

    ``MODEL.META_ARCHITECTURE == "PAPRetinaNet"`` gives ``("RETINANET",)``; ``"GeneralizedRCNN"``
    gives ``"RPN"`` when ``MODEL.PROPOSAL_GENERATOR.NAME == "PAPRPN"`` and ``"ROI_HEADS"`` when
    ``MODEL.ROI_HEADS.NAME == "PAPROIHeads"``; a meta-architecture a project registered
    (:func:`paploss.heads.register_pap_heads`, e.g. ``"PAPDeformableDETR"`` → ``("DETR",)``)
    gives its registered heads.

    Args:
        cfg: a Detectron2 ``CfgNode`` or a nested dict with the same keys.

    Raises:
        ValueError: if the model has no PAP-loss head.
    """
    architecture = _config_get(cfg, "MODEL.META_ARCHITECTURE")
    heads: List[str] = []
    registered = architecture_heads(architecture)
    if registered is not None:
        heads.extend(registered)
    elif architecture == "PAPRetinaNet":
        heads.append("RETINANET")
    elif architecture == "GeneralizedRCNN":
        if _config_get(cfg, "MODEL.PROPOSAL_GENERATOR.NAME", None) == "PAPRPN":
            heads.append("RPN")
        if _config_get(cfg, "MODEL.ROI_HEADS.NAME", None) == "PAPROIHeads":
            heads.append("ROI_HEADS")
    if not heads:
        projects = ", ".join(registered_architectures()) or "none so far"
        raise ValueError(
            f"the config's model has no PAP-loss head (MODEL.META_ARCHITECTURE={architecture!r}); "
            f"expected {' or '.join(BUILT_IN_ARCHITECTURES)} (with MODEL.PROPOSAL_GENERATOR.NAME="
            "'PAPRPN' and/or MODEL.ROI_HEADS.NAME='PAPROIHeads'), or a meta-architecture a project "
            f"registered on import (registered: {projects}; search setting model.imports)"
        )
    return tuple(heads)


class SearchSpace:
    """Named θ dimensions of the PAP-loss parameters of some heads, and their config values.

    Example::

        space = SearchSpace.from_config(cfg)              # e.g. 41 dimensions for PAPRetinaNet
        theta = space.identity_theta()
        cfg.merge_from_list(space.to_opts_list(theta))

    Args:
        heads: heads to search, a subset of ``known_heads`` (reordered to that order).
        fixed: optional values of groups kept out of the search: ``"<HEAD>.<FUNCTION>"`` → four
            interior knots ``[[x, y], ...]``, or ``"<HEAD>.lambda"`` → λ in [0.1, 10].
        known_heads: the valid heads in search-space order; default :func:`paploss.heads.
            pap_heads` (paploss's heads and those registered by the projects imported so far).

    Raises:
        ValueError: for an unknown or repeated head, an unknown fixed group, invalid fixed values,
            or when every group is fixed.
    """

    #: The kind of space (:func:`~paploss.search.spaces.space_from_dict`; a stored description
    #: without ``kind`` is of this one).
    KIND = "pap"
    #: What a candidate of the space is, in words (exported configs say so).
    WHAT = "PAP-loss parameters"

    def __init__(
        self,
        heads: Sequence[str],
        fixed: Optional[Mapping[str, Any]] = None,
        *,
        known_heads: Optional[Sequence[str]] = None,
    ) -> None:
        if isinstance(heads, str):
            heads = (heads,)
        heads = tuple(heads)
        known = tuple(pap_heads() if known_heads is None else known_heads)
        unknown = [head for head in heads if head not in known]
        if unknown:
            raise ValueError(
                f"unknown head(s) {unknown}; expected a subset of {known} (a project's head is "
                "known once the project is imported: search setting model.imports)"
            )
        if len(set(heads)) != len(heads):
            raise ValueError(f"heads must not repeat, got {list(heads)}")
        if not heads:
            raise ValueError("a search space needs at least one head")
        self._heads = tuple(head for head in known if head in heads)

        all_groups = [
            f"{head}.{name}" for head in self._heads for name in (*FUNCTION_NAMES, _LAMBDA)
        ]
        self._fixed: Dict[str, Any] = {}
        for group, value in (fixed or {}).items():
            if group not in all_groups:
                raise ValueError(f"unknown group {group!r} in fixed; expected one of {all_groups}")
            try:
                self._fixed[group] = _normalise_group_value(value, _is_lambda(group))
            except ValueError as exc:
                raise ValueError(f"fixed[{group!r}]: {exc}") from None

        self._groups: Dict[str, slice] = {}
        self._names: List[str] = []
        for group in all_groups:
            if group in self._fixed:
                continue
            start = len(self._names)
            if group.endswith(f".{_LAMBDA}"):
                self._names.append(group)
            else:
                self._names.extend(
                    f"{group}.theta{m}{axis}" for m in range(1, 5) for axis in ("x", "y")
                )
            self._groups[group] = slice(start, len(self._names))
        if not self._names:
            raise ValueError("every group is fixed: nothing left to search")

    @classmethod
    def from_config(cls, cfg: Any, fixed: Optional[Mapping[str, Any]] = None) -> "SearchSpace":
        """Search space of the PAP-loss heads of the model described by ``cfg``.

        Args:
            cfg: a Detectron2 ``CfgNode`` or a nested dict with the same keys. When it sets
                ``MODEL.PAPLOSS.LOSS``, that must be ``"pap"``.
            fixed: as in the constructor.

        Raises:
            ValueError: if the model has no PAP-loss head or its loss is not the PAP loss.
        """
        loss = _config_get(cfg, f"{CONFIG_PREFIX}.LOSS", None)
        if loss is not None and loss != "pap":
            raise ValueError(
                f"{CONFIG_PREFIX}.LOSS is {loss!r}; searching the PAP-loss parameters needs 'pap'"
            )
        return cls(heads_from_config(cfg), fixed=fixed)

    @classmethod
    def from_dict(cls, description: Mapping[str, Any]) -> "SearchSpace":
        """Rebuild a space from :meth:`to_dict`.

        The stored heads are taken as they are, in their stored order (the search that stored
        them checked them): reports rebuild a project head's space without importing the project.
        """
        heads = description["heads"]
        return cls(heads, fixed=description.get("fixed") or None, known_heads=heads)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able description: heads, fixed groups and dimension names (for search settings)."""
        return {"heads": list(self._heads), "fixed": dict(self._fixed), "names": list(self._names)}

    # ------------------------------------------------------------------ properties
    @property
    def heads(self) -> Tuple[str, ...]:
        return self._heads

    @property
    def dim(self) -> int:
        """Number of searched θ dimensions."""
        return len(self._names)

    @property
    def names(self) -> Tuple[str, ...]:
        """Names of the θ dimensions, in θ order."""
        return tuple(self._names)

    @property
    def groups(self) -> Dict[str, slice]:
        """Searched groups (``"<HEAD>.<FUNCTION>"``, ``"<HEAD>.lambda"``) → their slice of θ."""
        return dict(self._groups)

    @property
    def fixed(self) -> Dict[str, Any]:
        """Fixed groups → their values (interior knots, or λ)."""
        return {group: _copy_value(value) for group, value in self._fixed.items()}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SearchSpace):
            return NotImplemented
        return self._heads == other._heads and self._fixed == other._fixed

    def __repr__(self) -> str:
        fixed = f", fixed={sorted(self._fixed)}" if self._fixed else ""
        return f"SearchSpace(heads={list(self._heads)}{fixed}, dim={self.dim})"

    def summary(self) -> str:
        """``"41 dimensions (RETINANET)"``, for logs and reports."""
        return f"{self.dim} dimensions ({', '.join(self._heads)})"

    def describe_candidate(self, overrides: Mapping[str, Any]) -> Optional[str]:
        """A candidate in a few words for reports; None: θ says it (nothing to add)."""
        return None

    def export_overrides(self, theta: Any, overrides: Mapping[str, Any]) -> Dict[str, Any]:
        """The config values an exported config writes for the candidate ``theta``: those of
        :meth:`to_overrides`, rounded for readability (:func:`round_overrides`); ``overrides``
        (the values the candidate trained with) are the same, unrounded, and not needed."""
        return round_overrides(self.to_overrides(theta), self)

    # ------------------------------------------------------------------ θ
    def identity_theta(self) -> np.ndarray:
        """``[dim]`` θ of identity functions and λ = 1 (θ = 0.5)."""
        theta = np.empty(self.dim, dtype=np.float64)
        for group, span in self._groups.items():
            theta[span] = _IDENTITY_LAMBDA_THETA if _is_lambda(group) else IDENTITY_THETA
        return theta

    def published_theta(self) -> np.ndarray:
        """``[dim]`` θ of the published searched parameters of every searched head.

        Raises:
            ValueError: for a head without published parameters (only ``RETINANET``, ``RPN`` and
                ``ROI_HEADS`` have them).
        """
        overrides: Dict[str, Any] = {}
        for group in self._groups:
            head, name = group.rsplit(".", 1)
            if head not in PUBLISHED_SETS:
                raise ValueError(
                    f"search.init 'published': the {head} head has no published parameters "
                    f"(published: {', '.join(PUBLISHED_SETS)})"
                )
            published = PUBLISHED_SETS[head]
            overrides[_group_key(group)] = (
                published_grad_scale(published)
                if _is_lambda(group)
                else published_knots(published)[name]
            )
        return self.from_overrides(overrides)

    def initial_theta(self, init: str) -> np.ndarray:
        """``[dim]`` θ where a search starts (``search.init``).

        Args:
            init: ``identity``, ``published`` (:meth:`published_theta`) or a Detectron2 config
                file whose ``MODEL.PAPLOSS`` values are the start (:meth:`theta_from_config`).

        Raises:
            ValueError: naming ``search.init``, for a start the space cannot take.
        """
        if init == "identity":
            return self.identity_theta()
        if init == "published":
            return self.published_theta()
        from paploss.engine import load_config

        try:
            return self.theta_from_config(load_config(init))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"search.init {init!r}: {exc}") from None

    def check_theta(self, theta: Any) -> np.ndarray:
        """Return ``theta`` as a ``[dim]`` float64 array after checking its shape and range.

        Raises:
            ValueError: if the shape is not ``[dim]`` or a value is not finite or outside [0, 1].
        """
        array = np.asarray(theta, dtype=np.float64)
        if array.shape != (self.dim,):
            raise ValueError(f"theta must have shape [{self.dim}], got {list(array.shape)}")
        outside = ~np.isfinite(array) | (array < 0) | (array > 1)
        if outside.any():
            bad = ", ".join(f"{self._names[i]}={array[i]}" for i in np.flatnonzero(outside)[:5])
            raise ValueError(f"theta must be finite and lie in [0, 1]; got {bad}")
        return array

    def split(self, theta: Any) -> Dict[str, np.ndarray]:
        """Searched groups → their part of ``theta`` (``[8]`` for a function, ``[1]`` for λ)."""
        theta = self.check_theta(theta)
        return {group: theta[span].copy() for group, span in self._groups.items()}

    # ------------------------------------------------------------------ config values
    def to_overrides(self, theta: Any) -> Dict[str, Any]:
        """Config values of ``theta``: full dotted key → plain Python value.

        Functions map to four interior knots ``[[x, y], ...]`` (floats), gradient scales to λ
        (float). Fixed groups are included with their fixed values; keys are in θ order.
        """
        theta = self.check_theta(theta)
        overrides: Dict[str, Any] = {}
        for head in self._heads:
            for name in (*FUNCTION_NAMES, _LAMBDA):
                group = f"{head}.{name}"
                if group in self._fixed:
                    value = _copy_value(self._fixed[group])
                elif name == _LAMBDA:
                    value = float(lambda_from_theta(float(theta[self._groups[group]][0])))
                else:
                    knots = theta_to_knots(theta[self._groups[group]])
                    value = [[float(x), float(y)] for x, y in knots.tolist()]
                overrides[_group_key(group)] = value
        return overrides

    def from_overrides(self, overrides: Mapping[str, Any]) -> np.ndarray:
        """Inverse of :meth:`to_overrides`: θ from config values.

        Values may also be strings as on a command line (``"[[0.2, 0.2], ...]"``). Keys outside the
        space are ignored; keys of fixed groups, when present, must hold the fixed values.

        Raises:
            ValueError: if a searched key is missing, a value is invalid (knots that are not sorted
                or outside [0, 1], λ outside [0.1, 10]) or a fixed key holds another value.
        """
        theta = np.empty(self.dim, dtype=np.float64)
        for group, span in self._groups.items():
            key = _group_key(group)
            if key not in overrides:
                raise ValueError(f"overrides have no value for {key}")
            try:
                value = _normalise_group_value(_parse(overrides[key]), _is_lambda(group))
                if _is_lambda(group):
                    theta[span] = theta_from_lambda(value)
                else:
                    theta[span] = knots_to_theta(value).numpy()
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
        for group, fixed_value in self._fixed.items():
            key = _group_key(group)
            if key in overrides:
                try:
                    value = _normalise_group_value(_parse(overrides[key]), _is_lambda(group))
                except ValueError as exc:
                    raise ValueError(f"{key}: {exc}") from None
                if not np.allclose(value, fixed_value, rtol=0, atol=1e-9):
                    raise ValueError(
                        f"{key} is fixed to {fixed_value} in this search space, got {value}"
                    )
        return theta

    def theta_from_config(self, cfg: Any) -> np.ndarray:
        """θ of the PAP-loss values a model config holds (e.g. one with the published functions).

        Args:
            cfg: a Detectron2 ``CfgNode`` or a nested dict with the same keys.

        Raises:
            ValueError: as :meth:`from_overrides`.
        """
        keys = [_group_key(group) for group in self._groups]
        return self.from_overrides({key: _config_get(cfg, key) for key in keys})

    def to_opts_list(self, theta: Any, as_strings: bool = False) -> List[Any]:
        """``[key, value, key, value, ...]`` for Detectron2's ``cfg.merge_from_list``.

        Args:
            theta: ``[dim]`` θ.
            as_strings: format values as Python literals (``"[[0.2, 0.2], ...]"``, ``"1.0"``) for
                a command line; floats keep their exact value.
        """
        opts: List[Any] = []
        for key, value in self.to_overrides(theta).items():
            opts.extend([key, repr(value) if as_strings else value])
        return opts


def round_overrides(overrides: Mapping[str, Any], space: SearchSpace) -> Dict[str, Any]:
    """Config values rounded for readability, still valid and still describing the same loss.

    Knots are rounded to 4 decimals, or to more where 4 would break the minimum knot spacing
    (:data:`paploss.losses.MIN_KNOT_SPACING`) or the ordering; λ to 4 decimals (clamped to
    [0.1, 10]). The result is checked with :meth:`SearchSpace.from_overrides`.
    """
    rounded: Dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, list):
            rounded[key] = _round_knots(value)
        else:
            rounded[key] = min(10.0, max(0.1, round(float(value), 4)))
    space.from_overrides(rounded)  # raises if rounding broke anything
    return rounded


def _round_knots(knots: Sequence[Sequence[float]]) -> List[List[float]]:
    for digits in range(4, _MAX_DIGITS + 1):
        candidate = [[round(float(x), digits), round(float(y), digits)] for x, y in knots]
        try:
            knots_to_theta(candidate, min_spacing=MIN_KNOT_SPACING)
        except ValueError:
            continue
        return candidate
    return [[float(x), float(y)] for x, y in knots]


def _group_key(group: str) -> str:
    head, name = group.split(".")
    return _lambda_key(head) if name == _LAMBDA else _function_key(head, name)


def _is_lambda(group: str) -> bool:
    return group.endswith(f".{_LAMBDA}")


def _parse(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"cannot parse {value!r} as a Python literal") from None
    return value


def _normalise_group_value(value: Any, is_lambda: bool) -> Any:
    """Validate a group's value; return λ as a float or knots as ``[[x, y], ...]`` floats."""
    if is_lambda:
        try:
            lam = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"λ must be a number, got {value!r}") from None
        if not math.isfinite(lam):
            raise ValueError(f"λ must be finite, got {lam}")
        theta_from_lambda(lam)  # range check: [0.1, 10]
        return lam
    try:
        knots = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"knots must be four [x, y] pairs, got {value!r}") from None
    if knots.shape != (4, 2) or not np.all(np.isfinite(knots)):
        raise ValueError(f"knots must be four finite [x, y] pairs, got {value!r}")
    knots_to_theta(knots)  # sorted, in [0, 1], x spaced by the minimum knot spacing
    return [[float(x), float(y)] for x, y in knots]


def _copy_value(value: Any) -> Any:
    return [list(pair) for pair in value] if isinstance(value, list) else value
