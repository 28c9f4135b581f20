"""``add_deformable_detr_config`` and the checks every ``from_config`` uses to read its keys.

Keys added (defaults are the published Deformable DETR R50 settings):

* ``MODEL.DEFORMABLE_DETR.*``: the architecture, matching, stock-loss weights and optimizer
  factors;
* ``MODEL.PAPLOSS.DETR.{FUNCTIONS.{H1,H2,I1,I2,I3},GRAD_SCALE}``: the one PAP function set and
  the λ shared by every decoder layer (and the two-stage encoder proposals), in the same layout as
  paploss's ``MODEL.PAPLOSS.<HEAD>`` subtrees, so a search writes it like any other head.

``MODEL.PAPLOSS.LOSS`` (``"stock"``, ``"pap"`` or ``"rs"``), ``MODEL.PAPLOSS.QUALITY`` and
``MODEL.PAPLOSS.RS.DELTA`` come from :func:`paploss.modeling.add_paploss_config`, which this calls.
"""

from typing import Sequence

from detectron2.config import CfgNode as CN

from paploss.losses import FUNCTION_NAMES
from paploss.modeling import add_paploss_config
from paploss.modeling.config import IDENTITY_KNOTS

__all__ = [
    "DETR_LOSSES",
    "PAP_SUBTREE",
    "add_deformable_detr_config",
    "config_bool",
    "config_choice",
    "config_int",
    "config_number",
    "config_str_list",
]

#: Values of ``MODEL.PAPLOSS.LOSS`` that ``PAPDeformableDETR`` trains with.
DETR_LOSSES = ("stock", "pap", "rs")
#: The ``MODEL.PAPLOSS`` subtree holding the detector's PAP functions and λ.
PAP_SUBTREE = "DETR"


def add_deformable_detr_config(cfg: CN) -> None:
    """Add the keys of ``PAPDeformableDETR`` (and paploss's own) to ``cfg``, in place.

    Safe to call twice.
    """
    add_paploss_config(cfg)
    if PAP_SUBTREE not in cfg.MODEL.PAPLOSS:
        pap = CN()
        # One function set (each 4 interior knots [x, y]) and one λ for the PAP loss of every
        # decoder layer and of the two-stage encoder proposals; 5 x 8 + 1 = 41 search dims.
        pap.FUNCTIONS = CN()
        for name in FUNCTION_NAMES:
            setattr(pap.FUNCTIONS, name, [list(k) for k in IDENTITY_KNOTS])
        pap.GRAD_SCALE = 1.0
        cfg.MODEL.PAPLOSS[PAP_SUBTREE] = pap
    if "DEFORMABLE_DETR" in cfg.MODEL:
        return
    node = cfg.MODEL.DEFORMABLE_DETR = CN()
    node.NUM_CLASSES = 80
    # Backbone features fed to the transformer (any Detectron2 backbone's output names), from
    # fine to coarse; levels beyond them are added by 3x3 stride-2 convolutions of the last one.
    node.IN_FEATURES = ["res3", "res4", "res5"]
    node.NUM_FEATURE_LEVELS = 4
    node.HIDDEN_DIM = 256
    node.NUM_HEADS = 8
    node.ENC_LAYERS = 6
    node.DEC_LAYERS = 6
    node.DIM_FEEDFORWARD = 1024
    node.DROPOUT = 0.1
    # Sampling points per head and level in the encoder's and the decoder's deformable attention.
    node.ENC_POINTS = 4
    node.DEC_POINTS = 4
    node.NUM_QUERIES = 300
    # Iterative box refinement: every decoder layer refines the boxes of the previous one.
    node.WITH_BOX_REFINE = False
    # Two-stage: the encoder scores every pixel as a proposal; the top NUM_QUERIES proposals
    # become the decoder's reference boxes and queries.
    node.TWO_STAGE = False
    # Losses on every decoder layer (and on the encoder proposals in the two-stage variant), not
    # only on the last.
    node.AUX_LOSS = True

    # Hungarian matching cost weights (focal class cost, L1 and GIoU box costs).
    node.MATCHER = CN()
    node.MATCHER.COST_CLASS = 2.0
    node.MATCHER.COST_BBOX = 5.0
    node.MATCHER.COST_GIOU = 2.0

    node.LOSS = CN()
    # LOSS "stock": focal (weight CLASS_WEIGHT) + L1 (BBOX_WEIGHT) + GIoU (GIOU_WEIGHT) per layer.
    node.LOSS.CLASS_WEIGHT = 2.0
    node.LOSS.BBOX_WEIGHT = 5.0
    node.LOSS.GIOU_WEIGHT = 2.0
    # alpha and gamma of the focal loss and of the matcher's focal class cost.
    node.LOSS.FOCAL_ALPHA = 0.25
    node.LOSS.FOCAL_GAMMA = 2.0
    # LOSS "pap" / "rs": weight of the ranking loss of each layer, and of the L1 box loss kept
    # beside it on the matched queries (0 drops it). See the project README for why L1 stays.
    node.LOSS.RANKING_WEIGHT = 1.0
    node.LOSS.RANKING_BBOX_WEIGHT = 5.0

    # The project's optimizer (AdamW; SOLVER.BASE_LR, SOLVER.WEIGHT_DECAY): learning-rate factors
    # of the backbone and of the linear projections predicting sampling offsets and reference
    # points, and the maximum L2 norm of the gradient of the whole model (0: no clipping).
    node.OPTIMIZER = CN()
    node.OPTIMIZER.BACKBONE_LR_FACTOR = 0.1
    node.OPTIMIZER.LINEAR_PROJ_LR_FACTOR = 0.1
    node.OPTIMIZER.CLIP_MAX_NORM = 0.1


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def config_int(value, key: str, *, low: int = 1) -> int:
    """``value`` as an int >= ``low``, or a ``ValueError`` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
    return value


def config_number(
    value, key: str, *, low: float = 0.0, high: float = float("inf"), low_inclusive: bool = True
) -> float:
    """``value`` as a float in ``[low, high]`` (``(low, high]`` if not ``low_inclusive``)."""
    above = _is_number(value) and (value >= low if low_inclusive else value > low)
    if not (above and value <= high):
        interval = f"{'[' if low_inclusive else '('}{low}, {high}]"
        raise ValueError(f"{key} must be a number in {interval}, got {value!r}")
    return float(value)


def config_bool(value, key: str) -> bool:
    """``value`` if it is a bool, else a ``ValueError`` naming ``key``."""
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be True or False, got {value!r}")
    return value


def config_choice(value, key: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else a ``ValueError`` naming ``key``."""
    if value not in choices:
        raise ValueError(f"{key} must be one of {tuple(choices)}, got {value!r}")
    return value


def config_str_list(value, key: str) -> list:
    """``value`` as a non-empty list of strings, else a ``ValueError`` naming ``key``."""
    if isinstance(value, str) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key} must be a non-empty list of feature names, got {value!r}")
    return list(value)
