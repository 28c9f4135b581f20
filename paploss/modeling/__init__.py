"""Detectron2 integration. Importing this package registers paploss's backbones and heads.

Registered names:

* meta-architecture ``PAPRetinaNet`` (:class:`~paploss.modeling.retinanet.PAPRetinaNet`),
* proposal generator ``PAPRPN`` (:class:`~paploss.modeling.rpn.PAPRPN`),
* ROI heads ``PAPROIHeads`` (:class:`~paploss.modeling.roi_heads.PAPROIHeads`),
* backbones ``build_tiny_resnet_fpn_backbone``, ``build_tiny_retinanet_resnet_fpn_backbone``.

Every key they read is under ``cfg.MODEL.PAPLOSS`` (:func:`add_paploss_config`).
"""
from . import backbone  # noqa: F401  (registration)
from .config import add_paploss_config
from .head_loss import RankingHeadLoss, class_targets
from .retinanet import PAPRetinaNet
from .roi_heads import PAPFastRCNNOutputLayers, PAPROIHeads
from .rpn import PAPRPN

__all__ = [
    "PAPFastRCNNOutputLayers",
    "PAPROIHeads",
    "PAPRPN",
    "PAPRetinaNet",
    "RankingHeadLoss",
    "add_paploss_config",
    "class_targets",
]
