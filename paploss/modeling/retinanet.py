"""``PAPRetinaNet``: RetinaNet whose classification and box losses are one ranking loss."""

from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.structures import Boxes
from detectron2.utils.events import get_event_storage

from .head_loss import RankingHeadLoss, build_head_loss
from .ranking import dense_ranking

__all__ = ["PAPRetinaNet"]


@META_ARCH_REGISTRY.register()
class PAPRetinaNet(RetinaNet):
    """RetinaNet trained with ``MODEL.PAPLOSS.LOSS`` (the PAP loss by default).

    Only :meth:`losses` differs from :class:`detectron2.modeling.RetinaNet`: anchor labelling,
    the head and inference are Detectron2's. Every (anchor, class) pair of the per-device batch
    enters one ranking (:func:`~paploss.modeling.ranking.dense_ranking`); the positives' box
    quality comes from their decoded predicted boxes.
    With ``MODEL.PAPLOSS.LOSS: "stock"`` it is exactly Detectron2's RetinaNet.
    """

    @configurable
    def __init__(self, *, head_loss: RankingHeadLoss, **kwargs):
        """
        Args:
            head_loss: the ranking loss of the head (``MODEL.PAPLOSS`` and its ``RETINANET``).
            kwargs: the arguments of :class:`detectron2.modeling.RetinaNet`.
        """
        super().__init__(**kwargs)
        self.head_loss = head_loss

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["head_loss"] = build_head_loss(
            cfg, "RETINANET", head_name="retinanet", key_prefix="loss_"
        )
        return ret

    def losses(
        self,
        anchors: List[Boxes],
        pred_logits: List[torch.Tensor],
        gt_labels: List[torch.Tensor],
        pred_anchor_deltas: List[torch.Tensor],
        gt_boxes: List[torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            anchors: per-level anchors (``Boxes`` of ``Hi*Wi*A`` each).
            pred_logits: per-level ``[N, Hi*Wi*A, K]`` classification logits.
            gt_labels: per-image ``[R]`` labels in {-1, 0..K-1, K}.
            pred_anchor_deltas: per-level ``[N, Hi*Wi*A, 4]`` box deltas.
            gt_boxes: per-image ``[R, 4]`` matched ground-truth boxes.

        Returns:
            ``{"loss_<loss>": scalar}``, e.g. ``loss_pap`` (Detectron2's focal + box losses when
            the loss is "stock").
        """
        if self.head_loss.is_stock:
            return super().losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        ranking = dense_ranking(
            anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, self.box2box_transform
        )
        get_event_storage().put_scalar("num_pos_anchors", ranking.num_positives / len(gt_labels))
        return self.head_loss(ranking)
