"""Screening of graph candidates with the search's own checks, before any proxy training.

:class:`GraphScreener` decides about one :class:`~paploss.lossgraph.evolution.GraphCandidate`:

1. **Validity** (cheapest): the candidate's losses and gradients on fixed probes
   (:class:`~paploss.lossgraph.fingerprint.GraphProbes`) must be finite, and a gradient must reach
   the predictions of every searched branch; otherwise it is ``rejected`` as invalid (it would
   stop at once in training, or never learn).
2. **Gradient equivalence**: the rounded per-sample gradient norms on the same probes
   (:func:`~paploss.lossgraph.fingerprint.graph_fingerprint`); a candidate whose fingerprint an
   earlier one had is a ``duplicate`` of it (:class:`~paploss.search.screening.
   EquivalenceRegistry`).
3. **Loss rejection**: the search's :class:`~paploss.search.screening.RejectionProtocol`, unchanged,
   on the ROI head's fixed batch of a random detector: the candidate's head loss is
   :class:`~paploss.modeling.graph_loss.GraphHeadLoss` built from the model's config with the
   candidate's overrides (the loss it would train with), and the protocol optimises the
   predictions under its :meth:`compute` and measures the AP gain; below
   ``rejection.min_ap_gain`` the candidate is ``rejected``.

Settings are the search's :class:`~paploss.search.settings.ScreeningSettings`
(``equivalence.probe_samples``, ``equivalence.seed`` and ``significant_digits`` size the probes
and the rounding; ``probe_entries`` / ``probe_positives`` are for PAP candidates only). The early
stop of invalid trainings is the search's :class:`~paploss.search.screening.InvalidTrainingHook`
(``screening.early_stop.build_hook()``): it watches every
:class:`~paploss.modeling.head_loss.RankingHeadLoss`, so a graph loss's training is stopped the
same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, Hashable, Optional, Sequence

from paploss.search.screening.batch import HeadBatch, build_screening_batches
from paploss.search.screening.equivalence import EquivalenceRegistry
from paploss.search.screening.rejection import RejectionProtocol, RejectionResult
from paploss.search.screening.screener import ScreeningDecision
from paploss.search.settings import ScreeningSettings

from .evolution import GraphCandidate
from .fingerprint import GraphFingerprint, GraphProbes, graph_fingerprint

__all__ = ["GraphScreeningDecision", "GraphScreener", "graph_head_loss"]

#: The head whose losses graph candidates replace.
HEAD = "ROI_HEADS"


def graph_head_loss(cfg: Any, candidate: GraphCandidate) -> Any:
    """The ROI head's :class:`~paploss.modeling.graph_loss.GraphHeadLoss` as ``candidate``
    trains with it: ``cfg`` with the candidate's overrides merged as a trial merges them.

    Raises:
        ValueError: naming the key, for an expression the config rejects.
    """
    from paploss.modeling import build_head_loss

    cfg = cfg.clone()
    cfg.defrost()
    opts = []
    for key, value in candidate.overrides().items():
        opts += [key, value]
    cfg.merge_from_list(opts)
    return build_head_loss(cfg, HEAD, head_name="roi_heads", key_prefix="loss_roi_")


@dataclass(frozen=True)
class GraphScreeningDecision(ScreeningDecision):
    """:class:`~paploss.search.screening.ScreeningDecision` with the validity check.

    Attributes:
        invalid: rejected by the validity check (``status`` is ``"rejected"``).
        reason: why it was rejected as invalid, else None.
        probe_seconds: wall time of the validity check and fingerprint.
    """

    invalid: bool = False
    reason: Optional[str] = None
    probe_seconds: float = 0.0

    def metrics(self) -> Dict[str, Any]:
        data = super().metrics()
        data.update(invalid=self.invalid, reason=self.reason, probe_seconds=self.probe_seconds)
        return data


class GraphScreener:
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
        settings.validate()
        self.settings = settings
        if cfg is None:
            from detectron2.config import get_cfg

            from paploss.modeling import add_paploss_config

            cfg = get_cfg()
            add_paploss_config(cfg)
        self.cfg = cfg
        self.protocol: Optional[RejectionProtocol] = None
        if settings.rejection.enabled:
            if batch is None:
                raise ValueError("the rejection protocol is enabled but no batch was given")
            self.protocol = RejectionProtocol(batch, settings.rejection)
        equivalence = settings.equivalence
        self.probes = probes or GraphProbes(
            equivalence.probe_samples, cfg.MODEL.ROI_HEADS.NUM_CLASSES, equivalence.seed
        )
        self.registry = registry if registry is not None else EquivalenceRegistry()
        self.branches = tuple(branches)

    @classmethod
    def build(
        cls,
        settings: ScreeningSettings,
        cfg: Any,
        *,
        dataset: str,
        branches: Sequence[str] = ("cls", "box"),
    ) -> "GraphScreener":
        """A screener for the model of ``cfg``: records the ROI head's batch (one forward of a
        random detector, :func:`~paploss.search.screening.batch.build_screening_batches`).

        Args:
            settings: screening settings.
            cfg: the searched model's config (a Faster R-CNN with ``PAPROIHeads``).
            dataset: the proxy training split (used unless ``rejection.dataset`` is set).
            branches: the searched branches.
        """
        batch = None
        if settings.rejection.enabled:
            batch = build_screening_batches(
                cfg,
                dataset=settings.rejection.dataset or dataset,
                num_images=settings.rejection.num_images,
                seed=settings.rejection.seed,
                heads=[HEAD],
            )[HEAD]
        return cls(settings, batch, cfg=cfg, branches=branches)

    def head_loss(self, candidate: GraphCandidate) -> Any:
        """The candidate's ROI head loss (:func:`graph_head_loss` on :attr:`cfg`)."""
        return graph_head_loss(self.cfg, candidate)

    def fingerprint(self, candidate: GraphCandidate) -> GraphFingerprint:
        """The candidate's fingerprint (and validity) on the probes."""
        return graph_fingerprint(
            candidate.cls,
            candidate.box,
            self.probes,
            self.settings.equivalence.significant_digits,
        )

    def reject_score(self, candidate: GraphCandidate) -> RejectionResult:
        """Run the rejection protocol (no decision, no registry).

        Raises:
            ValueError: if the protocol is disabled.
        """
        if self.protocol is None:
            raise ValueError("the rejection protocol is disabled")
        return self.protocol.run(self.head_loss(candidate))

    def screen(
        self, candidate: GraphCandidate, key: Optional[Hashable] = None
    ) -> GraphScreeningDecision:
        """Decide about one candidate and register its fingerprint under ``key``.

        Args:
            candidate: the candidate.
            key: identifies the trial (default: the candidate's proposal number); a later
                equivalent candidate is reported as a duplicate of it.

        Returns:
            The decision: ``rejected`` (invalid, or AP gain below the threshold), ``duplicate``
            or ``accepted``.
        """
        start = time.perf_counter()
        key = candidate.index if key is None else key
        rejected_reward = float(self.settings.rejection.rejected_reward)
        fingerprint = self.fingerprint(candidate)
        probe_seconds = time.perf_counter() - start
        reason = fingerprint.invalid_reason(self.branches)
        if reason is not None:
            return GraphScreeningDecision(
                status="rejected",
                reward=rejected_reward,
                invalid=True,
                reason=reason,
                probe_seconds=probe_seconds,
                seconds=time.perf_counter() - start,
            )
        digest = None
        if self.settings.equivalence.enabled:
            digest = fingerprint.digest
            earlier = self.registry.lookup(digest)
            if earlier is not None and earlier != key:
                return GraphScreeningDecision(
                    status="duplicate",
                    fingerprint=digest,
                    duplicate_of=earlier,
                    probe_seconds=probe_seconds,
                    seconds=time.perf_counter() - start,
                )
            self.registry.register(digest, key)
        rejection: Dict[str, RejectionResult] = {}
        status, reward = "accepted", None
        if self.protocol is not None:
            rejection = {HEAD: self.protocol.run(self.head_loss(candidate))}
            if rejection[HEAD].gain < self.settings.rejection.min_ap_gain:
                status, reward = "rejected", rejected_reward
        return GraphScreeningDecision(
            status=status,
            fingerprint=digest,
            rejection=rejection,
            reward=reward,
            probe_seconds=probe_seconds,
            seconds=time.perf_counter() - start,
        )
