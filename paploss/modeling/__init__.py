"""Detectron2 integration. Importing this package registers paploss's backbones and heads.

Registered names:

* meta-architecture ``PAPRetinaNet`` (:class:`~paploss.modeling.retinanet.PAPRetinaNet`),
* proposal generator ``PAPRPN`` (:class:`~paploss.modeling.rpn.PAPRPN`),
* ROI heads ``PAPROIHeads`` (:class:`~paploss.modeling.roi_heads.PAPROIHeads`),
* backbones ``build_tiny_resnet_fpn_backbone``, ``build_tiny_retinanet_resnet_fpn_backbone``.

Every key they add is under ``cfg.MODEL.PAPLOSS`` (:func:`add_paploss_config`);
``MODEL.PAPLOSS.LOSS`` picks the loss of every head (:func:`build_head_loss`).
"""

from . import backbone  # noqa: F401  (registration)
from .config import add_paploss_config
from .head_loss import (
    ALRPHeadLoss,
    APHeadLoss,
    PAPHeadLoss,
    RankingHeadLoss,
    RSHeadLoss,
    build_head_loss,
    class_targets,
)
from .retinanet import PAPRetinaNet
from .roi_heads import PAPFastRCNNOutputLayers, PAPROIHeads
from .rpn import PAPRPN

__all__ = [
    "ALRPHeadLoss",
    "APHeadLoss",
    "PAPFastRCNNOutputLayers",
    "PAPHeadLoss",
    "PAPROIHeads",
    "PAPRPN",
    "PAPRetinaNet",
    "RSHeadLoss",
    "RankingHeadLoss",
    "add_paploss_config",
    "build_head_loss",
    "class_targets",
]
