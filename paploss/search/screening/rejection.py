"""The loss-rejection protocol: does a candidate loss teach a detector anything at all?

A fixed batch of predictions of a randomly initialised detector
(:func:`paploss.search.screening.batch.build_screening_batches`, one network forward per search)
is optimised directly under the candidate's loss: the logits and the positives' box deltas are
leaf tensors, updated by Adam for a fixed number of steps. COCO bbox AP (pycocotools,
AP@[.5:.95], as the reward) of the detections decoded from the predictions is measured before and
after; a candidate whose score is below ``screening.rejection.min_ap_gain`` is rejected (status
``rejected``) and never trained. The score (``screening.rejection.score``) is the gain at the last
step (``final``) or the area under the AP-gain curve over the steps divided by the steps
(``auc``, :attr:`RejectionResult.auc_gain`), which also rewards how fast a loss teaches.

**What the score does and does not measure.** With Adam each prediction gets its own step size,
so the score asks whether the candidate's gradient *directions* sort positives above negatives
and tighten the boxes; it is invariant to the overall gradient scale and to λ (λ only rescales
the box gradient). Those are judged by the proxy training (and λ is part of the fingerprint of
:mod:`paploss.search.screening.equivalence`). ``optimizer: sgd`` makes the protocol
scale-sensitive instead.

**Heads.** Every searched head is screened on its own batch, recorded from the searched model
itself: RetinaNet anchors × classes, RPN anchors (one class, class-agnostic AP), ROI-head RoIs ×
classes (proposals of the random RPN plus the ground truth boxes, as in training, with per-class
deltas). A multi-head candidate is rejected when any head's gain is below the threshold.

**Mask R-CNN.** The screen scores only the ranking heads, the RPN and the box head (their
ranking losses, :meth:`~paploss.modeling.head_loss.RankingHeadLoss.compute`, and box AP); it does
not score the mask branch's loss (the balanced Dice loss that the head loss adds in training) nor
mask AP. The ROI head's batch carries the positives' mask logits of the random network as fixed
predictions with their ground-truth masks: with ``QUALITY: "mask_iou"`` they enter the quality of
the positives (so the candidate's loss is the one it trains with), but they are not optimised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import torch

from paploss.search.screening.batch import HeadBatch
from paploss.search.settings import RejectionSettings

if TYPE_CHECKING:  # pragma: no cover
    from paploss.modeling.head_loss import RankingHeadLoss

__all__ = ["RejectionResult", "RejectionProtocol"]


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
        score_kind: which value :attr:`score` is (``rejection.score``): ``final`` or ``auc``.
    """

    head: str
    ap_before: float
    ap_after: float
    gain: float
    loss_first: float
    loss_last: float
    curve: Tuple[Tuple[int, float], ...]
    seconds: float
    score_kind: str = "final"

    @property
    def mean_gain(self) -> float:
        """Mean gain over the measured curve (rewards fast progress, not only the end point)."""
        if not self.curve:
            return self.gain
        return sum(ap for _, ap in self.curve) / len(self.curve) - self.ap_before

    @property
    def auc_gain(self) -> float:
        """Area under the AP-gain-versus-steps curve divided by its steps, in AP points.

        Trapezoids from ``(0, 0)`` (no gain before the first step) through the measured
        :attr:`curve`; equal to :attr:`gain` for a loss that gains it all at once, smaller the
        slower the AP rises.
        """
        if not self.curve or self.curve[-1][0] <= 0:
            return self.gain
        area, last_step, last_gain = 0.0, 0, 0.0
        for step, ap in self.curve:
            gain = ap - self.ap_before
            area += 0.5 * (gain + last_gain) * (step - last_step)
            last_step, last_gain = step, gain
        return area / last_step

    @property
    def score(self) -> float:
        """What the rejection threshold is compared with: :attr:`gain` or :attr:`auc_gain`."""
        return self.auc_gain if self.score_kind == "auc" else self.gain

    def to_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data["curve"] = [list(point) for point in self.curve]
        data["score"] = self.score
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
        return self.optimise(
            head_loss,
            groups,
            predictions=lambda: (logits, positive_deltas),
            evaluate=lambda: self._ap_of(logits, positive_deltas),
            finite=lambda: bool(torch.isfinite(logits).all()),
            ap_before=ap_before,
            start=start,
        )

    def optimise(
        self,
        head_loss: "RankingHeadLoss",
        groups: List[Dict[str, Any]],
        *,
        predictions: Callable[[], Tuple[torch.Tensor, torch.Tensor]],
        evaluate: Callable[[], float],
        finite: Callable[[], bool],
        ap_before: float,
        start: float,
    ) -> RejectionResult:
        """The protocol's optimisation loop: ``settings.steps`` steps of ``settings.optimizer``
        on ``groups`` under ``head_loss`` of the batch's ranking with ``predictions()``.

        Args:
            head_loss: the candidate's head loss.
            groups: the optimiser's parameter groups (with their learning rates).
            predictions: ``[R, K]`` logits and ``[P, 4]`` positives' deltas of the current
                parameters (with gradient).
            evaluate: AP (0-100) of the current parameters.
            finite: whether the parameters are still finite.
            ap_before: AP before the first step.
            start: ``time.perf_counter()`` when the measurement started.
        """
        settings = self.settings
        if settings.optimizer == "adam":
            optimizer: torch.optim.Optimizer = torch.optim.Adam(groups)
        else:
            optimizer = torch.optim.SGD(groups, momentum=0.9)
        curve: List[Tuple[int, float]] = []
        loss_first = loss_last = float("nan")
        for step in range(1, settings.steps + 1):
            loss = self.loss(*predictions(), head_loss)
            loss_last = float(loss.detach())
            if step == 1:
                loss_first = loss_last
            if not math.isfinite(loss_last):
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if not finite():  # a non-finite gradient
                break
            if settings.eval_every and step % settings.eval_every == 0 and step < settings.steps:
                curve.append((step, evaluate()))
        if math.isfinite(loss_last) and finite():
            ap_after = evaluate()
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
            score_kind=settings.score,
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
