"""Detectron2 integration. Importing this package registers paploss's backbones and heads.

Registered names: backbones ``build_tiny_resnet_fpn_backbone`` and
``build_tiny_retinanet_resnet_fpn_backbone``.
"""
from . import backbone  # noqa: F401  (registration)
from .config import add_paploss_config

__all__ = ["add_paploss_config"]
