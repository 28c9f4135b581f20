"""The search spaces: what a search method's candidates are, and their config values.

* :mod:`~paploss.search.spaces.pap`: :class:`SearchSpace`, the PAP-loss parameters of some heads
  as flat θ vectors in [0, 1] (the ``ppo`` method);
* :mod:`~paploss.search.spaces.graph`: :class:`GraphLossSpace`, the loss graphs of the ROI head
  (the ``evolution`` and ``random`` methods; candidates have no θ).

A space has ``heads``, ``dim``, ``summary()``, ``describe_candidate(overrides)``,
``export_overrides(theta, overrides)`` and ``to_dict()``, the description a journal stores;
:func:`space_from_dict` reads it back (by its ``kind``: ``"graph"``, or ``"pap"`` when absent).
The screening of a space's candidates is built by the screening package
(:func:`paploss.search.screening.build_screener`).
"""

from typing import Any, Mapping

from .graph import GRAPH_HEAD, GraphLossSpace
from .pap import CONFIG_PREFIX, SearchSpace, heads_from_config, round_overrides

__all__ = [
    "CONFIG_PREFIX",
    "GRAPH_HEAD",
    "GraphLossSpace",
    "SPACE_KINDS",
    "SearchSpace",
    "heads_from_config",
    "round_overrides",
    "space_from_dict",
]

#: Stored ``kind`` → the space class (a description without ``kind`` is a PAP-loss space).
SPACE_KINDS = {SearchSpace.KIND: SearchSpace, GraphLossSpace.KIND: GraphLossSpace}


def space_from_dict(description: Mapping[str, Any]) -> Any:
    """The search space a journal describes (:meth:`SearchSpace.to_dict`, or
    :meth:`GraphLossSpace.to_dict` with ``kind: graph``).

    Raises:
        ValueError: for a description of an unknown kind.
    """
    kind = description.get("kind", SearchSpace.KIND)
    if kind not in SPACE_KINDS:
        raise ValueError(f"unknown kind of search space {kind!r}")
    return SPACE_KINDS[kind].from_dict(description)
