"""The loss of one detection head's ranking, shared by the dense, RPN and ROI heads.

Shape shorthand (as in Detectron2's ``fast_rcnn.py``):

* ``R``: number of anchors (dense heads, RPN) or RoIs (ROI head) of the whole per-device batch
* ``K``: number of foreground classes (1 for the RPN)
* ``P``: number of positive anchors / RoIs

A head hands over its classification logits ``[R, K]``, the labels ``[R]`` of its anchors or RoIs
in Detectron2's convention (``0..K-1`` the class of a positive, ``K`` background, ``-1`` ignored),
and the decoded predicted and ground-truth boxes of the positives ``[P, 4]`` in label order (plus,
for losses with a box-delta regression term, the positives' predicted and target deltas). The
head-loss module flattens every (anchor or RoI, class) pair into one ranking and computes the
configured loss on it. It logs its parts to Detectron2's event storage under ``<head>/...`` and
returns a one-entry loss dict ``{"<prefix><loss name>": total}``.

One class per ``MODEL.PAPLOSS.LOSS``, all subclasses of :class:`RankingHeadLoss`:

* ``"pap"`` (:class:`PAPHeadLoss`): the PAP loss, ranking and localisation in one term; the only
  loss that reads the head's ``FUNCTIONS`` and ``GRAD_SCALE`` (λ).
* ``"ap"`` (:class:`APHeadLoss`): AP-Loss + smooth L1 on the box deltas.
* ``"alrp"`` (:class:`ALRPHeadLoss`): aLRP Loss, classification + self-balanced localisation.
* ``"rs"`` (:class:`RSHeadLoss`): Rank & Sort Loss + score-weighted GIoU loss, value-balanced.
* ``"stock"`` (:class:`StockHeadLoss`): a marker; the head uses Detectron2's own losses.

:func:`build_head_loss` picks the class from the config.
"""

import logging
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes
from detectron2.utils.events import get_event_storage
from fvcore.nn import smooth_l1_loss
from torch import nn

from paploss.losses import (
    PAPFunctions,
    alrp_loss,
    ap_loss,
    pap_loss_components,
    rank_sort_loss,
    scale_grad,
)
from paploss.losses.box_quality import QUALITY_TYPES, box_quality, paired_iou_giou

from .config import LOSS_NAMES

__all__ = [
    "ALRPHeadLoss",
    "ALRPSelfBalance",
    "APHeadLoss",
    "HeadLossInputs",
    "PAPHeadLoss",
    "RSHeadLoss",
    "RankingHeadLoss",
    "StockHeadLoss",
    "build_head_loss",
    "class_targets",
]

logger = logging.getLogger(__name__)

#: Loss names of ``MODEL.PAPLOSS.LOSS`` implemented by a :class:`RankingHeadLoss` subclass.
RANKING_LOSSES = ("pap", "ap", "alrp", "rs")

#: The Detectron2 key of each head's smooth-L1 beta, used by the AP-Loss box term.
_SMOOTH_L1_BETA_KEYS = {
    "RETINANET": ("RETINANET", "SMOOTH_L1_LOSS_BETA"),
    "RPN": ("RPN", "SMOOTH_L1_BETA"),
    "ROI_HEADS": ("ROI_BOX_HEAD", "SMOOTH_L1_BETA"),
}

# RS Loss: a sum of box weights (detached scores) below this normalises by 1 instead (published).
_RS_BOX_WEIGHT_EPS = 1e-10


def class_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-(anchor, class) targets from per-anchor labels.

    Args:
        labels: ``[R]`` int; ``0..K-1`` positive of that class, ``K`` background, ``-1`` ignored.
        num_classes: ``K``.

    Returns:
        ``[R, K]`` int8 targets: 1 at a positive's own class, 0 at every other class of a
        non-ignored anchor, -1 at every class of an ignored anchor.
    """
    targets = torch.zeros((labels.numel(), num_classes), dtype=torch.int8, device=labels.device)
    positive = (labels >= 0) & (labels < num_classes)
    targets[positive, labels[positive]] = 1
    targets[labels < 0] = -1
    return targets


def _config_functions(node, key: str) -> PAPFunctions:
    try:
        return PAPFunctions.from_knots({name: node[name] for name in node.keys()})
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from e


def _config_number(
    value,
    key: str,
    *,
    low: float,
    high: float = float("inf"),
    low_inclusive: bool = False,
    high_inclusive: bool = False,
) -> float:
    """``value`` as a float, or a ``ValueError`` naming ``key`` if it is not in the interval."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    above = is_number and (value >= low if low_inclusive else value > low)
    below = is_number and (value <= high if high_inclusive else value < high)
    if not (above and below):
        interval = f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
        raise ValueError(f"{key} must be a number in {interval}, got {value!r}")
    return float(value)


def _config_positive_int(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value


def _config_nonnegative_int(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be an integer >= 0, got {value!r}")
    return value


class HeadLossInputs(NamedTuple):
    """What :meth:`RankingHeadLoss.forward` hands to a loss, flattened and checked.

    Attributes:
        logits: ``[R, K]`` classification logits.
        flat_logits: ``[M]`` = ``logits.reshape(-1)``, ``M = R * K``.
        targets: ``[M]`` int8 in {1, 0, -1} (:func:`class_targets`, flattened).
        positive_index: ``[P]`` int64 indices of the positives in the ``[M]`` entries, in label
            order (a positive's row is ``positive_index // K``).
        pred_boxes: ``[P, 4]`` decoded predicted boxes of the positives (XYXY).
        gt_boxes: ``[P, 4]`` their ground-truth boxes.
        pred_deltas: ``[P, 4]`` the positives' predicted box deltas, or ``None``.
        gt_deltas: ``[P, 4]`` their regression targets in the same encoding, or ``None``.
    """

    logits: torch.Tensor
    flat_logits: torch.Tensor
    targets: torch.Tensor
    positive_index: torch.Tensor
    pred_boxes: torch.Tensor
    gt_boxes: torch.Tensor
    pred_deltas: Optional[torch.Tensor]
    gt_deltas: Optional[torch.Tensor]

    @property
    def num_positives(self) -> int:
        return self.positive_index.numel()

    def per_entry(self, values: torch.Tensor) -> torch.Tensor:
        """``[M]`` tensor with the positives' ``values [P]`` at their entries, 0 elsewhere."""
        return torch.zeros_like(self.flat_logits).index_put(
            (self.positive_index,), values.to(self.flat_logits.dtype)
        )

    def positive_rows(self) -> torch.Tensor:
        """``[P]`` rows (anchors / RoIs) of the positives in ``logits``."""
        return torch.div(self.positive_index, self.logits.shape[1], rounding_mode="floor")


class RankingHeadLoss(nn.Module):
    """Base class: one head's loss over the flattened (anchor or RoI, class) ranking of a batch.

    Subclasses implement :meth:`compute` for one value of ``MODEL.PAPLOSS.LOSS``; build them with
    :func:`build_head_loss`.
    """

    #: The ``MODEL.PAPLOSS.LOSS`` value a subclass implements.
    loss_name: str = ""
    #: True only for :class:`StockHeadLoss`: the head uses Detectron2's own losses.
    is_stock: bool = False

    def __init__(self, *, head_name: str = "head", loss_key: Optional[str] = None):
        """
        Args:
            head_name: prefix of the event-storage scalars (e.g. ``"retinanet"``).
            loss_key: the key of the returned loss dict (default ``"loss_<loss_name>"``).
        """
        super().__init__()
        self.head_name = head_name
        self.loss_key = loss_key or f"loss_{self.loss_name}"

    @classmethod
    def from_config(cls, cfg, head: str, *, head_name: str, loss_key: str) -> dict:
        """Arguments common to all losses; subclasses add theirs from ``cfg.MODEL.PAPLOSS``.

        Args:
            cfg: a config with :func:`~paploss.modeling.config.add_paploss_config` keys.
            head: the head's subtree of ``MODEL.PAPLOSS`` (``"RETINANET"``, ``"RPN"`` or
                ``"ROI_HEADS"``).
            head_name: prefix of the event-storage scalars.
            loss_key: the key of the returned loss dict.
        """
        return {"head_name": head_name, "loss_key": loss_key}

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        pred_boxes: torch.Tensor,
        gt_boxes: torch.Tensor,
        *,
        pred_deltas: Optional[torch.Tensor] = None,
        gt_deltas: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            logits: ``[R, K]`` classification logits.
            labels: ``[R]`` labels (``0..K-1`` positive, ``K`` background, ``-1`` ignored).
            pred_boxes: ``[P, 4]`` decoded predicted boxes of the positives, in the order of
                ``labels`` (XYXY), carrying the gradient to the box branch.
            gt_boxes: ``[P, 4]`` their ground-truth boxes.
            pred_deltas: ``[P, 4]`` the positives' predicted box deltas (needed by ``"ap"``).
            gt_deltas: ``[P, 4]`` their regression targets (needed by ``"ap"``).

        Returns:
            ``{loss_key: scalar}``.
        """
        num_classes = logits.shape[1]
        targets = class_targets(labels, num_classes).reshape(-1)
        positive_index = torch.nonzero(targets == 1, as_tuple=True)[0]
        if positive_index.numel() != pred_boxes.shape[0]:
            raise ValueError(
                f"{self.head_name}: {positive_index.numel()} positives in labels but "
                f"{pred_boxes.shape[0]} predicted boxes"
            )
        inputs = HeadLossInputs(
            logits=logits,
            flat_logits=logits.reshape(-1),
            targets=targets,
            positive_index=positive_index,
            pred_boxes=pred_boxes,
            gt_boxes=gt_boxes,
            pred_deltas=pred_deltas,
            gt_deltas=gt_deltas,
        )
        loss, scalars = self.compute(inputs)
        storage = get_event_storage()
        for name, value in scalars.items():
            storage.put_scalar(f"{self.head_name}/{name}", value)
        storage.put_scalar(f"{self.head_name}/num_positives", float(inputs.num_positives))
        return {self.loss_key: loss}

    def forward_dense(
        self,
        anchors: List[Boxes],
        logits: torch.Tensor,
        labels: torch.Tensor,
        pred_anchor_deltas: List[torch.Tensor],
        gt_boxes: List[torch.Tensor],
        box2box_transform: Box2BoxTransform,
    ) -> Dict[str, torch.Tensor]:
        """:meth:`forward` for a dense head: decodes the positives' boxes from anchors and deltas.

        Args:
            anchors: per-level anchors, ``R`` in all, shared by the ``N`` images.
            logits: ``[N * R, K]`` classification logits, image-major.
            labels: ``[N, R]`` labels (``0..K-1`` positive, ``K`` background, ``-1`` ignored).
            pred_anchor_deltas: per-level ``[N, Hi*Wi*A, 4]`` predicted box deltas.
            gt_boxes: per-image ``[R, 4]`` ground-truth boxes matched to the anchors.
            box2box_transform: the head's anchor-to-box transform.

        Returns:
            ``{loss_key: scalar}``.
        """
        positive = (labels >= 0) & (labels != logits.shape[1])  # [N, R]
        deltas = cat(pred_anchor_deltas, dim=1)  # [N, R, 4]
        positive_anchors = Boxes.cat(anchors).tensor.unsqueeze(0).expand_as(deltas)[positive]
        positive_deltas = deltas[positive]  # [P, 4]
        positive_gt_boxes = torch.stack(gt_boxes)[positive]
        return self(
            logits,
            labels.reshape(-1),
            box2box_transform.apply_deltas(positive_deltas, positive_anchors),
            positive_gt_boxes,
            pred_deltas=positive_deltas,
            gt_deltas=box2box_transform.get_deltas(positive_anchors, positive_gt_boxes),
        )

    def compute(self, inputs: HeadLossInputs) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The loss of one batch.

        Returns:
            ``(total loss, {scalar name: value})``; the scalars are logged under the head's name.
        """
        raise NotImplementedError


class StockHeadLoss(RankingHeadLoss):
    """``MODEL.PAPLOSS.LOSS: "stock"``: the head keeps Detectron2's losses and never calls this."""

    loss_name = "stock"
    is_stock = True

    @configurable
    def __init__(self, **kwargs):
        """
        Args:
            kwargs: the arguments of :class:`RankingHeadLoss`.
        """
        super().__init__(**kwargs)

    def compute(self, inputs: HeadLossInputs) -> Tuple[torch.Tensor, Dict[str, float]]:
        raise RuntimeError(f"{self.head_name}: the stock head computes Detectron2's own losses")


class PAPHeadLoss(RankingHeadLoss):
    """The PAP loss: ranking and localisation in one term (DESIGN §4).

    The quality of a positive is ``(GIoU + 1) / 2`` or the IoU of its decoded predicted box; λ
    scales only the gradient that reaches the box branch through the quality.
    Scalars: ``pap_ranking``, ``pap_localization`` (their sum is the loss), ``num_positives``.
    """

    loss_name = "pap"

    @configurable
    def __init__(
        self,
        *,
        functions: PAPFunctions,
        grad_scale: float = 1.0,
        quality_type: str = "giou",
        topk: int = 0,
        **kwargs,
    ):
        """
        Args:
            functions: the PAP loss's five functions for this head.
            grad_scale: λ > 0, scales the gradient reaching the box branch only.
            quality_type: ``"giou"`` (``(GIoU + 1) / 2``) or ``"iou"``.
            topk: ``N >= 0``: the j-sums over the N largest valid logits only (the published
                truncation); 0: exact over all entries.
            kwargs: the arguments of :class:`RankingHeadLoss`.
        """
        super().__init__(**kwargs)
        if quality_type not in QUALITY_TYPES:
            raise ValueError(
                f"MODEL.PAPLOSS.QUALITY must be one of {QUALITY_TYPES}, got {quality_type!r}"
            )
        if not float(grad_scale) > 0:
            raise ValueError(f"GRAD_SCALE (λ) must be > 0, got {grad_scale}")
        self.functions = functions
        self.grad_scale = float(grad_scale)
        self.quality_type = quality_type
        self.topk = topk

    @classmethod
    def from_config(cls, cfg, head: str, *, head_name: str, loss_key: str) -> dict:
        ret = super().from_config(cfg, head, head_name=head_name, loss_key=loss_key)
        node = cfg.MODEL.PAPLOSS
        prefix = f"MODEL.PAPLOSS.{head}"
        grad_scale = node[head].GRAD_SCALE
        if not isinstance(grad_scale, (int, float)) or not grad_scale > 0:
            raise ValueError(f"{prefix}.GRAD_SCALE (λ) must be a number > 0, got {grad_scale!r}")
        ret.update(
            functions=_config_functions(node[head].FUNCTIONS, f"{prefix}.FUNCTIONS"),
            grad_scale=grad_scale,
            quality_type=node.QUALITY,
            topk=_config_nonnegative_int(node.TOPK, "MODEL.PAPLOSS.TOPK"),
        )
        return ret

    def compute(self, inputs: HeadLossInputs) -> Tuple[torch.Tensor, Dict[str, float]]:
        quality_of_positives = scale_grad(
            box_quality(inputs.pred_boxes, inputs.gt_boxes, self.quality_type), self.grad_scale
        )
        parts = pap_loss_components(
            inputs.flat_logits,
            inputs.targets,
            inputs.per_entry(quality_of_positives),
            self.functions,
            self.topk,
        )
        scalars = {
            "pap_localization": parts.localization.item(),
            "pap_ranking": parts.ranking.item(),
        }
        return parts.loss, scalars


class APHeadLoss(RankingHeadLoss):
    """AP-Loss for classification plus a smooth-L1 box regression loss.

    ``loss = ap_loss(logits) + sum_P smoothL1(pred_deltas - gt_deltas) / max(P, 1)``: the AP-Loss
    paper keeps the detector's smooth-L1 regression, normalised by the number of positives. The
    deltas are the head's own encoding (``Box2BoxTransform`` with its ``BBOX_REG_WEIGHTS``) and
    beta is the head's Detectron2 smooth-L1 beta (``MODEL.RETINANET.SMOOTH_L1_LOSS_BETA``,
    ``MODEL.RPN.SMOOTH_L1_BETA``, ``MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA``), so the box term is the
    stock head's, normalised by the batch's positives instead of Detectron2's running average.
    The two terms are added with weight 1, as in the paper.
    Scalars: ``ap_cls`` (1 - interpolated AP), ``ap_box``, ``num_positives``.
    """

    loss_name = "ap"

    @configurable
    def __init__(self, *, delta: float = 1.0, smooth_l1_beta: float = 0.0, **kwargs):
        """
        Args:
            delta: half-width of AP-Loss's smoothed step, > 0.
            smooth_l1_beta: beta of the smooth-L1 box loss, >= 0 (0: L1).
            kwargs: the arguments of :class:`RankingHeadLoss`.
        """
        super().__init__(**kwargs)
        self.delta = _config_number(delta, "delta", low=0.0)
        self.smooth_l1_beta = _config_number(
            smooth_l1_beta, "smooth_l1_beta", low=0.0, low_inclusive=True
        )

    @classmethod
    def from_config(cls, cfg, head: str, *, head_name: str, loss_key: str) -> dict:
        ret = super().from_config(cfg, head, head_name=head_name, loss_key=loss_key)
        node, key = _SMOOTH_L1_BETA_KEYS[head]
        ret.update(
            delta=_config_number(cfg.MODEL.PAPLOSS.AP.DELTA, "MODEL.PAPLOSS.AP.DELTA", low=0.0),
            smooth_l1_beta=_config_number(
                cfg.MODEL[node][key], f"MODEL.{node}.{key}", low=0.0, low_inclusive=True
            ),
        )
        return ret

    def compute(self, inputs: HeadLossInputs) -> Tuple[torch.Tensor, Dict[str, float]]:
        if inputs.pred_deltas is None or inputs.gt_deltas is None:
            raise ValueError(f"{self.head_name}: the AP-Loss box term needs pred_deltas, gt_deltas")
        cls_loss = ap_loss(inputs.flat_logits, inputs.targets, self.delta)
        box_loss = smooth_l1_loss(
            inputs.pred_deltas, inputs.gt_deltas, self.smooth_l1_beta, reduction="sum"
        ) / max(inputs.num_positives, 1)
        scalars = {"ap_cls": cls_loss.item(), "ap_box": box_loss.item()}
        return cls_loss + box_loss.to(cls_loss.dtype), scalars


class ALRPSelfBalance(nn.Module):
    """aLRP's self-balancing weight of the localisation term, with its state in buffers.

    The rule of :class:`paploss.losses.ALRPLossBalancer`: the weight starts at
    ``initial_weight`` and every ``period`` calls is reset to ``(mean(L_cls) + mean(L_loc)) /
    mean(L_loc)`` over the calls of that period (kept when ``mean(L_loc) == 0``); the new weight
    already applies to the call that completes the period. The weight and the running sums of
    the period are float64 buffers, so they are part of the model's state dict: checkpoints
    keep them and a resumed training continues the period exactly. They are updated without a
    host synchronisation. Under DistributedDataParallel each process keeps its own values (as
    the published implementation; Detectron2's trainer does not broadcast buffers) and the
    checkpoint holds those of the main process.
    """

    def __init__(self, *, period: int, initial_weight: float = 50.0):
        """
        Args:
            period: number of calls between two resets of the weight, > 0.
            initial_weight: weight until the first reset, > 0.
        """
        super().__init__()
        self.period = _config_positive_int(period, "period")
        initial_weight = _config_number(initial_weight, "initial_weight", low=0.0)
        self.register_buffer("weight", torch.tensor(initial_weight, dtype=torch.float64))
        self.register_buffer("cls_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("loc_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def forward(self, cls_loss: torch.Tensor, loc_loss: torch.Tensor) -> torch.Tensor:
        """Record this call's unweighted losses; return the weight to apply now (a detached
        float64 scalar)."""
        self.cls_sum += cls_loss.detach().to(self.cls_sum)
        self.loc_sum += loc_loss.detach().to(self.loc_sum)
        self.count += 1
        reset = self.count >= self.period
        has_loc = self.loc_sum > 0
        balanced = (self.cls_sum + self.loc_sum) / torch.where(has_loc, self.loc_sum, 1.0)
        self.weight.copy_(torch.where(reset & has_loc, balanced, self.weight))
        self.cls_sum.masked_fill_(reset, 0.0)
        self.loc_sum.masked_fill_(reset, 0.0)
        self.count.masked_fill_(reset, 0)
        return self.weight.clone()

    def extra_repr(self) -> str:
        return f"period={self.period}"


class ALRPHeadLoss(RankingHeadLoss):
    """aLRP Loss: ``L = L_cls + w * L_loc`` with the self-balancing weight ``w``.

    A positive's localisation error is ``E = (1 - GIoU(pred, gt)) / (2 (1 - tau))``; ``L_cls``
    (trained with the aLRP error-driven gradient, which also reads ``E``) and ``L_loc`` (the
    score-ordered localisation term, gradient to the boxes only) come from
    :func:`paploss.losses.alrp_loss`; ``w`` from :class:`ALRPSelfBalance`.
    Scalars: ``alrp_cls``, ``alrp_box`` (unweighted ``L_loc``), ``alrp_box_weight`` (``w``),
    ``num_positives``.
    """

    loss_name = "alrp"

    @configurable
    def __init__(
        self,
        *,
        tau: float = 0.5,
        delta: float = 1.0,
        balance_period: int = 7330,
        initial_weight: float = 50.0,
        **kwargs,
    ):
        """
        Args:
            tau: the IoU threshold of a positive in aLRP's localisation error, in (0, 1).
            delta: half-width of the smoothed step, > 0.
            balance_period: iterations between two resets of the self-balancing weight (one
                epoch in the paper).
            initial_weight: the weight of the localisation term until the first reset.
            kwargs: the arguments of :class:`RankingHeadLoss`.
        """
        super().__init__(**kwargs)
        self.tau = _config_number(tau, "tau", low=0.0, high=1.0)
        self.delta = _config_number(delta, "delta", low=0.0)
        self.balance = ALRPSelfBalance(period=balance_period, initial_weight=initial_weight)

    @classmethod
    def from_config(cls, cfg, head: str, *, head_name: str, loss_key: str) -> dict:
        ret = super().from_config(cfg, head, head_name=head_name, loss_key=loss_key)
        node = cfg.MODEL.PAPLOSS
        ret.update(
            tau=_config_number(
                node[head].ALRP_TAU, f"MODEL.PAPLOSS.{head}.ALRP_TAU", low=0.0, high=1.0
            ),
            delta=_config_number(node.ALRP.DELTA, "MODEL.PAPLOSS.ALRP.DELTA", low=0.0),
            balance_period=_config_positive_int(
                node.ALRP.BALANCE_PERIOD, "MODEL.PAPLOSS.ALRP.BALANCE_PERIOD"
            ),
            initial_weight=_config_number(
                node.ALRP.INITIAL_WEIGHT, "MODEL.PAPLOSS.ALRP.INITIAL_WEIGHT", low=0.0
            ),
        )
        return ret

    def localization_errors(self, pred_boxes: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
        """``[P]`` errors ``(1 - GIoU) / (2 (1 - tau))`` in ``[0, 1 / (1 - tau)]``."""
        _, giou = paired_iou_giou(pred_boxes, gt_boxes)
        return (1 - giou).clamp_min(0.0) / (2 * (1 - self.tau))

    def compute(self, inputs: HeadLossInputs) -> Tuple[torch.Tensor, Dict[str, float]]:
        loc_errors = self.localization_errors(inputs.pred_boxes, inputs.gt_boxes)
        cls_loss, loc_loss = alrp_loss(
            inputs.flat_logits, inputs.targets, inputs.per_entry(loc_errors), self.delta
        )
        weight = self.balance(cls_loss, loc_loss)
        scalars = {
            "alrp_cls": cls_loss.item(),
            "alrp_box": loc_loss.item(),
            "alrp_box_weight": weight.item(),
        }
        return cls_loss + weight.to(loc_loss.dtype) * loc_loss, scalars


class RSHeadLoss(RankingHeadLoss):
    """Rank & Sort Loss with a score-weighted GIoU box loss and value-based balancing.

    The continuous label of a positive is ``y = IoU(detached predicted box, gt)``. The box loss is
    the GIoU loss weighted by each positive's detached maximum class score (sigmoid), normalised
    by the sum of those weights; it is balanced every iteration by ``λ_box = L_RS / L_box``
    (detached; 0 when ``L_box == 0``). ``loss = loss_weight * (L_RS + λ_box * L_box)``, with
    ``loss_weight`` 0.2 for the RPN in the paper.
    Scalars: ``rs_cls`` (``L_RS``), ``rs_box`` (unweighted ``L_box``), ``rs_box_weight``
    (``λ_box``), ``num_positives``.
    """

    loss_name = "rs"

    @configurable
    def __init__(self, *, delta: float = 0.5, loss_weight: float = 1.0, **kwargs):
        """
        Args:
            delta: half-width of the smoothed step, >= 0 (0: the exact step).
            loss_weight: factor of the head's whole loss, > 0.
            kwargs: the arguments of :class:`RankingHeadLoss`.
        """
        super().__init__(**kwargs)
        self.delta = _config_number(delta, "delta", low=0.0, low_inclusive=True)
        self.loss_weight = _config_number(loss_weight, "loss_weight", low=0.0)

    @classmethod
    def from_config(cls, cfg, head: str, *, head_name: str, loss_key: str) -> dict:
        ret = super().from_config(cfg, head, head_name=head_name, loss_key=loss_key)
        node = cfg.MODEL.PAPLOSS
        ret.update(
            delta=_config_number(
                node.RS.DELTA, "MODEL.PAPLOSS.RS.DELTA", low=0.0, low_inclusive=True
            ),
            loss_weight=_config_number(
                node[head].RS_LOSS_WEIGHT, f"MODEL.PAPLOSS.{head}.RS_LOSS_WEIGHT", low=0.0
            ),
        )
        return ret

    def compute(self, inputs: HeadLossInputs) -> Tuple[torch.Tensor, Dict[str, float]]:
        iou, giou = paired_iou_giou(inputs.pred_boxes, inputs.gt_boxes)
        quality = inputs.per_entry(iou.detach().clamp(0.0, 1.0))
        rs = rank_sort_loss(inputs.flat_logits, inputs.targets, quality, self.delta)

        scores = inputs.logits.detach().index_select(0, inputs.positive_rows()).sigmoid()
        box_weights = scores.max(dim=1).values  # [P]
        normaliser = box_weights.sum()
        normaliser = torch.where(normaliser < _RS_BOX_WEIGHT_EPS, 1.0, normaliser)
        box_loss = (box_weights * (1 - giou)).sum() / normaliser

        detached_box = box_loss.detach()
        has_box = detached_box > 0
        box_weight = torch.where(
            has_box, rs.detach() / torch.where(has_box, detached_box, 1.0), 0.0
        )
        total = self.loss_weight * (rs + box_weight.to(rs.dtype) * box_loss.to(rs.dtype))
        scalars = {
            "rs_cls": rs.item(),
            "rs_box": detached_box.item(),
            "rs_box_weight": box_weight.item(),
        }
        return total, scalars


#: The head-loss class of each ``MODEL.PAPLOSS.LOSS``.
HEAD_LOSSES = {
    cls.loss_name: cls for cls in (PAPHeadLoss, APHeadLoss, ALRPHeadLoss, RSHeadLoss, StockHeadLoss)
}


def build_head_loss(cfg, head: str, *, head_name: str, key_prefix: str) -> RankingHeadLoss:
    """The head loss of ``cfg.MODEL.PAPLOSS.LOSS`` for one head.

    Args:
        cfg: a config with :func:`~paploss.modeling.config.add_paploss_config` keys.
        head: the head's subtree of ``MODEL.PAPLOSS``: ``"RETINANET"``, ``"RPN"`` or
            ``"ROI_HEADS"``.
        head_name: prefix of the event-storage scalars (e.g. ``"rpn"``).
        key_prefix: prefix of the loss-dict key, completed with the loss name (e.g.
            ``"loss_rpn_"`` gives ``"loss_rpn_rs"``).

    Raises:
        ValueError: naming the key, for an unknown loss or a bad value of a key it reads.
    """
    loss_name = cfg.MODEL.PAPLOSS.LOSS
    if loss_name not in LOSS_NAMES:
        raise ValueError(f"MODEL.PAPLOSS.LOSS must be one of {LOSS_NAMES}, got {loss_name!r}")
    grad_scale = cfg.MODEL.PAPLOSS[head].GRAD_SCALE
    if loss_name != "pap" and grad_scale != 1.0:
        logger.warning(
            f"MODEL.PAPLOSS.{head}.GRAD_SCALE={grad_scale} only applies to the 'pap' loss; "
            f"it is ignored with MODEL.PAPLOSS.LOSS={loss_name!r}"
        )
    return HEAD_LOSSES[loss_name](
        cfg, head, head_name=head_name, loss_key=f"{key_prefix}{loss_name}"
    )
