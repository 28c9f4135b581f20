"""``PAPRPN``: a region proposal network trained with one ranking loss."""

from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY
from detectron2.modeling.proposal_generator import RPN
from detectron2.structures import Boxes
from detectron2.utils.events import get_event_storage

from .head_loss import RankingHeadLoss, build_head_loss
from .ranking import rpn_ranking

__all__ = ["PAPRPN"]


@PROPOSAL_GENERATOR_REGISTRY.register()
class PAPRPN(RPN):
    """RPN trained with ``MODEL.PAPLOSS.LOSS`` (the PAP loss by default).

    The objectness logits of the anchors of the per-device batch form one ranking (one class,
    :func:`~paploss.modeling.ranking.rpn_ranking`).
    By default every anchor that the matcher labels positive or negative takes part;
    ``MODEL.PAPLOSS.RPN.SAMPLE_ANCHORS: True`` ranks only Detectron2's random sample of anchors
    (the others are ignored), as the published PAP RPN does. With ``MODEL.PAPLOSS.LOSS:
    "stock"`` it is exactly Detectron2's RPN.
    """

    @configurable
    def __init__(self, *, head_loss: RankingHeadLoss, sample_anchors: bool = False, **kwargs):
        """
        Args:
            head_loss: the ranking loss of the RPN (``MODEL.PAPLOSS`` and its ``RPN``).
            sample_anchors: rank only the anchors of Detectron2's sampler (always so with the
                stock loss).
            kwargs: the arguments of :class:`detectron2.modeling.proposal_generator.RPN`.
        """
        super().__init__(**kwargs)
        self.head_loss = head_loss
        self.sample_anchors = sample_anchors

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["head_loss"] = build_head_loss(cfg, "RPN", head_name="rpn", key_prefix="loss_rpn_")
        ret["sample_anchors"] = cfg.MODEL.PAPLOSS.RPN.SAMPLE_ANCHORS
        return ret

    def _subsample_labels(self, label: torch.Tensor) -> torch.Tensor:
        if self.head_loss.is_stock or self.sample_anchors:
            return super()._subsample_labels(label)
        return label

    def losses(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[torch.Tensor],
        gt_labels: List[torch.Tensor],
        pred_anchor_deltas: List[torch.Tensor],
        gt_boxes: List[torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            anchors: per-level anchors.
            pred_objectness_logits: per-level ``[N, Hi*Wi*A]`` logits.
            gt_labels: per-image ``[R]`` labels in {-1, 0, 1} (ignore, background, foreground).
            pred_anchor_deltas: per-level ``[N, Hi*Wi*A, 4]`` box deltas.
            gt_boxes: per-image ``[R, 4]`` matched ground-truth boxes.

        Returns:
            ``{"loss_rpn_<loss>": scalar}``, e.g. ``loss_rpn_pap`` (Detectron2's RPN losses when
            the loss is "stock").
        """
        if self.head_loss.is_stock:
            return super().losses(
                anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes
            )
        ranking = rpn_ranking(
            anchors,
            pred_objectness_logits,
            gt_labels,
            pred_anchor_deltas,
            gt_boxes,
            self.box2box_transform,
        )
        num_images = len(gt_labels)
        storage = get_event_storage()
        storage.put_scalar("rpn/num_pos_anchors", ranking.num_positives / num_images)
        num_negatives = (ranking.labels == 1).sum()  # one class: 1 is background
        # Logged under "rpn/" with the head loss's scalars, in the same transfer.
        return self.head_loss(ranking, {"num_neg_anchors": num_negatives / num_images})
