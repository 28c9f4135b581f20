"""``PAPROIHeads``: Fast R-CNN ROI heads whose box predictor trains with one ranking loss.

Shape shorthand as in Detectron2's ``fast_rcnn.py``: ``R`` RoIs of the whole per-device batch,
``K`` foreground classes, ``P`` positive RoIs, ``M`` the side of the mask head's output.

With a mask branch (``MODEL.MASK_ON``) and a ranking loss, the mask head's logits of the positive
RoIs are computed before the box loss and handed to the head loss with the ranking
(:func:`~paploss.modeling.ranking.roi_ranking`), which trains the mask branch too (Rank & Sort
Mask R-CNN's Dice loss, balanced to the ranking loss; the ``"mask_iou"`` quality of the PAP loss).
With ``MODEL.PAPLOSS.LOSS: "stock"`` the mask branch is Detectron2's.
"""

from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads import select_foreground_proposals
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
        self,
        predictions: Tuple[torch.Tensor, torch.Tensor],
        proposals: List[Instances],
        mask_logits: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            predictions: ``(scores [R, K], proposal_deltas [R, K*4 or 4])`` from :meth:`forward`.
            proposals: per-image proposals with ``proposal_boxes``, ``gt_classes`` and
                ``gt_boxes`` (the labelled, possibly sampled, RoIs), and ``gt_masks`` with
                ``mask_logits``.
            mask_logits: ``[P, K or 1, M, M]`` mask logits of the positive RoIs (ranking loss
                only; see :func:`~paploss.modeling.ranking.roi_ranking`), or None.

        Returns:
            ``{"loss_roi_<loss>": scalar}``, e.g. ``loss_roi_pap`` (Detectron2's CE + box losses
            when the loss is "stock"), and the mask loss ``loss_mask_dice`` with
            ``mask_logits``.
        """
        if self.head_loss.is_stock:
            return super().losses(predictions, proposals)
        return self.head_loss(
            roi_ranking(predictions, proposals, self.box2box_transform, mask_logits=mask_logits)
        )

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

    With a mask head (``MODEL.MASK_ON``) and a ranking loss, training computes the mask head's
    logits of the positive RoIs first and hands them to the box predictor's loss with the
    ranking (:meth:`_forward_box`), which returns the mask loss too; inference, and training with
    the stock loss, are Detectron2's.
    """

    @configurable
    def __init__(self, *, sample_proposals: bool = True, **kwargs):
        """
        Args:
            sample_proposals: keep Detectron2's proposal sampling (True) or use all (False).
            kwargs: the arguments of :class:`StandardROIHeads`.

        Raises:
            ValueError: naming the key, for a mask branch that a ranking loss cannot train.
        """
        super().__init__(**kwargs)
        self.sample_proposals = sample_proposals
        self.masks_in_ranking = self.mask_on and not self.box_predictor.head_loss.is_stock
        if self.masks_in_ranking:
            if self.train_on_pred_boxes:
                raise ValueError(
                    "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES must be False when a ranking loss "
                    "(MODEL.PAPLOSS.LOSS) trains the mask branch: masks are ranked on the proposals"
                )
            if self.mask_pooler is None or not callable(getattr(self.mask_head, "layers", None)):
                raise ValueError(
                    "MODEL.ROI_MASK_HEAD: a ranking loss (MODEL.PAPLOSS.LOSS) trains pooled mask "
                    "heads with a layers() method (Detectron2's BaseMaskRCNNHead); use "
                    "MODEL.PAPLOSS.LOSS 'stock' with this mask head"
                )

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

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        """Detectron2's box branch; in training with :attr:`masks_in_ranking`, the positives'
        mask logits (:meth:`_positive_mask_logits`) go to the box predictor's loss with the
        ranking.

        Returns:
            In training, a dict of losses (the mask loss included when masks are ranked). In
            inference, the predicted instances.
        """
        if not (self.training and self.masks_in_ranking):
            return super()._forward_box(features, proposals)
        box_features = self.box_pooler(
            [features[f] for f in self.box_in_features], [x.proposal_boxes for x in proposals]
        )
        predictions = self.box_predictor(self.box_head(box_features))
        del box_features
        mask_logits = self._positive_mask_logits(features, proposals)
        return self.box_predictor.losses(predictions, proposals, mask_logits=mask_logits)

    def _positive_mask_logits(
        self, features: Dict[str, torch.Tensor], proposals: List[Instances]
    ) -> torch.Tensor:
        """``[P, K or 1, M, M]`` mask-head logits of the positive RoIs, image after image in
        proposal order (Detectron2's ``select_foreground_proposals``)."""
        positives, _ = select_foreground_proposals(proposals, self.num_classes)
        mask_features = self.mask_pooler(
            [features[f] for f in self.mask_in_features], [x.proposal_boxes for x in positives]
        )
        return self.mask_head.layers(mask_features)

    def _forward_mask(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        """Detectron2's mask branch, except in training with :attr:`masks_in_ranking`, where the
        box branch's loss already trains it (:meth:`_forward_box`)."""
        if self.training and self.masks_in_ranking:
            return {}
        return super()._forward_mask(features, instances)

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
