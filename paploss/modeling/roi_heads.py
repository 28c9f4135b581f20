"""``PAPROIHeads``: Fast R-CNN ROI heads whose box predictor trains with one ranking loss.

Shape shorthand as in Detectron2's ``fast_rcnn.py``: ``R`` RoIs of the whole per-device batch,
``K`` foreground classes, ``P`` positive RoIs.
"""

from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Instances
from torch import nn

from .head_loss import RankingHeadLoss, build_head_loss
from .ranking import roi_ranking

__all__ = ["PAPFastRCNNOutputLayers", "PAPROIHeads"]


class PAPFastRCNNOutputLayers(FastRCNNOutputLayers):
    """Fast R-CNN box predictor with sigmoid classification and a ranking loss.

    With a ranking loss, ``cls_score`` predicts ``K`` sigmoid logits (no background logit): every
    (RoI, class) pair of the batch is ranked (:func:`~paploss.modeling.ranking.roi_ranking`).
    Inference is Detectron2's (per-class NMS) on sigmoid scores. With
    ``MODEL.PAPLOSS.LOSS: "stock"`` it is exactly ``FastRCNNOutputLayers``.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, head_loss: RankingHeadLoss, **kwargs):
        """
        Args:
            input_shape: shape of the box head's output features.
            head_loss: the ranking loss of the ROI head (``MODEL.PAPLOSS`` and ``ROI_HEADS``).
            kwargs: the arguments of :class:`FastRCNNOutputLayers`.
        """
        super().__init__(input_shape, **kwargs)
        self.head_loss = head_loss
        if not head_loss.is_stock:
            self.cls_score = nn.Linear(self.cls_score.in_features, self.num_classes)
            nn.init.normal_(self.cls_score.weight, std=0.01)
            nn.init.constant_(self.cls_score.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["head_loss"] = build_head_loss(
            cfg, "ROI_HEADS", head_name="roi_heads", key_prefix="loss_roi_"
        )
        return ret

    def losses(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            predictions: ``(scores [R, K], proposal_deltas [R, K*4 or 4])`` from :meth:`forward`.
            proposals: per-image proposals with ``proposal_boxes``, ``gt_classes`` and
                ``gt_boxes`` (the labelled, possibly sampled, RoIs).

        Returns:
            ``{"loss_roi_<loss>": scalar}``, e.g. ``loss_roi_pap`` (Detectron2's CE + box losses
            when the loss is "stock").
        """
        if self.head_loss.is_stock:
            return super().losses(predictions, proposals)
        return self.head_loss(roi_ranking(predictions, proposals, self.box2box_transform))

    def predict_probs(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> List[torch.Tensor]:
        """Per-image ``[Ri, K + 1]`` class probabilities (sigmoid scores, background column 0)."""
        if self.head_loss.is_stock:
            return super().predict_probs(predictions, proposals)
        scores, _ = predictions
        probs = torch.sigmoid(scores)
        probs = torch.cat([probs, probs.new_zeros((probs.shape[0], 1))], dim=1)
        return list(probs.split([len(p) for p in proposals], dim=0))


@ROI_HEADS_REGISTRY.register()
class PAPROIHeads(StandardROIHeads):
    """``StandardROIHeads`` with :class:`PAPFastRCNNOutputLayers` as box predictor.

    ``MODEL.PAPLOSS.ROI_HEADS.SAMPLE_PROPOSALS: False`` ranks every labelled proposal of the batch
    instead of Detectron2's fixed-size positive/negative sample.
    """

    @configurable
    def __init__(self, *, sample_proposals: bool = True, **kwargs):
        """
        Args:
            sample_proposals: keep Detectron2's proposal sampling (True) or use all (False).
            kwargs: the arguments of :class:`StandardROIHeads`.
        """
        super().__init__(**kwargs)
        self.sample_proposals = sample_proposals

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["sample_proposals"] = cfg.MODEL.PAPLOSS.ROI_HEADS.SAMPLE_PROPOSALS
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = PAPFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret

    def _sample_proposals(
        self, matched_idxs: torch.Tensor, matched_labels: torch.Tensor, gt_classes: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.sample_proposals:
            return super()._sample_proposals(matched_idxs, matched_labels, gt_classes)
        if gt_classes.numel() > 0:
            labels = gt_classes[matched_idxs]
            labels[matched_labels == 0] = self.num_classes
            labels[matched_labels == -1] = -1
        else:
            labels = torch.full_like(matched_idxs, self.num_classes)
        return torch.arange(labels.numel(), device=labels.device), labels
