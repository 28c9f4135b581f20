"""A head loss of this project, registered by name: sigmoid focal loss + GIoU loss.

It is not a ranking loss: every non-ignored (anchor or RoI, class) entry is classified on its
own with the focal loss, and every positive's decoded box is regressed with the GIoU loss, both
normalised by the number of positives. It shows what a project writes to train paploss's heads
(``PAPRetinaNet``, ``PAPRPN``, ``PAPROIHeads``) with a loss of its own:

* a subclass of :class:`paploss.modeling.RankingHeadLoss` with a ``loss_name``, a
  ``@configurable`` constructor, ``from_config(cfg, head, *, head_name, loss_key)`` and
  ``compute(ranking)`` on the :class:`paploss.modeling.HeadRanking` every head hands over;
* ``@HEAD_LOSS_REGISTRY.register()``, after which ``MODEL.PAPLOSS.LOSS: "focal_giou"`` selects
  it in every head;
* its own config keys (``MODEL.FOCAL_GIOU``), added by :func:`add_focal_giou_config`.
"""

from typing import Dict, Tuple

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from fvcore.nn import giou_loss, sigmoid_focal_loss

from paploss.modeling import HEAD_LOSS_REGISTRY, HeadRanking, RankingHeadLoss
from paploss.utils.validation import check_number

__all__ = ["FocalGIoUHeadLoss", "add_focal_giou_config"]


def add_focal_giou_config(cfg: CN) -> None:
    """Add ``MODEL.FOCAL_GIOU`` (the loss's settings, shared by all heads) to a config."""
    cfg.MODEL.FOCAL_GIOU = CN()
    # focal loss: weight of the positive class and focusing parameter (the RetinaNet paper's)
    cfg.MODEL.FOCAL_GIOU.ALPHA = 0.25
    cfg.MODEL.FOCAL_GIOU.GAMMA = 2.0
    # weight of the GIoU box loss
    cfg.MODEL.FOCAL_GIOU.BOX_WEIGHT = 2.0


@HEAD_LOSS_REGISTRY.register()
class FocalGIoUHeadLoss(RankingHeadLoss):
    """``focal(logits) / max(P, 1) + box_weight * sum_P (1 - GIoU(pred, gt)) / max(P, 1)``.

    Scalars (under the head's name): ``focal_cls``, ``focal_box``, ``num_positives``.
    """

    loss_name = "focal_giou"
    config_keys = {
        "alpha": "MODEL.FOCAL_GIOU.ALPHA",
        "gamma": "MODEL.FOCAL_GIOU.GAMMA",
        "box_weight": "MODEL.FOCAL_GIOU.BOX_WEIGHT",
    }

    @configurable
    def __init__(
        self, *, alpha: float = 0.25, gamma: float = 2.0, box_weight: float = 2.0, **kwargs
    ):
        """
        Args:
            alpha: weight of the positive class, in (0, 1].
            gamma: focusing parameter, >= 0.
            box_weight: weight of the GIoU loss, >= 0.
            kwargs: the arguments of :class:`RankingHeadLoss`.
        """
        super().__init__(**kwargs)
        key = self.config_key
        self.alpha = check_number(alpha, key("alpha"), low=0.0, high=1.0, high_inclusive=True)
        self.gamma = check_number(gamma, key("gamma"), low=0.0, low_inclusive=True)
        self.box_weight = check_number(box_weight, key("box_weight"), low=0.0, low_inclusive=True)

    @classmethod
    def from_config(cls, cfg, head: str, *, head_name: str, loss_key: str) -> dict:
        ret = super().from_config(cfg, head, head_name=head_name, loss_key=loss_key)
        node = cfg.MODEL.FOCAL_GIOU
        ret.update(alpha=node.ALPHA, gamma=node.GAMMA, box_weight=node.BOX_WEIGHT)
        return ret

    def compute(self, ranking: HeadRanking) -> Tuple[torch.Tensor, Dict[str, float]]:
        valid = ranking.targets >= 0  # [R * K]: every class of a non-ignored anchor / RoI
        logits = ranking.flat_logits[valid]
        normaliser = max(ranking.num_positives, 1)
        cls_loss = sigmoid_focal_loss(
            logits,
            ranking.targets[valid].to(logits.dtype),
            alpha=self.alpha,
            gamma=self.gamma,
            reduction="sum",
        )
        box_loss = giou_loss(ranking.pred_boxes, ranking.gt_boxes, reduction="sum")
        cls_loss, box_loss = cls_loss / normaliser, box_loss.to(cls_loss.dtype) / normaliser
        scalars = {"focal_cls": cls_loss.item(), "focal_box": box_loss.item()}
        return cls_loss + self.box_weight * box_loss, scalars
