"""``add_paploss_config``: every key paploss adds lives under ``cfg.MODEL.PAPLOSS``."""
from detectron2.config import CfgNode as CN

__all__ = ["add_paploss_config", "PAP_HEADS", "IDENTITY_KNOTS", "LOSS_NAMES"]

#: Head subtrees that carry their own PAP functions and gradient scale.
PAP_HEADS = ("RETINANET", "RPN", "ROI_HEADS")
#: Interior knots of the identity function (the default of every function).
IDENTITY_KNOTS = [[0.2, 0.2], [0.4, 0.4], [0.6, 0.6], [0.8, 0.8]]
#: Values accepted by ``MODEL.PAPLOSS.LOSS``.
LOSS_NAMES = ("pap", "ap", "alrp", "rs", "stock")


def _head_node() -> CN:
    node = CN()
    # The five monotone functions of the PAP loss for this head, each given by its 4 interior
    # knots [x, y] (the end points (0, 0) and (1, 1) are implicit). H1/H2 replace the ranking step
    # (H1 in the normaliser, gradient-free; H2 in the numerator), I1/I2/I3 the IoU indicator.
    node.FUNCTIONS = CN()
    for name in ("H1", "H2", "I1", "I2", "I3"):
        setattr(node.FUNCTIONS, name, [list(k) for k in IDENTITY_KNOTS])
    # λ: scales only the gradient that reaches the box branch (identity in the forward pass).
    node.GRAD_SCALE = 1.0
    return node


def add_paploss_config(cfg: CN) -> None:
    """Add paploss's keys (with defaults) to a Detectron2 config, in place.

    Safe to call twice. Keys:

    * ``MODEL.PAPLOSS.LOSS``: which loss the PAP heads train with.
    * ``MODEL.PAPLOSS.QUALITY``: the box quality ``u`` of a positive.
    * ``MODEL.PAPLOSS.{RETINANET,RPN,ROI_HEADS}.FUNCTIONS.{H1,H2,I1,I2,I3}`` and ``.GRAD_SCALE``.
    * ``MODEL.PAPLOSS.ROI_HEADS.SAMPLE_PROPOSALS``: keep Detectron2's proposal sampling or rank
      all proposals.
    * ``MODEL.PAPLOSS.DATASETS``: extra COCO-format datasets to register by name.
    * ``MODEL.PAPLOSS.TINY_RESNET``: width/depth of the CPU-sized backbone.
    """
    if "PAPLOSS" in cfg.MODEL:
        return
    cfg.MODEL.PAPLOSS = CN()
    # "pap": the Unified Parameterized AP loss replaces classification + box loss of each head.
    # "ap" / "alrp" / "rs": AP-Loss, aLRP Loss, Rank & Sort Loss baselines in the same heads.
    # "stock": Detectron2's own losses of the head (focal/CE + smooth-L1/GIoU as configured).
    cfg.MODEL.PAPLOSS.LOSS = "pap"
    # Box quality u of a positive, from its decoded predicted box and its ground truth:
    # "giou": (GIoU + 1) / 2; "iou": IoU.
    cfg.MODEL.PAPLOSS.QUALITY = "giou"
    for head in PAP_HEADS:
        setattr(cfg.MODEL.PAPLOSS, head, _head_node())
    # ROI head only: True keeps Detectron2's positive/negative sampling of proposals
    # (ROI_HEADS.BATCH_SIZE_PER_IMAGE, POSITIVE_FRACTION); False ranks all proposals of the batch.
    cfg.MODEL.PAPLOSS.ROI_HEADS.SAMPLE_PROPOSALS = True
    # Extra COCO-format datasets registered under a name: a list of
    # [name, json_file, image_root] entries, usable in DATASETS.TRAIN / DATASETS.TEST.
    cfg.MODEL.PAPLOSS.DATASETS = []
    # The CPU-sized backbone (build_tiny_*resnet_fpn_backbone): stem width, per-stage widths
    # and number of BasicBlocks for res2..res5.
    cfg.MODEL.PAPLOSS.TINY_RESNET = CN()
    cfg.MODEL.PAPLOSS.TINY_RESNET.STEM_CHANNELS = 16
    cfg.MODEL.PAPLOSS.TINY_RESNET.STAGE_CHANNELS = [16, 32, 64, 128]
    cfg.MODEL.PAPLOSS.TINY_RESNET.BLOCKS_PER_STAGE = [1, 1, 1, 1]
