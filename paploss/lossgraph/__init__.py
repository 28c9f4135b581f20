"""Former home of the loss graphs; its names stay importable from here for code written before.

The loss graphs now live where each part belongs (new code imports from there):

* the graphs and the branches of a detection head (pure PyTorch): :mod:`paploss.losses.graph`;
* random graphs and mutations (``GraphSpace``, ``mutate``, ``random_graph``):
  :mod:`paploss.search.proposers.graph_mutation`;
* the evolution and random search (``Evolution``, ``RandomSearch``, ``EvolutionSettings``,
  ``GraphCandidate``): :mod:`paploss.search.proposers.graph_evolution`;
* fingerprints on fixed probes: :mod:`paploss.search.screening.graph_fingerprint`, and the graph
  screener: :mod:`paploss.search.screening.graph_screener`.

The names load from those modules on first access.
"""

import importlib
from typing import Any, List

from paploss.losses.graph import __all__ as _GRAPH_NAMES

#: Name → the module that defines it now.
_MOVED = {
    **{name: "paploss.losses.graph" for name in _GRAPH_NAMES},
    **{
        name: "paploss.search.proposers.graph_evolution"
        for name in (
            "Evolution",
            "EvolutionSettings",
            "EvolutionState",
            "GraphCandidate",
            "Member",
            "RandomSearch",
        )
    },
    **{
        name: "paploss.search.screening.graph_fingerprint"
        for name in ("GraphFingerprint", "GraphProbes", "graph_fingerprint", "round_significant")
    },
    **{
        name: "paploss.search.proposers.graph_mutation"
        for name in ("MUTATIONS", "GraphSpace", "mutate", "random_graph")
    },
}
__all__ = sorted(_MOVED)


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_MOVED))
