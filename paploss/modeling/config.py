"""``add_paploss_config``: every key paploss adds lives under ``cfg.MODEL.PAPLOSS``."""

from detectron2.config import CfgNode as CN

from paploss.heads import PAP_HEADS
from paploss.losses.graph.branches import CE_EXPRESSION, GIOU_EXPRESSION

__all__ = ["add_paploss_config", "PAP_HEADS", "IDENTITY_KNOTS"]

#: Interior knots of the identity function (the default of every function).
IDENTITY_KNOTS = [[0.2, 0.2], [0.4, 0.4], [0.6, 0.6], [0.8, 0.8]]


def _head_node(alrp_tau: float = 0.5, rs_loss_weight: float = 1.0) -> CN:
    node = CN()
    # The five monotone functions of the PAP loss for this head, each given by its 4 interior
    # knots [x, y] (the end points (0, 0) and (1, 1) are implicit). H1/H2 replace the ranking step
    # (H1 in the normaliser, gradient-free; H2 in the numerator), I1/I2/I3 the IoU indicator.
    node.FUNCTIONS = CN()
    for name in ("H1", "H2", "I1", "I2", "I3"):
        setattr(node.FUNCTIONS, name, [list(k) for k in IDENTITY_KNOTS])
    # λ: scales only the gradient that reaches the box branch (identity in the forward pass).
    # Read by LOSS "pap" only; the baselines ignore it (with a warning when it is not 1).
    node.GRAD_SCALE = 1.0
    # LOSS "alrp": IoU threshold tau of a positive in the localisation error
    # (1 - GIoU) / (2 (1 - tau)), in (0, 1); the paper uses 0.5, and 0.7 for the RPN.
    node.ALRP_TAU = alrp_tau
    # LOSS "rs": factor of the head's whole loss (ranking + box), > 0; 0.2 for the RPN in the paper.
    node.RS_LOSS_WEIGHT = rs_loss_weight
    return node


def add_paploss_config(cfg: CN) -> None:
    """Add paploss's keys (with defaults) to a Detectron2 config, in place.

    Safe to call twice. Keys:

    * ``MODEL.PAPLOSS.LOSS``: which loss the PAP heads train with, a name registered in
      :data:`paploss.modeling.HEAD_LOSS_REGISTRY`.
    * ``MODEL.PAPLOSS.QUALITY``: the box quality ``u`` of a positive.
    * ``MODEL.PAPLOSS.{RETINANET,RPN,ROI_HEADS}.FUNCTIONS.{H1,H2,I1,I2,I3}`` and ``.GRAD_SCALE``
      (PAP only), ``.ALRP_TAU`` (aLRP) and ``.RS_LOSS_WEIGHT`` (RS).
    * ``MODEL.PAPLOSS.AP.DELTA``, ``MODEL.PAPLOSS.ALRP.{DELTA,INITIAL_WEIGHT,BALANCE_PERIOD}``,
      ``MODEL.PAPLOSS.RS.DELTA``: settings of the ranking-loss baselines shared by all heads.
    * ``MODEL.PAPLOSS.GRAPH.{CLS,BOX,BOX_WEIGHT}``: the loss graphs of ``LOSS: "graph"``.
    * ``MODEL.PAPLOSS.TOPK``: the PAP loss's top-k truncation (0: exact over all entries).
    * ``MODEL.PAPLOSS.RPN.SAMPLE_ANCHORS``: rank Detectron2's sampled RPN anchors or all of them.
    * ``MODEL.PAPLOSS.ROI_HEADS.SAMPLE_PROPOSALS``: keep Detectron2's proposal sampling or rank
      all proposals.
    * ``MODEL.PAPLOSS.AUGMENTATION``: the training augmentations (Detectron2's or SSD-style).
    * ``MODEL.PAPLOSS.DATASETS``: extra COCO-format datasets to register by name.
    * ``MODEL.PAPLOSS.LR_STEP_FRACTIONS``: ``SOLVER.STEPS`` as fractions of ``SOLVER.MAX_ITER``.
    * ``MODEL.PAPLOSS.TINY_RESNET``: width/depth of the CPU-sized backbone.
    """
    if "PAPLOSS" in cfg.MODEL:
        return
    cfg.MODEL.PAPLOSS = CN()
    # "pap": the Unified Parameterized AP loss replaces classification + box loss of each head.
    # "ap" / "alrp" / "rs": AP-Loss, aLRP Loss, Rank & Sort Loss baselines in the same heads, each
    # with its paper's box loss and task balancing (see MODEL.PAPLOSS.{AP,ALRP,RS} below).
    # "stock": Detectron2's own losses of the head (focal/CE + smooth-L1/GIoU as configured).
    # Any other name registered in paploss.modeling.HEAD_LOSS_REGISTRY (e.g. by a user project).
    cfg.MODEL.PAPLOSS.LOSS = "pap"
    # Box quality u of a positive, from its decoded predicted box and its ground truth:
    # "giou": (GIoU + 1) / 2; "iou": IoU.
    # "mask_iou" (Mask R-CNN, MODEL.MASK_ON): in the ROI head, the soft IoU of the positive's
    # predicted mask (sigmoid, on its RoI grid) with its ground-truth mask times (GIoU + 1) / 2
    # of its box, so that the loss trains the mask and the box branch; the RPN uses (GIoU + 1) / 2.
    cfg.MODEL.PAPLOSS.QUALITY = "giou"
    # LOSS "pap": the j-sums of each positive's precision term run over the TOPK largest valid
    # logits of the batch only (the published implementation: 100000); 0: over all entries, exact.
    # Every positive still counts in the outer sum either way.
    cfg.MODEL.PAPLOSS.TOPK = 0
    # Per-head settings (see _head_node); the RPN's baseline defaults are the papers' values.
    head_defaults = {"RPN": {"alrp_tau": 0.7, "rs_loss_weight": 0.2}}
    for head in PAP_HEADS:
        setattr(cfg.MODEL.PAPLOSS, head, _head_node(**head_defaults.get(head, {})))
    # LOSS "ap" (AP-Loss): half-width delta of the smoothed step, > 0. The box term is the head's
    # smooth L1 on its box deltas (its Detectron2 SMOOTH_L1 beta), normalised by the positives.
    cfg.MODEL.PAPLOSS.AP = CN()
    cfg.MODEL.PAPLOSS.AP.DELTA = 1.0
    # LOSS "alrp" (aLRP Loss): half-width delta of the smoothed step, > 0; the self-balancing
    # weight of the localisation term starts at INITIAL_WEIGHT (> 0) and is reset every
    # BALANCE_PERIOD iterations (one epoch in the paper: 7330 on COCO at batch 16) to
    # (mean L_cls + mean L_loc) / mean L_loc over that period.
    cfg.MODEL.PAPLOSS.ALRP = CN()
    cfg.MODEL.PAPLOSS.ALRP.DELTA = 1.0
    cfg.MODEL.PAPLOSS.ALRP.INITIAL_WEIGHT = 50.0
    cfg.MODEL.PAPLOSS.ALRP.BALANCE_PERIOD = 7330
    # LOSS "rs" (Rank & Sort Loss): half-width delta of the smoothed step, >= 0 (0: exact step).
    cfg.MODEL.PAPLOSS.RS = CN()
    cfg.MODEL.PAPLOSS.RS.DELTA = 0.5
    # ROI head only, with any LOSS but "stock": True keeps Detectron2's positive/negative sampling
    # of proposals (ROI_HEADS.BATCH_SIZE_PER_IMAGE, POSITIVE_FRACTION); False ranks all proposals
    # of the batch (the aLRP and RS papers use no sampling; with ROI_HEADS.PROPOSAL_APPEND_GT:
    # False, which keeps ground-truth boxes out of the proposals, it is the published PAP head).
    cfg.MODEL.PAPLOSS.ROI_HEADS.SAMPLE_PROPOSALS = True
    # RPN only, with any LOSS but "stock" (which always samples): True ranks only the anchors of
    # Detectron2's random sample (RPN.BATCH_SIZE_PER_IMAGE per image at up to
    # RPN.POSITIVE_FRACTION positives), the others are ignored (the published PAP RPN: 256 at up
    # to 50 %); False ranks every anchor the matcher labels (the aLRP and RS papers).
    cfg.MODEL.PAPLOSS.RPN.SAMPLE_ANCHORS = False
    # Training augmentations: "default" is Detectron2's (INPUT.MIN_SIZE_TRAIN resize + flip,
    # INPUT.CROP); "ssd" is the published 512 protocol's SSD-style pipeline: photometric
    # distortion, expand (zoom out, mean fill), min-IoU random crop, resize to the square
    # INPUT.MIN_SIZE_TRAIN, horizontal flip (paploss.data.augmentations).
    cfg.MODEL.PAPLOSS.AUGMENTATION = "default"
    # Extra COCO-format datasets registered under a name: a list of
    # [name, json_file, image_root] entries, usable in DATASETS.TRAIN / DATASETS.TEST.
    # Relative paths resolve against the folder of the config file that sets them (like _BASE_).
    cfg.MODEL.PAPLOSS.DATASETS = []
    # The CPU-sized backbone (build_tiny_*resnet_fpn_backbone): stem width, per-stage widths
    # and number of BasicBlocks for res2..res5.
    cfg.MODEL.PAPLOSS.TINY_RESNET = CN()
    cfg.MODEL.PAPLOSS.TINY_RESNET.STEM_CHANNELS = 16
    cfg.MODEL.PAPLOSS.TINY_RESNET.STAGE_CHANNELS = [16, 32, 64, 128]
    cfg.MODEL.PAPLOSS.TINY_RESNET.BLOCKS_PER_STAGE = [1, 1, 1, 1]

    # --- Schedule (read by paploss.engine.load_config) ---
    # When not empty: SOLVER.STEPS = round(f * SOLVER.MAX_ITER) for each of these increasing
    # fractions in (0, 1), so the LR steps follow a changed MAX_ITER. A SOLVER.STEPS given on the
    # command line wins.
    cfg.MODEL.PAPLOSS.LR_STEP_FRACTIONS = []

    # --- LOSS "graph" (paploss.modeling.graph_loss): searched losses of the Fast R-CNN head ---
    # The classification and box losses as loss-graph expressions (paploss/losses/graph): CLS over
    # the sigmoid scores x and one-hot targets y, summed over classes, averaged over the RoIs;
    # BOX over the areas p, g, i, u, e (divided by the detached enclosing area) and the deltas
    # d, t, averaged over the positive RoIs. loss = CLS + BOX_WEIGHT * BOX (BOX_WEIGHT >= 0).
    # The RPN keeps Detectron2's stock losses; RetinaNet is not supported. Defaults: sigmoid
    # cross entropy and the GIoU loss.
    cfg.MODEL.PAPLOSS.GRAPH = CN()
    cfg.MODEL.PAPLOSS.GRAPH.CLS = CE_EXPRESSION
    cfg.MODEL.PAPLOSS.GRAPH.BOX = GIOU_EXPRESSION
    cfg.MODEL.PAPLOSS.GRAPH.BOX_WEIGHT = 1.0
