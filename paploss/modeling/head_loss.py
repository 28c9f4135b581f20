"""The loss of one detection head's ranking, shared by the dense, RPN and ROI heads.

Shape shorthand (as in Detectron2's ``fast_rcnn.py``):

* ``R``: number of anchors (dense heads, RPN) or RoIs (ROI head) of the whole per-device batch
* ``K``: number of foreground classes (1 for the RPN)
* ``P``: number of positive anchors / RoIs

A head hands over its classification logits ``[R, K]``, the labels ``[R]`` of its anchors or RoIs
in Detectron2's convention (``0..K-1`` the class of a positive, ``K`` background, ``-1`` ignored),
and the decoded predicted and ground-truth boxes of the positives ``[P, 4]`` in label order.
:class:`RankingHeadLoss` flattens every (anchor or RoI, class) pair into one ranking and computes
the configured loss on it. It logs its parts to Detectron2's event storage under
``<head>/...`` and returns a one-entry loss dict.
"""
from typing import Dict

import torch
from detectron2.utils.events import get_event_storage
from torch import nn

from paploss.losses import PAPFunctions, pap_loss_components, scale_grad
from paploss.losses.box_quality import QUALITY_TYPES, box_quality

from .config import LOSS_NAMES

__all__ = ["RankingHeadLoss", "class_targets"]

#: Loss names of ``MODEL.PAPLOSS.LOSS`` implemented by :class:`RankingHeadLoss`.
RANKING_LOSSES = ("pap",)


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


class RankingHeadLoss(nn.Module):
    """One head's loss over the flattened (anchor or RoI, class) ranking of a batch."""

    def __init__(
        self,
        *,
        loss_name: str,
        functions: PAPFunctions,
        grad_scale: float,
        quality_type: str = "giou",
        head_name: str = "head",
        loss_key: str = "loss_pap",
    ):
        """
        Args:
            loss_name: one of :data:`paploss.modeling.config.LOSS_NAMES`; ``"stock"`` means the
                head uses Detectron2's own losses and this module is not called.
            functions: the PAP loss's five functions for this head.
            grad_scale: λ > 0, scales the gradient reaching the box branch only.
            quality_type: ``"giou"`` (``(GIoU + 1) / 2``) or ``"iou"``.
            head_name: prefix of the event-storage scalars (e.g. ``"retinanet"``).
            loss_key: the key of the returned loss dict.
        """
        super().__init__()
        if loss_name not in LOSS_NAMES:
            raise ValueError(f"MODEL.PAPLOSS.LOSS must be one of {LOSS_NAMES}, got {loss_name!r}")
        if loss_name not in RANKING_LOSSES + ("stock",):
            raise ValueError(
                f"MODEL.PAPLOSS.LOSS={loss_name!r} is not available in the heads yet; "
                f"choose one of {RANKING_LOSSES + ('stock',)}"
            )
        if quality_type not in QUALITY_TYPES:
            raise ValueError(
                f"MODEL.PAPLOSS.QUALITY must be one of {QUALITY_TYPES}, got {quality_type!r}"
            )
        if not float(grad_scale) > 0:
            raise ValueError(f"GRAD_SCALE (λ) must be > 0, got {grad_scale}")
        self.loss_name = loss_name
        self.functions = functions
        self.grad_scale = float(grad_scale)
        self.quality_type = quality_type
        self.head_name = head_name
        self.loss_key = loss_key

    @classmethod
    def from_config(cls, cfg, head: str, *, head_name: str, loss_key: str) -> "RankingHeadLoss":
        """Build from ``cfg.MODEL.PAPLOSS`` and its ``head`` subtree (e.g. ``"RETINANET"``)."""
        node = cfg.MODEL.PAPLOSS
        prefix = f"MODEL.PAPLOSS.{head}"
        grad_scale = node[head].GRAD_SCALE
        if not isinstance(grad_scale, (int, float)) or not grad_scale > 0:
            raise ValueError(f"{prefix}.GRAD_SCALE (λ) must be a number > 0, got {grad_scale!r}")
        return cls(
            loss_name=node.LOSS,
            functions=_config_functions(node[head].FUNCTIONS, f"{prefix}.FUNCTIONS"),
            grad_scale=grad_scale,
            quality_type=node.QUALITY,
            head_name=head_name,
            loss_key=loss_key,
        )

    @property
    def is_stock(self) -> bool:
        """True when the head should use Detectron2's own losses."""
        return self.loss_name == "stock"

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        pred_boxes: torch.Tensor,
        gt_boxes: torch.Tensor,
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            logits: ``[R, K]`` classification logits.
            labels: ``[R]`` labels (``0..K-1`` positive, ``K`` background, ``-1`` ignored).
            pred_boxes: ``[P, 4]`` decoded predicted boxes of the positives, in the order of
                ``labels`` (XYXY), carrying the gradient to the box branch.
            gt_boxes: ``[P, 4]`` their ground-truth boxes.

        Returns:
            ``{loss_key: scalar}``.
        """
        num_classes = logits.shape[1]
        targets = class_targets(labels, num_classes).reshape(-1)
        flat_logits = logits.reshape(-1)
        positive_index = torch.nonzero(targets == 1, as_tuple=True)[0]
        if positive_index.numel() != pred_boxes.shape[0]:
            raise ValueError(
                f"{self.head_name}: {positive_index.numel()} positives in labels but "
                f"{pred_boxes.shape[0]} predicted boxes"
            )
        quality_of_positives = scale_grad(
            box_quality(pred_boxes, gt_boxes, self.quality_type), self.grad_scale
        )
        quality = torch.zeros_like(flat_logits).index_put(
            (positive_index,), quality_of_positives.to(flat_logits.dtype)
        )
        parts = pap_loss_components(flat_logits, targets, quality, self.functions)
        storage = get_event_storage()
        storage.put_scalar(f"{self.head_name}/pap_localization", parts.localization.item())
        storage.put_scalar(f"{self.head_name}/pap_ranking", parts.ranking.item())
        storage.put_scalar(f"{self.head_name}/num_positives", float(parts.num_positives))
        return {self.loss_key: parts.loss}
