"""Deformable DETR trained with paploss's losses, as a Detectron2 project.

Importing this package registers the meta-architecture ``PAPDeformableDETR`` in Detectron2's
``META_ARCH_REGISTRY`` (and, through :mod:`paploss.modeling`, paploss's heads and tiny
backbones). :func:`add_deformable_detr_config` adds its keys to a config. It also registers the
model with paploss (which never imports projects): its config keys for
:func:`paploss.engine.load_config`, its optimizer for :class:`paploss.engine.Trainer` (and so for
the search's proxy trainings), its class count ``MODEL.DEFORMABLE_DETR.NUM_CLASSES`` for the
start-up data check (:func:`paploss.engine.validate_config_data`), and its PAP-loss head ``DETR``
for the search space; a loss search
imports the package through its ``model.imports`` setting.
"""

from paploss.engine import (
    register_class_count_keys,
    register_config_extension,
    register_optimizer,
)
from paploss.heads import register_pap_heads

from . import backbone  # noqa: F401  (registers build_plain_tiny_resnet_backbone)
from .attention import (
    MultiScaleDeformableAttention,
    ms_deform_attn_reference,
    ms_deform_attn_sample,
)
from .config import DETR_LOSSES, PAP_SUBTREE, add_deformable_detr_config
from .criterion import DeformableDETRCriterion, build_matcher, detr_ranking
from .engine import DeformableDETRTrainer, build_train_augmentations, load_config, setup_cfg
from .matcher import HungarianMatcher
from .meta_arch import PAPDeformableDETR
from .solver import build_optimizer, param_groups
from .transformer import DeformableTransformer

META_ARCHITECTURE = PAPDeformableDETR.__name__

register_config_extension(add_deformable_detr_config, meta_architectures=[META_ARCHITECTURE])
register_optimizer(META_ARCHITECTURE, build_optimizer)
register_class_count_keys(META_ARCHITECTURE, ["MODEL.DEFORMABLE_DETR.NUM_CLASSES"])
register_pap_heads(META_ARCHITECTURE, [PAP_SUBTREE])

__all__ = [
    "DETR_LOSSES",
    "PAP_SUBTREE",
    "DeformableDETRCriterion",
    "DeformableDETRTrainer",
    "DeformableTransformer",
    "HungarianMatcher",
    "META_ARCHITECTURE",
    "MultiScaleDeformableAttention",
    "PAPDeformableDETR",
    "add_deformable_detr_config",
    "build_matcher",
    "build_optimizer",
    "build_train_augmentations",
    "detr_ranking",
    "load_config",
    "ms_deform_attn_reference",
    "ms_deform_attn_sample",
    "param_groups",
    "setup_cfg",
]
