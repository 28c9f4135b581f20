"""Deformable DETR trained with paploss's losses, as a Detectron2 project.

Importing this package registers the meta-architecture ``PAPDeformableDETR`` in Detectron2's
``META_ARCH_REGISTRY`` (and, through :mod:`paploss.modeling`, paploss's heads and tiny
backbones). :func:`add_deformable_detr_config` adds its keys to a config.
"""

from . import backbone  # noqa: F401  (registers build_plain_tiny_resnet_backbone)
from .attention import (
    MultiScaleDeformableAttention,
    ms_deform_attn_reference,
    ms_deform_attn_sample,
)
from .config import DETR_LOSSES, PAP_SUBTREE, add_deformable_detr_config
from .criterion import DeformableDETRCriterion, build_matcher
from .engine import DeformableDETRTrainer, build_train_augmentations, load_config, setup_cfg
from .matcher import HungarianMatcher
from .meta_arch import PAPDeformableDETR
from .solver import build_optimizer, param_groups
from .transformer import DeformableTransformer

__all__ = [
    "DETR_LOSSES",
    "PAP_SUBTREE",
    "DeformableDETRCriterion",
    "DeformableDETRTrainer",
    "DeformableTransformer",
    "HungarianMatcher",
    "MultiScaleDeformableAttention",
    "PAPDeformableDETR",
    "add_deformable_detr_config",
    "build_matcher",
    "build_optimizer",
    "build_train_augmentations",
    "load_config",
    "ms_deform_attn_reference",
    "ms_deform_attn_sample",
    "param_groups",
    "setup_cfg",
]
