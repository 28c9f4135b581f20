"""The screening of a search's candidates: equivalence check first, then the rejection protocol.

:class:`Screener` combines the gradient-equivalence check
(:mod:`paploss.search.screening.equivalence`) and the loss-rejection protocol
(:mod:`paploss.search.screening.rejection`)::

    screener = Screener.build(settings.screening, cfg, dataset=proxy_train_set)
    decision = screener.screen(space.to_overrides(theta), key=(round_index, trial_index))
    decision.status        # "accepted", "rejected" or "duplicate"
    decision.metrics()     # JSON-able, for the journal

:class:`paploss.search.screening.candidates.CandidateScreening` does this for the search
controller before each round is stored (the screener is the search space's kind's,
:func:`~paploss.search.screening.candidates.build_screener`).
:class:`paploss.search.screening.graph_screener.GraphScreener` screens loss-graph candidates with
the same decision (:meth:`Screener.screen`), its own head loss and fingerprint, and a validity
check on the probes first. The third screening technique, the early stop of invalid trainings,
is a training hook (:class:`paploss.engine.hooks.InvalidTrainingHook`) that every proxy training
installs. The settings are :class:`~paploss.search.settings.ScreeningSettings`.

**One definition of the loss.** The screen does not re-implement what a head trains on: the batch
is the head's own :class:`~paploss.modeling.ranking.HeadRanking` (recorded from the head-loss
module's input), and a candidate's loss is the head loss the candidate trains with,
:class:`~paploss.modeling.head_loss.PAPHeadLoss` built by
:func:`~paploss.modeling.build_head_loss` from the model's config with the candidate's overrides
(:func:`candidate_head_losses`, so the quality type, the functions and λ are read by the same
code), evaluated with its own :meth:`~paploss.modeling.head_loss.RankingHeadLoss.compute` on the
ranking decoded from the optimised predictions
(:meth:`~paploss.modeling.ranking.HeadRanking.with_predictions`). The fingerprint reads the
functions and λ from those same head losses.

**Mask R-CNN.** Only the ranking heads (RPN, box head) are screened: a candidate's score is its
ranking losses' effect on box AP, never the mask loss or mask AP (see
:mod:`paploss.search.screening.rejection`). The proxy training, whose reward may be mask AP
(``proxy.reward_task: segm``), judges the mask branch.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

from paploss.heads import pap_heads
from paploss.search.screening.batch import HeadBatch, build_screening_batches
from paploss.search.screening.equivalence import (
    EquivalenceRegistry,
    Fingerprint,
    GradientProbes,
    gradient_fingerprint,
)
from paploss.search.screening.linear import rejection_protocol
from paploss.search.screening.rejection import RejectionResult
from paploss.search.settings import ScreeningSettings
from paploss.search.spaces.pap import CONFIG_PREFIX

if TYPE_CHECKING:  # pragma: no cover
    from paploss.modeling.head_loss import PAPHeadLoss

__all__ = ["candidate_head_losses", "ScreeningDecision", "Screener"]


# ------------------------------------------------------------------------------------ candidates


def candidate_head_losses(
    cfg: Any, overrides: Mapping[str, Any], heads: Sequence[str]
) -> Dict[str, "PAPHeadLoss"]:
    """The PAP head loss of each head as the candidate trains with it.

    The model's config with the candidate's ``MODEL.PAPLOSS.*`` overrides merged as a trial
    merges them (other keys are ignored), ``MODEL.PAPLOSS.LOSS`` set to ``"pap"``, built by
    :func:`paploss.modeling.build_head_loss`.

    Args:
        cfg: the searched model's Detectron2 config (with paploss's keys).
        overrides: ``MODEL.PAPLOSS.<HEAD>.FUNCTIONS.<NAME>`` → interior knots,
            ``MODEL.PAPLOSS.<HEAD>.GRAD_SCALE`` → λ (``SearchSpace.to_overrides``).
        heads: heads to build.

    Returns:
        Head → its :class:`~paploss.modeling.head_loss.PAPHeadLoss`, in ``heads`` order.

    Raises:
        ValueError: naming the key, if a value cannot be merged or is invalid.
    """
    from paploss.modeling import build_head_loss

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.PAPLOSS.LOSS = "pap"
    opts: List[Any] = []
    for key, value in overrides.items():
        if key.startswith(f"{CONFIG_PREFIX}."):
            opts += [key, value]
    try:
        cfg.merge_from_list(opts)
    except (AssertionError, KeyError, TypeError) as exc:
        raise ValueError(f"candidate overrides: {exc}") from None
    return {
        head: build_head_loss(cfg, head, head_name=head.lower(), key_prefix="loss_")
        for head in heads
    }


def _heads_in(overrides: Mapping[str, Any]) -> List[str]:
    """The heads with ``MODEL.PAPLOSS.<HEAD>.*`` keys in ``overrides``, in search-space order."""
    return [h for h in pap_heads() if any(k.startswith(f"{CONFIG_PREFIX}.{h}.") for k in overrides)]


# ------------------------------------------------------------------------------------ screener


@dataclass(frozen=True)
class ScreeningDecision:
    """What screening decided about one candidate.

    Attributes:
        status: ``"accepted"`` (train it), ``"rejected"`` or ``"duplicate"``.
        fingerprint: the candidate's fingerprint digest (None with the check disabled, or for an
            invalid candidate).
        duplicate_of: the key of the earlier equivalent trial (``duplicate`` only).
        rejection: per-head results of the rejection protocol (empty when it did not run).
        reward: the reward to record now: ``rejected_reward`` for ``rejected``, else None (a
            duplicate takes its original's reward once that is known).
        seconds: wall time of the screening.
        reason: why the candidate was rejected as invalid on the probes (before the rejection
            protocol; loss graphs only), else None.
        probe_seconds: wall time of the probes (validity and fingerprint).
    """

    status: str
    fingerprint: Optional[str] = None
    duplicate_of: Optional[Hashable] = None
    rejection: Dict[str, RejectionResult] = field(default_factory=dict)
    reward: Optional[float] = None
    seconds: float = 0.0
    reason: Optional[str] = None
    probe_seconds: float = 0.0

    @property
    def invalid(self) -> bool:
        """Whether the candidate was rejected as invalid on the probes."""
        return self.reason is not None

    @property
    def journal_status(self) -> str:
        """Initial journal status: ``pending`` (to train), ``rejected`` or ``duplicate``."""
        return "pending" if self.status == "accepted" else self.status

    @property
    def score(self) -> Optional[float]:
        """The rejection score: the smallest per-head score (AP gain, or its area under the
        curve with ``rejection.score: auc``; None when not run)."""
        return min(r.score for r in self.rejection.values()) if self.rejection else None

    def metrics(self) -> Dict[str, Any]:
        """JSON-able record for the trial's journal metrics (under a ``screening`` key)."""
        duplicate_of = self.duplicate_of
        if isinstance(duplicate_of, tuple):
            duplicate_of = list(duplicate_of)
        return {
            "status": self.status,
            "fingerprint": self.fingerprint,
            "duplicate_of": duplicate_of,
            "score": self.score,
            "rejection": {head: r.to_dict() for head, r in self.rejection.items()},
            "seconds": self.seconds,
            "invalid": self.invalid,
            "reason": self.reason,
            "probe_seconds": self.probe_seconds,
        }


class Screener:
    """Screens candidates of one search: equivalence check first, then the rejection protocol.

    Args:
        settings: screening settings.
        batches: head → fixed prediction batch (needed when the rejection protocol is enabled).
        probes: probe rankings (default: from ``settings.equivalence``).
        registry: fingerprint registry (default: empty).
        cfg: the searched model's config, which candidates' overrides are merged into
            (:func:`candidate_head_losses`); default: Detectron2's defaults with paploss's keys.
    """

    def __init__(
        self,
        settings: ScreeningSettings,
        batches: Optional[Mapping[str, HeadBatch]] = None,
        probes: Optional[GradientProbes] = None,
        registry: Optional[EquivalenceRegistry] = None,
        cfg: Optional[Any] = None,
    ) -> None:
        settings.validate()
        self.settings = settings
        if cfg is None:
            from detectron2.config import get_cfg

            from paploss.modeling import add_paploss_config

            cfg = get_cfg()
            add_paploss_config(cfg)
        self.cfg = cfg
        self.protocols: Dict[str, RejectionProtocol] = {}
        if settings.rejection.enabled:
            if not batches:
                raise ValueError("the rejection protocol is enabled but no batch was given")
            self.protocols = {
                head: rejection_protocol(batch, settings.rejection)
                for head, batch in batches.items()
            }
        self.probes = probes if probes is not None else self.default_probes()
        self.registry = registry if registry is not None else EquivalenceRegistry()

    def default_probes(self) -> Optional[Any]:
        """The probes when none are given: from ``settings.equivalence`` (None with the check
        disabled)."""
        if not self.settings.equivalence.enabled:
            return None
        return GradientProbes.from_settings(self.settings.equivalence)

    @classmethod
    def build(
        cls,
        settings: ScreeningSettings,
        cfg: Any,
        *,
        dataset: str,
        heads: Optional[Sequence[str]] = None,
        val_dataset: Optional[str] = None,
        weights: Optional[str] = None,
    ) -> "Screener":
        """A screener for the model of ``cfg``: records the batches (one network forward).

        Args:
            settings: screening settings.
            cfg: the searched model's Detectron2 config (:func:`paploss.engine.setup_cfg`).
            dataset: the proxy training split (used unless ``rejection.dataset`` is set).
            heads: searched heads (default: every PAP head of the model).
            val_dataset: the proxy validation split (the held-out images of
                ``rejection.predictions: linear``).
            weights: the trained detector's checkpoint (the search's warm start) whose features
                ``rejection.predictions: linear`` records.
        """
        batches = cls.rejection_batches(
            settings, cfg, dataset, heads, val_dataset=val_dataset, weights=weights
        )
        return cls(settings, batches, cfg=cfg)

    @staticmethod
    def rejection_batches(
        settings: ScreeningSettings,
        cfg: Any,
        dataset: str,
        heads: Optional[Sequence[str]],
        *,
        val_dataset: Optional[str] = None,
        weights: Optional[str] = None,
    ) -> Optional[Dict[str, HeadBatch]]:
        """The loss-rejection batches of ``heads``, or None with rejection disabled.

        ``predictions: fixed``: one forward of the random detector on ``rejection.dataset`` or
        else ``dataset``. ``predictions: linear``: the same forward of the detector of
        ``weights``, recording the predictor's features too, and another on ``val_images``
        images of ``val_dataset``, kept as each batch's :attr:`HeadBatch.held_out`.

        Raises:
            ValueError: naming the setting, for ``linear`` without ``weights`` or
                ``val_dataset``, or a head without a linear predictor over per-RoI features.
        """
        rejection = settings.rejection
        if not rejection.enabled:
            return None
        if not rejection.linear:
            return build_screening_batches(
                cfg,
                dataset=rejection.dataset or dataset,
                num_images=rejection.num_images,
                seed=rejection.seed,
                heads=heads,
            )
        if not weights or not val_dataset:
            raise ValueError(
                "screening.rejection.predictions: linear needs a trained detector's checkpoint "
                "(the search's warm start, proxy.warm_start) and the proxy validation split"
            )
        recorded = [
            build_screening_batches(
                cfg,
                dataset=name,
                num_images=num_images,
                seed=rejection.seed,
                heads=heads,
                weights=weights,
                features=True,
            )
            for name, num_images in (
                (rejection.dataset or dataset, rejection.num_images),
                (val_dataset, rejection.val_images),
            )
        ]
        return {
            head: dataclasses.replace(batch, held_out=recorded[1][head])
            for head, batch in recorded[0].items()
        }

    def head_losses(
        self, overrides: Mapping[str, Any], heads: Optional[Sequence[str]] = None
    ) -> Dict[str, "PAPHeadLoss"]:
        """The candidate's PAP head losses (:func:`candidate_head_losses` on :attr:`cfg`).

        Args:
            overrides: the candidate's config values.
            heads: heads to build (default: those with keys in ``overrides``).
        """
        if heads is None:
            heads = _heads_in(overrides)
        return candidate_head_losses(self.cfg, overrides, heads)

    def fingerprint(self, overrides: Mapping[str, Any]) -> Fingerprint:
        """The candidate's fingerprint over the heads in ``overrides`` (works with the check
        disabled too)."""
        probes = self.probes or GradientProbes.from_settings(self.settings.equivalence)
        return gradient_fingerprint(
            self.head_losses(overrides), probes, self.settings.equivalence.significant_digits
        )

    def reject_score(self, overrides: Mapping[str, Any]) -> Dict[str, RejectionResult]:
        """Run the rejection protocol on every screened head (no decision, no registry)."""
        losses = self.head_losses(overrides, heads=list(self.protocols))
        return {head: protocol.run(losses[head]) for head, protocol in self.protocols.items()}

    def probe(self, overrides: Mapping[str, Any]) -> Tuple[Optional[str], Optional[str]]:
        """``(fingerprint digest, invalid reason)`` of a candidate on the probes.

        The digest is None with the equivalence check disabled; the reason is None for a valid
        candidate (every PAP-loss candidate is: its functions are monotone by construction).
        """
        if not self.settings.equivalence.enabled:
            return None, None
        return self.fingerprint(overrides).digest, None

    def screen(self, overrides: Mapping[str, Any], key: Hashable) -> ScreeningDecision:
        """Decide about one candidate and register its fingerprint under ``key``.

        In order: invalid on the probes (:meth:`probe`) → ``rejected``; a fingerprint an earlier
        candidate had → ``duplicate``; a score of the rejection protocol (``rejection.score``: the
        AP gain or its area under the curve) below ``rejection.min_ap_gain`` on any screened
        head → ``rejected``; else ``accepted``.

        Args:
            overrides: the candidate's config values (``SearchSpace.to_overrides(theta)``).
            key: identifies the trial (e.g. ``(round, index)``); a later equivalent candidate
                is reported as a duplicate of it.

        Returns:
            The decision; ``accepted`` when screening is disabled.
        """
        start = time.perf_counter()
        rejected_reward = float(self.settings.rejection.rejected_reward)
        digest, reason = self.probe(overrides)
        probe_seconds = time.perf_counter() - start
        if reason is not None:
            return ScreeningDecision(
                status="rejected",
                reward=rejected_reward,
                reason=reason,
                probe_seconds=probe_seconds,
                seconds=time.perf_counter() - start,
            )
        if digest is not None:
            earlier = self.registry.lookup(digest)
            if earlier is not None and earlier != key:
                return ScreeningDecision(
                    status="duplicate",
                    fingerprint=digest,
                    duplicate_of=earlier,
                    probe_seconds=probe_seconds,
                    seconds=time.perf_counter() - start,
                )
            self.registry.register(digest, key)
        rejection: Dict[str, RejectionResult] = {}
        status, reward = "accepted", None
        if self.protocols:
            rejection = self.reject_score(overrides)
            if min(r.score for r in rejection.values()) < self.settings.rejection.min_ap_gain:
                status, reward = "rejected", rejected_reward
        return ScreeningDecision(
            status=status,
            fingerprint=digest,
            rejection=rejection,
            reward=reward,
            probe_seconds=probe_seconds,
            seconds=time.perf_counter() - start,
        )
