"""A narrow ResNet-FPN backbone that trains in minutes on a CPU.

Built from Detectron2's own ResNet pieces (``BasicStem``, ``BasicBlock``, ``ResNet``) and FPN, only
narrower and shallower, so the detectors here exercise exactly the code path of the R50-FPN models
used on COCO. Registered in ``BACKBONE_REGISTRY`` as:

* ``build_tiny_resnet_fpn_backbone``: P2-P6 (Faster R-CNN / RPN), like
  ``build_resnet_fpn_backbone``;
* ``build_tiny_retinanet_resnet_fpn_backbone``: P3-P7 (RetinaNet), like
  ``build_retinanet_resnet_fpn_backbone``.

Width and depth come from ``cfg.MODEL.PAPLOSS.TINY_RESNET``.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem

__all__ = [
    "build_tiny_resnet",
    "build_tiny_resnet_fpn_backbone",
    "build_tiny_retinanet_resnet_fpn_backbone",
]


def build_tiny_resnet(cfg, input_shape: ShapeSpec) -> ResNet:
    """A ResNet of ``BasicBlock`` stages ``res2``-``res5`` (strides 4-32) with configurable widths.

    Args:
        cfg: a Detectron2 config with ``MODEL.PAPLOSS.TINY_RESNET`` and ``MODEL.RESNETS.NORM``,
            ``MODEL.RESNETS.OUT_FEATURES``, ``MODEL.BACKBONE.FREEZE_AT``.
        input_shape: the image input shape (channels used).
    """
    tiny = cfg.MODEL.PAPLOSS.TINY_RESNET
    widths, depths = list(tiny.STAGE_CHANNELS), list(tiny.BLOCKS_PER_STAGE)
    if len(widths) != 4 or len(depths) != 4:
        raise ValueError(
            "MODEL.PAPLOSS.TINY_RESNET.STAGE_CHANNELS and BLOCKS_PER_STAGE need 4 entries "
            f"(res2..res5), got {widths} and {depths}"
        )
    norm = cfg.MODEL.RESNETS.NORM
    stem = BasicStem(in_channels=input_shape.channels, out_channels=tiny.STEM_CHANNELS, norm=norm)
    stages = []
    in_channels = tiny.STEM_CHANNELS
    for index, (width, depth) in enumerate(zip(widths, depths)):
        first_stride = 1 if index == 0 else 2
        stages.append(
            ResNet.make_stage(
                BasicBlock,
                depth,
                in_channels=in_channels,
                out_channels=width,
                stride_per_block=[first_stride] + [1] * (depth - 1),
                norm=norm,
            )
        )
        in_channels = width
    resnet = ResNet(stem, stages, out_features=cfg.MODEL.RESNETS.OUT_FEATURES)
    return resnet.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_tiny_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """Tiny ResNet + FPN with P2-P6 outputs (top level by max-pooling)."""
    return FPN(
        bottom_up=build_tiny_resnet(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_tiny_retinanet_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """Tiny ResNet + FPN with P3-P7 outputs (P6/P7 from P5, as RetinaNet)."""
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=build_tiny_resnet(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(out_channels, out_channels, in_feature="p5"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
