"""Search space of loss graphs: what the ``evolution`` and ``random`` methods search.

A candidate is a classification and a box graph of the Fast R-CNN head
(:class:`~paploss.search.proposers.graph_evolution.GraphCandidate`); its config values are
``MODEL.PAPLOSS.LOSS: "graph"`` and the two expressions (``MODEL.PAPLOSS.GRAPH.CLS`` / ``BOX``,
:meth:`~paploss.search.proposers.graph_evolution.GraphCandidate.overrides`), which the head loss
:class:`~paploss.modeling.graph_loss.GraphHeadLoss` trains with. Candidates have no θ: the
method gives their config values itself, and the journal stores them as each trial's overrides.

The searched model is a Faster R-CNN with ``MODEL.ROI_HEADS.NAME: "PAPROIHeads"`` and
``MODEL.PAPLOSS.LOSS: "graph"`` (e.g. ``configs/synthetic/graph_faster_rcnn.yaml``); its RPN keeps
its stock losses.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from paploss.losses.graph.branches import BRANCHES, GRAPH_LOSS_NAME, parse_branch
from paploss.search.spaces.pap import CONFIG_PREFIX

__all__ = ["GRAPH_HEAD", "GraphLossSpace"]

#: The head whose losses graph candidates replace.
GRAPH_HEAD = "ROI_HEADS"
_LOSS_KEY = f"{CONFIG_PREFIX}.LOSS"


class GraphLossSpace:
    """The loss graphs of the ROI head (see the module docstring).

    Args:
        branches: the searched branches (``"cls"``, ``"box"``).
        fixed: expressions of the branches that are not searched.

    Raises:
        ValueError: for an unknown branch, or an unsearched branch without an expression.
    """

    #: The stored description's ``kind`` (:func:`~paploss.search.spaces.space_from_dict`).
    KIND = "graph"
    #: What a candidate of the space is, in words (exported configs say so).
    WHAT = "loss graphs"

    def __init__(self, branches: Sequence[str], fixed: Mapping[str, str] = ()) -> None:
        self._branches = tuple(branches)
        unknown = [b for b in self._branches if b not in BRANCHES]
        if unknown or not self._branches:
            raise ValueError(f"branches must be a non-empty subset of {list(BRANCHES)}")
        fixed = dict(fixed)
        missing = [b for b in BRANCHES if b not in self._branches and b not in fixed]
        if missing:
            raise ValueError(f"the unsearched branch(es) {missing} need a fixed expression")
        self._fixed = {name: fixed[name] for name in BRANCHES if name not in self._branches}

    @classmethod
    def from_config(cls, cfg: Any, evolution: Any) -> "GraphLossSpace":
        """The space of the searched model, with the branches ``evolution`` searches.

        Args:
            cfg: the searched model's Detectron2 config.
            evolution: the search's
                :class:`~paploss.search.proposers.graph_evolution.EvolutionSettings`.

        Raises:
            ValueError: naming the config key, for a model without a graph-loss ROI head.
        """
        model = cfg.MODEL
        problems = []
        if model.META_ARCHITECTURE != "GeneralizedRCNN":
            problems.append(f"MODEL.META_ARCHITECTURE is {model.META_ARCHITECTURE!r}")
        if model.ROI_HEADS.NAME != "PAPROIHeads":
            problems.append(f"MODEL.ROI_HEADS.NAME is {model.ROI_HEADS.NAME!r}")
        if model.PAPLOSS.LOSS != GRAPH_LOSS_NAME:
            problems.append(f"{_LOSS_KEY} is {model.PAPLOSS.LOSS!r}")
        if problems:
            raise ValueError(
                "searching loss graphs needs a Faster R-CNN with MODEL.ROI_HEADS.NAME "
                f"'PAPROIHeads' and {_LOSS_KEY} '{GRAPH_LOSS_NAME}' "
                f"(e.g. configs/synthetic/graph_faster_rcnn.yaml); {', '.join(problems)}"
            )
        return cls(evolution.branches, fixed=evolution.fixed)

    @classmethod
    def from_dict(cls, description: Mapping[str, Any]) -> "GraphLossSpace":
        """Rebuild a space from :meth:`to_dict`."""
        return cls(description["branches"], fixed=description.get("fixed") or {})

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able description (stored in the journal's settings)."""
        return {
            "kind": self.KIND,
            "heads": list(self.heads),
            "branches": list(self._branches),
            "fixed": dict(self._fixed),
            "names": [],
        }

    # ------------------------------------------------------------------ properties
    @property
    def heads(self) -> Tuple[str, ...]:
        return (GRAPH_HEAD,)

    @property
    def dim(self) -> int:
        """Candidates have no θ."""
        return 0

    @property
    def branches(self) -> Tuple[str, ...]:
        """The searched branches."""
        return self._branches

    @property
    def fixed(self) -> Dict[str, str]:
        """Unsearched branch → its expression."""
        return dict(self._fixed)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GraphLossSpace):
            return NotImplemented
        return self._branches == other._branches and self._fixed == other._fixed

    def __repr__(self) -> str:
        return f"GraphLossSpace(branches={list(self._branches)}, fixed={self._fixed})"

    def summary(self) -> str:
        """``"loss graphs of ROI_HEADS (cls, box searched)"``, for logs and reports."""
        searched = ", ".join(self._branches)
        fixed = "".join(f"; {name} fixed: {text}" for name, text in self._fixed.items())
        return f"loss graphs of {GRAPH_HEAD} ({searched} searched{fixed})"

    def describe_candidate(self, overrides: Mapping[str, Any]) -> Optional[str]:
        """``"cls <expression> | box <expression>"`` of a candidate's config values."""
        parts = [
            f"{name} {overrides.get(branch.config_key, self._fixed.get(name, '?'))}"
            for name, branch in BRANCHES.items()
        ]
        return " | ".join(parts)

    # ------------------------------------------------------------------ config values
    def to_overrides(self, theta: Any) -> Dict[str, Any]:
        """Graph candidates have no θ: their config values come with them.

        Raises:
            ValueError: always.
        """
        raise ValueError("a loss-graph candidate has no θ; its config values come with it")

    def export_overrides(self, theta: Any, overrides: Mapping[str, Any]) -> Dict[str, Any]:
        """The config values an exported config writes: ``MODEL.PAPLOSS.LOSS`` and the two
        expressions of ``overrides`` (the values the candidate trained with), checked.

        Raises:
            ValueError: naming the key, for a missing or unparsable expression.
        """
        values: Dict[str, Any] = {_LOSS_KEY: GRAPH_LOSS_NAME}
        for name, branch in BRANCHES.items():
            text = overrides.get(branch.config_key, self._fixed.get(name))
            if text is None:
                raise ValueError(f"the candidate has no {branch.config_key}")
            try:
                parse_branch(str(text), branch)
            except ValueError as exc:
                raise ValueError(f"{branch.config_key}: {exc}") from None
            values[branch.config_key] = str(text)
        return values
