"""``build_plain_tiny_resnet_backbone``: paploss's CPU-sized ResNet without an FPN.

Deformable DETR takes the plain ResNet stages (res3-res5, strides 8-32) and adds its own coarser
level, so the tiny CPU configs use the same bottom-up network as paploss's tiny detectors
(:func:`paploss.modeling.backbone.build_tiny_resnet`, widths from
``MODEL.PAPLOSS.TINY_RESNET``) the way the COCO configs use ``build_resnet_backbone``.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import ResNet

from paploss.modeling.backbone import build_tiny_resnet

__all__ = ["build_plain_tiny_resnet_backbone"]


@BACKBONE_REGISTRY.register()
def build_plain_tiny_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """The tiny ResNet with ``MODEL.RESNETS.OUT_FEATURES`` as outputs."""
    return build_tiny_resnet(cfg, input_shape)
