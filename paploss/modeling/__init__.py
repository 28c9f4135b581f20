"""Detectron2 integration. Importing this package registers paploss's backbones, heads and head
losses.

Registered names:

* meta-architecture ``PAPRetinaNet`` (:class:`~paploss.modeling.retinanet.PAPRetinaNet`),
* proposal generator ``PAPRPN`` (:class:`~paploss.modeling.rpn.PAPRPN`),
* ROI heads ``PAPROIHeads`` (:class:`~paploss.modeling.roi_heads.PAPROIHeads`),
* backbones ``build_tiny_resnet_fpn_backbone``, ``build_tiny_retinanet_resnet_fpn_backbone``,
* head losses ``pap``, ``ap``, ``alrp``, ``rs``, ``stock``, ``graph`` in
  :data:`HEAD_LOSS_REGISTRY`.

Every key they add is under ``cfg.MODEL.PAPLOSS`` (:func:`add_paploss_config`);
``MODEL.PAPLOSS.LOSS`` picks the loss of every head (:func:`build_head_loss`). What a head ranks
is one :class:`HeadRanking`, built by :func:`dense_ranking`, :func:`rpn_ranking` or
:func:`roi_ranking` (:mod:`paploss.modeling.ranking`).
"""

from . import backbone  # noqa: F401  (registration)
from . import graph_loss  # noqa: F401  (registration of LOSS "graph")
from .config import PAP_HEADS, add_paploss_config
from .head_loss import (
    HEAD_LOSS_REGISTRY,
    ALRPHeadLoss,
    APHeadLoss,
    PAPHeadLoss,
    RankingHeadLoss,
    RSHeadLoss,
    StockHeadLoss,
    build_head_loss,
    record_rankings,
)
from .ranking import HeadRanking, class_targets, dense_ranking, roi_ranking, rpn_ranking
from .retinanet import PAPRetinaNet
from .roi_heads import PAPFastRCNNOutputLayers, PAPROIHeads
from .rpn import PAPRPN

__all__ = [
    "ALRPHeadLoss",
    "APHeadLoss",
    "HEAD_LOSS_REGISTRY",
    "HeadRanking",
    "PAPFastRCNNOutputLayers",
    "PAPHeadLoss",
    "PAPROIHeads",
    "PAPRPN",
    "PAPRetinaNet",
    "PAP_HEADS",
    "RSHeadLoss",
    "RankingHeadLoss",
    "StockHeadLoss",
    "add_paploss_config",
    "build_head_loss",
    "class_targets",
    "dense_ranking",
    "record_rankings",
    "roi_ranking",
    "rpn_ranking",
]
