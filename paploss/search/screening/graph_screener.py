"""Screening of graph candidates with the search's own checks, before any proxy training.

:class:`GraphScreener` is the search's :class:`~paploss.search.screening.Screener` for loss
graphs: the same decision (:meth:`~paploss.search.screening.Screener.screen`), with

1. **Validity** first (cheapest): the candidate's losses and gradients on fixed probes
   (:class:`~paploss.search.screening.graph_fingerprint.GraphProbes`) must be finite, and a
   gradient must reach the predictions of every searched branch; otherwise it is ``rejected`` as invalid (it would
   stop at once in training, or never learn).
2. **Gradient equivalence**: the rounded per-sample gradient norms on the same probes
   (:func:`~paploss.search.screening.graph_fingerprint.graph_fingerprint`); a candidate whose
   fingerprint an earlier one had is a ``duplicate`` of it (:class:`~paploss.search.screening.
   EquivalenceRegistry`).
3. **Loss rejection**: the search's :class:`~paploss.search.screening.RejectionProtocol`, unchanged,
   on the ROI head's fixed batch of a random detector (or, with ``rejection.predictions:
   linear``, a linear predictor trained on a warm-started detector's features,
   :mod:`paploss.search.screening.linear`): the candidate's head loss is
   :class:`~paploss.modeling.graph_loss.GraphHeadLoss` built from the model's config with the
   candidate's overrides (the loss it would train with), and the protocol optimises the
   predictions under its :meth:`compute` and measures the AP gain; below
   ``rejection.min_ap_gain`` the candidate is ``rejected``.

A candidate is given as its config values (what the search's journal stores,
:meth:`~paploss.search.proposers.graph_evolution.GraphCandidate.overrides`) or as a
:class:`~paploss.search.proposers.graph_evolution.GraphCandidate`. Settings are the search's
:class:`~paploss.search.settings.ScreeningSettings` (``equivalence.probe_samples``,
``equivalence.seed`` and ``significant_digits`` size the probes and the rounding;
``probe_entries`` / ``probe_positives`` are for PAP candidates only). The early stop of invalid
trainings is the search's :class:`~paploss.engine.hooks.InvalidTrainingHook`
(:func:`~paploss.search.trials.proxy_config.early_stop_hook`): it watches every
:class:`~paploss.modeling.head_loss.RankingHeadLoss`, so a graph loss's training is stopped the
same way.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from paploss.losses.graph.branches import BRANCHES, parse_branch
from paploss.search.proposers.graph_evolution import GraphCandidate
from paploss.search.screening.batch import HeadBatch
from paploss.search.screening.equivalence import EquivalenceRegistry
from paploss.search.screening.graph_fingerprint import (
    GraphFingerprint,
    GraphProbes,
    graph_fingerprint,
)
from paploss.search.screening.rejection import RejectionProtocol, RejectionResult
from paploss.search.screening.screener import Screener, ScreeningDecision
from paploss.search.settings import ScreeningSettings

__all__ = ["GraphScreener", "graph_head_loss", "HEAD"]

#: The head whose losses graph candidates replace.
HEAD = "ROI_HEADS"

#: A graph candidate, or its config values.
GraphLike = Union[GraphCandidate, Mapping[str, Any]]


def _overrides(candidate: GraphLike) -> Mapping[str, Any]:
    return candidate.overrides() if isinstance(candidate, GraphCandidate) else candidate


def graph_head_loss(cfg: Any, candidate: GraphLike) -> Any:
    """The ROI head's :class:`~paploss.modeling.graph_loss.GraphHeadLoss` as ``candidate``
    trains with it: ``cfg`` with the candidate's overrides merged as a trial merges them.

    Raises:
        ValueError: naming the key, for an expression the config rejects.
    """
    from paploss.modeling import build_head_loss

    cfg = cfg.clone()
    cfg.defrost()
    opts = []
    for key, value in _overrides(candidate).items():
        opts += [key, value]
    cfg.merge_from_list(opts)
    return build_head_loss(cfg, HEAD, head_name="roi_heads", key_prefix="loss_roi_")


class GraphScreener(Screener):
    """Screens graph candidates: validity, equivalence, then the rejection protocol.

    Args:
        settings: the search's screening settings.
        batch: the ROI head's fixed batch (needed when the rejection protocol is enabled).
        cfg: the searched model's config (``MODEL.PAPLOSS.LOSS: "graph"`` model); default:
            Detectron2's defaults with paploss's keys.
        probes: default: from ``settings.equivalence`` with the config's ``NUM_CLASSES``.
        registry: fingerprint registry (default: empty).
        branches: the searched branches (each must receive a gradient to be valid).
    """

    def __init__(
        self,
        settings: ScreeningSettings,
        batch: Optional[HeadBatch] = None,
        *,
        cfg: Optional[Any] = None,
        probes: Optional[GraphProbes] = None,
        registry: Optional[EquivalenceRegistry] = None,
        branches: Sequence[str] = ("cls", "box"),
    ) -> None:
        super().__init__(
            settings,
            None if batch is None else {HEAD: batch},
            probes=probes,
            registry=registry,
            cfg=cfg,
        )
        self.branches = tuple(branches)

    def default_probes(self) -> GraphProbes:
        """Probes of ``settings.equivalence``'s size and seed with the config's classes (also
        with the check disabled: they tell whether a candidate is valid)."""
        equivalence = self.settings.equivalence
        return GraphProbes(
            equivalence.probe_samples, self.cfg.MODEL.ROI_HEADS.NUM_CLASSES, equivalence.seed
        )

    @classmethod
    def build(  # type: ignore[override]
        cls,
        settings: ScreeningSettings,
        cfg: Any,
        *,
        dataset: str,
        branches: Sequence[str] = ("cls", "box"),
        val_dataset: Optional[str] = None,
        weights: Optional[str] = None,
    ) -> "GraphScreener":
        """A screener for the model of ``cfg``: records the ROI head's batch (one forward of a
        random detector, :func:`~paploss.search.screening.batch.build_screening_batches`; of the
        trained detector of ``weights`` with ``rejection.predictions: linear``, see
        :meth:`~paploss.search.screening.Screener.rejection_batches`).

        Args:
            settings: screening settings.
            cfg: the searched model's config (a Faster R-CNN with ``PAPROIHeads``).
            dataset: the proxy training split (used unless ``rejection.dataset`` is set).
            branches: the searched branches.
            val_dataset: the proxy validation split (``predictions: linear``'s held-out images).
            weights: the search's warm-start checkpoint (``predictions: linear``).
        """
        batches = cls.rejection_batches(
            settings, cfg, dataset, [HEAD], val_dataset=val_dataset, weights=weights
        )
        return cls(settings, None if batches is None else batches[HEAD], cfg=cfg, branches=branches)

    @property
    def protocol(self) -> Optional[RejectionProtocol]:
        """The rejection protocol on the ROI head's batch (None when disabled)."""
        return self.protocols.get(HEAD)

    def head_loss(self, candidate: GraphLike) -> Any:
        """The candidate's ROI head loss (:func:`graph_head_loss` on :attr:`cfg`)."""
        return graph_head_loss(self.cfg, candidate)

    def head_losses(  # type: ignore[override]
        self, overrides: GraphLike, heads: Optional[Sequence[str]] = None
    ) -> Dict[str, Any]:
        """``{"ROI_HEADS": the candidate's head loss}``."""
        return {HEAD: self.head_loss(overrides)}

    def graphs(self, candidate: GraphLike) -> Tuple[Any, Any]:
        """The candidate's classification and box graphs (an expression it does not give: the
        config's, as in training).

        Raises:
            ValueError: naming the key, for an expression that does not parse.
        """
        if isinstance(candidate, GraphCandidate):
            return candidate.cls, candidate.box
        node = self.cfg.MODEL.PAPLOSS.GRAPH
        defaults = {"cls": node.CLS, "box": node.BOX}
        graphs = []
        for name, branch in BRANCHES.items():
            text = str(candidate.get(branch.config_key, defaults[name]))
            try:
                graphs.append(parse_branch(text, branch))
            except ValueError as exc:
                raise ValueError(f"{branch.config_key}: {exc}") from None
        return graphs[0], graphs[1]

    def fingerprint(self, candidate: GraphLike) -> GraphFingerprint:  # type: ignore[override]
        """The candidate's fingerprint (and validity) on the probes."""
        cls_graph, box_graph = self.graphs(candidate)
        return graph_fingerprint(
            cls_graph, box_graph, self.probes, self.settings.equivalence.significant_digits
        )

    def probe(self, candidate: GraphLike) -> Tuple[Optional[str], Optional[str]]:
        """``(fingerprint digest, invalid reason)``: the probes run even with the equivalence
        check disabled (they tell whether the candidate is valid)."""
        fingerprint = self.fingerprint(candidate)
        reason = fingerprint.invalid_reason(self.branches)
        if reason is not None or not self.settings.equivalence.enabled:
            return None, reason
        return fingerprint.digest, None

    def reject_score(self, candidate: GraphLike) -> Dict[str, RejectionResult]:
        """Run the rejection protocol (no decision, no registry): ``{"ROI_HEADS": result}``.

        Raises:
            ValueError: if the protocol is disabled.
        """
        if self.protocol is None:
            raise ValueError("the rejection protocol is disabled")
        return {HEAD: self.protocol.run(self.head_loss(candidate))}

    def screen(  # type: ignore[override]
        self, candidate: GraphLike, key: Optional[Any] = None
    ) -> ScreeningDecision:
        """Decide about one candidate and register its fingerprint under ``key`` (default: a
        :class:`GraphCandidate`'s proposal number); see :meth:`Screener.screen`."""
        if key is None:
            if not isinstance(candidate, GraphCandidate):
                raise ValueError("a candidate given by its config values needs a key")
            key = candidate.index
        return super().screen(_overrides(candidate), key)
