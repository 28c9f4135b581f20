"""Screening of candidate losses before any proxy training (AutoLoss-Zero style).

Three independent checks, each switchable in :class:`ScreeningSettings`:

1. **Gradient-equivalence check** (:func:`gradient_fingerprint`, :class:`EquivalenceRegistry`).
   A candidate is fingerprinted by its per-sample gradient norms on fixed random probe rankings
   (:class:`GradientProbes`): for each probe sample ``b`` and each head, ``||dL_b/ds_b||`` over the
   logits and ``||dL_b/du_b||`` over the positives' qualities (the latter after the head's
   gradient scale λ), rounded to a few significant digits. Equal fingerprints mean equivalent
   candidates: the later one reuses the reward of the first (status ``duplicate``).
2. **Loss-rejection protocol** (:class:`RejectionProtocol`). A fixed batch of predictions of a
   randomly initialised detector (:func:`paploss.search.screening.batch.build_screening_batches`,
   one network forward per search) is optimised directly under the candidate's PAP loss: the
   logits and the positives' box deltas are leaf tensors, updated by Adam for a fixed number of
   steps. COCO bbox AP (pycocotools, AP@[.5:.95], as the reward) of the detections decoded from
   the predictions is measured before and after; a candidate whose gain is below a threshold is
   rejected (status ``rejected``) and never trained.
3. **Early stop of invalid trainings** (:class:`paploss.engine.hooks.InvalidTrainingHook`): a Detectron2 hook that
   stops a proxy training as soon as its predictions or its loss become NaN/infinite, or its loss
   stays constant over a window, by raising an ``InvalidTrainingError`` (a
   ``FloatingPointError``, so the trial runner marks the trial *diverged*).

:class:`Screener` combines 1 and 2 for the search controller::

    screener = Screener.build(settings.screening, cfg, dataset=proxy_train_set)
    decision = screener.screen(space.to_overrides(theta), key=(round_index, trial_index))
    decision.status        # "accepted", "rejected" or "duplicate"
    decision.metrics()     # JSON-able, for the journal

:class:`paploss.search.controller.SearchController` does this before each round is stored
and installs ``InvalidTrainingHook`` in every proxy training. The settings are
:class:`~paploss.search.settings.ScreeningSettings` (in the one settings module, which loads
without torch or Detectron2).

**What the rejection score does and does not measure.** With Adam each prediction gets its own
step size, so the score asks whether the candidate's gradient *directions* sort positives above
negatives and tighten the boxes; it is invariant to the overall gradient scale and to λ (λ only
rescales the box gradient). Those are judged by the proxy training (and λ is part of the
fingerprint). ``optimizer: sgd`` makes the protocol scale-sensitive instead.

**Heads.** Every searched head is screened on its own batch, recorded from the searched model
itself: RetinaNet anchors × classes, RPN anchors (one class, class-agnostic AP), ROI-head RoIs ×
classes (proposals of the random RPN plus the ground truth boxes, as in training, with per-class
deltas). A multi-head candidate is rejected when any head's gain is below the threshold.

**One definition of the loss.** The screen does not re-implement what a head trains on: the batch
is the head's own :class:`~paploss.modeling.ranking.HeadRanking` (recorded from the head-loss
module's input), and a candidate's loss is the head loss the candidate trains with,
:class:`~paploss.modeling.head_loss.PAPHeadLoss` built by
:func:`~paploss.modeling.build_head_loss` from the model's config with the candidate's overrides
(:meth:`Screener.head_losses`, so the quality type, the functions and λ are read by the same
code), evaluated with its own :meth:`~paploss.modeling.head_loss.RankingHeadLoss.compute` on the
ranking decoded from the optimised predictions
(:meth:`~paploss.modeling.ranking.HeadRanking.with_predictions`). The fingerprint reads the
functions and λ from those same head losses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import torch

from paploss.heads import PAP_HEADS
from paploss.losses import pap_loss, scale_grad
from paploss.search.screening.batch import HeadBatch, build_screening_batches
from paploss.search.settings import EquivalenceSettings, RejectionSettings, ScreeningSettings

if TYPE_CHECKING:  # pragma: no cover
    from paploss.modeling.head_loss import PAPHeadLoss, RankingHeadLoss

__all__ = [
    "candidate_head_losses",
    "RejectionResult",
    "RejectionProtocol",
    "GradientProbes",
    "Fingerprint",
    "gradient_fingerprint",
    "EquivalenceRegistry",
    "ScreeningDecision",
    "Screener",
]

_CONFIG_PREFIX = "MODEL.PAPLOSS"


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
        if key.startswith(f"{_CONFIG_PREFIX}."):
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
    return [h for h in PAP_HEADS if any(k.startswith(f"{_CONFIG_PREFIX}.{h}.") for k in overrides)]


# ------------------------------------------------------------------------------------ rejection


@dataclass(frozen=True)
class RejectionResult:
    """The loss-rejection protocol on one head.

    Attributes:
        head: the head.
        ap_before: AP (0-100) of the random network's predictions.
        ap_after: AP after optimising the predictions under the candidate loss.
        gain: ``ap_after - ap_before``.
        loss_first: the candidate loss at the first step.
        loss_last: the candidate loss at the last step.
        curve: ``(step, AP)`` measured every ``eval_every`` steps (last step included).
        seconds: wall time of the optimisation and evaluation.
    """

    head: str
    ap_before: float
    ap_after: float
    gain: float
    loss_first: float
    loss_last: float
    curve: Tuple[Tuple[int, float], ...]
    seconds: float

    @property
    def mean_gain(self) -> float:
        """Mean gain over the measured curve (rewards fast progress, not only the end point)."""
        if not self.curve:
            return self.gain
        return sum(ap for _, ap in self.curve) / len(self.curve) - self.ap_before

    def to_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data["curve"] = [list(point) for point in self.curve]
        return data


class RejectionProtocol:
    """Optimise one head's fixed predictions under a candidate loss and measure the AP gain.

    The loss is the candidate's head loss (:meth:`~paploss.modeling.head_loss.RankingHeadLoss.
    compute`) on the head's ranking with the optimised predictions
    (:meth:`~paploss.modeling.ranking.HeadRanking.with_predictions`): the ``[R, K]`` logits and
    the positives' ``[P, 4]`` deltas are the leaf tensors (only the positives' deltas can receive
    a gradient).

    Detections for AP: per image, the ``candidates_per_image`` highest (anchor, class) logits,
    decoded, clipped to the image, per-class NMS, the ``detections_per_image`` best kept. Logits
    are used as scores directly (a ranking loss fixes no scale, so no score threshold; no sigmoid
    saturation ties). AP is COCO's AP@[.5:.95] (area "all", 100 detections) against every ground
    truth box of the batch images, in the network input frame.

    Args:
        batch: the head's fixed predictions.
        settings: the protocol's settings.
    """

    def __init__(self, batch: HeadBatch, settings: RejectionSettings) -> None:
        self.batch = batch
        self.settings = settings
        self._coco_gt = _coco_ground_truth(batch)
        image_index = batch.ranking.image_index
        self._image_rows = [
            torch.nonzero(image_index == i, as_tuple=True)[0] for i in range(batch.num_images)
        ]
        self._ap_before: Optional[float] = None

    @property
    def ap_before(self) -> float:
        """AP of the random network's predictions (computed once)."""
        if self._ap_before is None:
            ranking = self.batch.ranking
            self._ap_before = self.average_precision(ranking.logits, ranking.deltas)
        return self._ap_before

    def loss(
        self, logits: torch.Tensor, positive_deltas: torch.Tensor, head_loss: "RankingHeadLoss"
    ) -> torch.Tensor:
        """The candidate's loss of predictions, as the head computes it in training.

        Args:
            logits: ``[R, K]`` logits.
            positive_deltas: ``[P, 4]`` deltas of the positives (in label order).
            head_loss: the candidate's head loss (:func:`candidate_head_losses`).
        """
        loss, _ = head_loss.compute(self.batch.ranking.with_predictions(logits, positive_deltas))
        return loss

    def run(self, head_loss: "RankingHeadLoss") -> RejectionResult:
        """Optimise the predictions for ``settings.steps`` steps under ``head_loss`` and measure
        the AP gain."""
        start = time.perf_counter()
        settings = self.settings
        ap_before = self.ap_before
        logits = self.batch.ranking.logits.clone().requires_grad_(True)
        positive_deltas = self.batch.ranking.pred_deltas.clone().requires_grad_(True)
        groups = [
            {"params": [logits], "lr": settings.logit_lr},
            {"params": [positive_deltas], "lr": settings.box_lr},
        ]
        if settings.optimizer == "adam":
            optimizer: torch.optim.Optimizer = torch.optim.Adam(groups)
        else:
            optimizer = torch.optim.SGD(groups, momentum=0.9)
        curve: List[Tuple[int, float]] = []
        loss_first = loss_last = float("nan")
        for step in range(1, settings.steps + 1):
            loss = self.loss(logits, positive_deltas, head_loss)
            loss_last = float(loss.detach())
            if step == 1:
                loss_first = loss_last
            if not math.isfinite(loss_last):
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if not bool(torch.isfinite(logits).all()):  # a non-finite gradient
                break
            if settings.eval_every and step % settings.eval_every == 0 and step < settings.steps:
                curve.append((step, self._ap_of(logits, positive_deltas)))
        if math.isfinite(loss_last) and bool(torch.isfinite(logits).all()):
            ap_after = self._ap_of(logits, positive_deltas)
        else:
            ap_after = 0.0  # the candidate broke the predictions
        curve.append((settings.steps, ap_after))
        return RejectionResult(
            head=self.batch.head,
            ap_before=ap_before,
            ap_after=ap_after,
            gain=ap_after - ap_before,
            loss_first=loss_first,
            loss_last=loss_last,
            curve=tuple(curve),
            seconds=time.perf_counter() - start,
        )

    def _ap_of(self, logits: torch.Tensor, positive_deltas: torch.Tensor) -> float:
        with torch.no_grad():
            ranking = self.batch.ranking.with_predictions(logits.detach(), positive_deltas.detach())
            return self.average_precision(ranking.logits, ranking.deltas)

    @torch.no_grad()
    def average_precision(self, logits: torch.Tensor, deltas: torch.Tensor) -> float:
        """COCO AP@[.5:.95] (0-100) of the detections decoded from predictions.

        Args:
            logits: ``[R, K]`` logits.
            deltas: ``[R, 4]`` or ``[R, K, 4]`` box deltas.
        """
        from torchvision.ops import batched_nms

        settings = self.settings
        ranking = self.batch.ranking
        num_classes = ranking.num_classes
        detections: List[Dict[str, Any]] = []
        for image, rows in enumerate(self._image_rows):
            scores = logits[rows].reshape(-1)
            top = scores.topk(min(settings.candidates_per_image, scores.numel())).indices
            candidate_rows, classes = rows[top // num_classes], top % num_classes
            candidate_deltas = (
                deltas[candidate_rows] if deltas.dim() == 2 else deltas[candidate_rows, classes]
            )
            boxes = ranking.box2box_transform.apply_deltas(
                candidate_deltas, ranking.reference_boxes[candidate_rows]
            )
            height, width = self.batch.image_sizes[image]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            candidate_scores = scores[top]
            keep = batched_nms(
                boxes.float(), candidate_scores.float(), classes, settings.nms_threshold
            )
            keep = keep[: settings.detections_per_image]
            for (x0, y0, x1, y1), category, score in zip(
                boxes[keep].tolist(), classes[keep].tolist(), candidate_scores[keep].tolist()
            ):
                detections.append(
                    {
                        "image_id": image,
                        "category_id": category,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": score,
                    }
                )
        return _coco_box_ap(self._coco_gt, detections, settings.detections_per_image)


def _coco_ground_truth(batch: HeadBatch) -> Any:
    """An in-memory pycocotools ``COCO`` of the batch images' ground truth (input frame)."""
    from pycocotools.coco import COCO

    images, annotations = [], []
    for image, ((height, width), boxes, classes) in enumerate(
        zip(batch.image_sizes, batch.gt_boxes, batch.gt_classes)
    ):
        images.append({"id": image, "height": height, "width": width})
        for (x0, y0, x1, y1), category in zip(boxes.tolist(), classes.tolist()):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image,
                    "category_id": int(category),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k, "name": str(k)} for k in range(batch.num_classes)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _coco_box_ap(coco_gt: Any, detections: List[Dict[str, Any]], max_detections: int) -> float:
    """COCO AP@[.5:.95] in percent, as ``COCOeval.summarize`` reports it (stats[0])."""
    from pycocotools.cocoeval import COCOeval

    if not detections:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.maxDets = [1, 10, max_detections]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [T, R, K], area "all", max dets
    valid = precision[precision > -1]
    return 100.0 * float(valid.mean()) if valid.size else 0.0


# ------------------------------------------------------------------------------------ equivalence


class GradientProbes:
    """Fixed random rankings on which candidates are fingerprinted.

    Each of the ``B`` samples has ``M`` entries: ``num_positives`` positives with qualities
    uniform in [0, 1], a few ignored entries, the rest negatives. Logits are normal with a
    per-sample spread from 0.1 to 3, so the probes exercise H1/H2 both on the ramp around a
    zero logit gap and far from it.

    Attributes:
        logits: ``[B, M]`` float64.
        targets: ``[B, M]`` int8 in {1, 0, -1}.
        quality: ``[B, M]`` float64, in [0, 1] at positives, 0 elsewhere.
    """

    def __init__(
        self, num_samples: int = 16, num_entries: int = 64, num_positives: int = 8, seed: int = 0
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        spreads = torch.logspace(-1, math.log10(3.0), num_samples, dtype=torch.float64)
        self.logits = torch.randn(
            num_samples, num_entries, generator=generator, dtype=torch.float64
        )
        self.logits *= spreads[:, None]
        order = torch.argsort(torch.rand(num_samples, num_entries, generator=generator), dim=1)
        targets = torch.zeros(num_samples, num_entries, dtype=torch.int8)
        num_ignored = max(1, num_positives // 4)
        targets.scatter_(1, order[:, :num_positives], 1)
        targets.scatter_(1, order[:, num_positives : num_positives + num_ignored], -1)
        self.targets = targets
        quality = torch.rand(num_samples, num_entries, generator=generator, dtype=torch.float64)
        self.quality = torch.where(targets == 1, quality, torch.zeros_like(quality))

    @classmethod
    def from_settings(cls, settings: EquivalenceSettings) -> "GradientProbes":
        return cls(
            settings.probe_samples, settings.probe_entries, settings.probe_positives, settings.seed
        )

    @property
    def num_samples(self) -> int:
        return int(self.logits.shape[0])

    def gradient_norms(self, head_loss: "PAPHeadLoss") -> torch.Tensor:
        """``[B, 2]`` per-sample ``(||dL_b/ds_b||, ||dL_b/du_b||)`` of the PAP loss with
        ``head_loss``'s functions (u after ``scale_grad`` with its λ)."""
        norms = torch.empty(self.num_samples, 2, dtype=torch.float64)
        for b in range(self.num_samples):
            logits = self.logits[b].clone().requires_grad_(True)
            quality = self.quality[b].clone().requires_grad_(True)
            loss = pap_loss(
                logits,
                self.targets[b],
                scale_grad(quality, head_loss.grad_scale),
                head_loss.functions,
            )
            grad_logits, grad_quality = torch.autograd.grad(loss, (logits, quality))
            norms[b, 0] = grad_logits.norm()
            norms[b, 1] = grad_quality.norm()
        return norms


def _round_significant(value: float, digits: int) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits - 1}e}")


@dataclass(frozen=True)
class Fingerprint:
    """A candidate's rounded per-sample gradient norms.

    Attributes:
        values: per head, ``(head, ((||ds||, ||du||) rounded, ...) per probe sample)``.
        digest: SHA-256 hex digest of ``values`` (what registries and journals store).
    """

    values: Tuple[Tuple[str, Tuple[Tuple[float, float], ...]], ...]
    digest: str


def gradient_fingerprint(
    head_losses: Mapping[str, "PAPHeadLoss"], probes: GradientProbes, significant_digits: int = 2
) -> Fingerprint:
    """Fingerprint a candidate by its per-sample gradient norms on ``probes``.

    Args:
        head_losses: head → the candidate's PAP head loss (its functions and λ).
        probes: the fixed probe rankings (the same for the whole search).
        significant_digits: digits each norm is rounded to.

    Returns:
        A hashable :class:`Fingerprint`; candidates that differ only below the rounding get equal
        ones.
    """
    values = []
    order = {head: index for index, head in enumerate(PAP_HEADS)}
    for head in sorted(head_losses, key=lambda h: order.get(h, len(order))):
        norms = probes.gradient_norms(head_losses[head]).tolist()
        rounded = tuple(
            (_round_significant(ds, significant_digits), _round_significant(du, significant_digits))
            for ds, du in norms
        )
        values.append((head, rounded))
    text = json.dumps(values, separators=(",", ":"))
    return Fingerprint(tuple(values), hashlib.sha256(text.encode("utf-8")).hexdigest())


class EquivalenceRegistry:
    """Fingerprint digest → the first trial that had it.

    Keys are whatever identifies a trial for the caller (e.g. ``(round, index)`` or a trial id).
    Rebuild it on resume by registering the stored digests in trial order.
    """

    def __init__(self) -> None:
        self._first: Dict[str, Hashable] = {}

    def __len__(self) -> int:
        return len(self._first)

    def __contains__(self, digest: object) -> bool:
        return digest in self._first

    def lookup(self, digest: str) -> Optional[Hashable]:
        """The trial that first had ``digest``, or None."""
        return self._first.get(digest)

    def register(self, digest: str, key: Hashable) -> Optional[Hashable]:
        """Record ``key`` under ``digest`` unless already taken.

        Returns:
            None if ``key`` is the first with this digest (or re-registers itself), otherwise the
            key of the earlier equivalent trial (the registry is unchanged).
        """
        first = self._first.setdefault(digest, key)
        return None if first == key else first


# ------------------------------------------------------------------------------------ screener


@dataclass(frozen=True)
class ScreeningDecision:
    """What screening decided about one candidate.

    Attributes:
        status: ``"accepted"`` (train it), ``"rejected"`` or ``"duplicate"``.
        fingerprint: the candidate's fingerprint digest (None with the check disabled).
        duplicate_of: the key of the earlier equivalent trial (``duplicate`` only).
        rejection: per-head results of the rejection protocol (empty when it did not run).
        reward: the reward to record now: ``rejected_reward`` for ``rejected``, else None (a
            duplicate takes its original's reward once that is known).
        seconds: wall time of the screening.
    """

    status: str
    fingerprint: Optional[str] = None
    duplicate_of: Optional[Hashable] = None
    rejection: Dict[str, RejectionResult] = field(default_factory=dict)
    reward: Optional[float] = None
    seconds: float = 0.0

    @property
    def journal_status(self) -> str:
        """Initial journal status: ``pending`` (to train), ``rejected`` or ``duplicate``."""
        return "pending" if self.status == "accepted" else self.status

    @property
    def score(self) -> Optional[float]:
        """The rejection score: the smallest per-head AP gain (None when not run)."""
        return min(r.gain for r in self.rejection.values()) if self.rejection else None

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
                head: RejectionProtocol(batch, settings.rejection)
                for head, batch in batches.items()
            }
        self.probes = probes
        if settings.equivalence.enabled and probes is None:
            self.probes = GradientProbes.from_settings(settings.equivalence)
        self.registry = registry if registry is not None else EquivalenceRegistry()

    @classmethod
    def build(
        cls,
        settings: ScreeningSettings,
        cfg: Any,
        *,
        dataset: str,
        heads: Optional[Sequence[str]] = None,
    ) -> "Screener":
        """A screener for the model of ``cfg``: records the batches (one network forward).

        Args:
            settings: screening settings.
            cfg: the searched model's Detectron2 config (:func:`paploss.engine.setup_cfg`).
            dataset: the proxy training split (used unless ``rejection.dataset`` is set).
            heads: searched heads (default: every PAP head of the model).
        """
        batches = None
        if settings.rejection.enabled:
            batches = build_screening_batches(
                cfg,
                dataset=settings.rejection.dataset or dataset,
                num_images=settings.rejection.num_images,
                seed=settings.rejection.seed,
                heads=heads,
            )
        return cls(settings, batches, cfg=cfg)

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

    def screen(self, overrides: Mapping[str, Any], key: Hashable) -> ScreeningDecision:
        """Decide about one candidate and register its fingerprint under ``key``.

        Args:
            overrides: the candidate's config values (``SearchSpace.to_overrides(theta)``).
            key: identifies the trial (e.g. ``(round, index)``); a later equivalent candidate
                is reported as a duplicate of it.

        Returns:
            The decision; ``accepted`` when screening is disabled.
        """
        start = time.perf_counter()
        digest = None
        if self.settings.equivalence.enabled:
            digest = self.fingerprint(overrides).digest
            earlier = self.registry.lookup(digest)
            if earlier is not None and earlier != key:
                return ScreeningDecision(
                    status="duplicate",
                    fingerprint=digest,
                    duplicate_of=earlier,
                    seconds=time.perf_counter() - start,
                )
            self.registry.register(digest, key)
        rejection: Dict[str, RejectionResult] = {}
        status, reward = "accepted", None
        if self.protocols:
            rejection = self.reject_score(overrides)
            if min(r.gain for r in rejection.values()) < self.settings.rejection.min_ap_gain:
                status, reward = "rejected", float(self.settings.rejection.rejected_reward)
        return ScreeningDecision(
            status=status,
            fingerprint=digest,
            rejection=rejection,
            reward=reward,
            seconds=time.perf_counter() - start,
        )
