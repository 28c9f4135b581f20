"""Published searched PAP-loss parameters (ResNet-50-FPN, COCO).

Interior knots ``(x, y)`` of the five monotone functions of each head, and the gradient scale
``lambda`` of the box branch. Use :meth:`paploss.losses.PAPFunctions.published` and
:func:`published_grad_scale` rather than the raw tables.
"""

from typing import Dict, List, Tuple

__all__ = [
    "PUBLISHED_KNOTS",
    "PUBLISHED_GRAD_SCALES",
    "published_names",
    "published_grad_scale",
    "published_knots",
]

Knot = Tuple[float, float]

PUBLISHED_KNOTS: Dict[str, Dict[str, Tuple[Knot, Knot, Knot, Knot]]] = {
    "retinanet": {
        "H2": ((0.4182, 0.0277), (0.4948, 0.2187), (0.6882, 0.2624), (0.802, 0.6688)),
        "I2": ((0.1279, 0.3696), (0.3056, 0.4708), (0.5198, 0.529), (0.6983, 0.6709)),
        "I3": ((0.0931, 0.0289), (0.3607, 0.5585), (0.4823, 0.7131), (0.6291, 0.8162)),
        "I1": ((0.4914, 0.1499), (0.5492, 0.1664), (0.6259, 0.3051), (0.7945, 0.6195)),
        "H1": ((0.413, 0.0798), (0.4356, 0.3571), (0.5361, 0.7063), (0.8097, 0.9083)),
    },
    "faster_rcnn_rpn": {
        "H2": ((0.9058, 0.0484), (0.9068, 0.5120), (0.9232, 0.7286), (0.9766, 0.9677)),
        "I2": ((0.3200, 0.1084), (0.3493, 0.2482), (0.4924, 0.3869), (0.7231, 0.6510)),
        "I3": ((0.0935, 0.0419), (0.2177, 0.1168), (0.5857, 0.3748), (0.7962, 0.6683)),
        "I1": ((0.0045, 0.3599), (0.1295, 0.4603), (0.7662, 0.5140), (0.8483, 0.5259)),
        "H1": ((0.1764, 0.1081), (0.5245, 0.4907), (0.6956, 0.5668), (0.7642, 0.8645)),
    },
    "faster_rcnn_roi": {
        "H2": ((0.3344, 0.0268), (0.5460, 0.2461), (0.8196, 0.6466), (0.9467, 0.8617)),
        "I2": ((0.0978, 0.2019), (0.4073, 0.3367), (0.6337, 0.4689), (0.7708, 0.6633)),
        "I3": ((0.2406, 0.0515), (0.3358, 0.5259), (0.6047, 0.6647), (0.8575, 0.7792)),
        "I1": ((0.2574, 0.2363), (0.5442, 0.5999), (0.7165, 0.6548), (0.8728, 0.8331)),
        "H1": ((0.1551, 0.2675), (0.4902, 0.3957), (0.7245, 0.5095), (0.8068, 0.8720)),
    },
}

PUBLISHED_GRAD_SCALES: Dict[str, float] = {
    "retinanet": 4.1231,
    "faster_rcnn_rpn": 1.6950,
    "faster_rcnn_roi": 7.1324,
}


def published_names() -> List[str]:
    """Names of the shipped parameter sets, sorted."""
    return sorted(PUBLISHED_KNOTS)


def _check_name(name: str) -> None:
    if name not in PUBLISHED_KNOTS:
        raise ValueError(f"name must be one of {published_names()}, got {name!r}")


def published_grad_scale(name: str) -> float:
    """The published box-branch gradient scale ``lambda`` of the head ``name``."""
    _check_name(name)
    return PUBLISHED_GRAD_SCALES[name]


def published_knots(name: str) -> Dict[str, List[List[float]]]:
    """The published interior knots of the head ``name`` as ``{function: [[x, y], ...]}``."""
    _check_name(name)
    return {fn: [list(knot) for knot in knots] for fn, knots in PUBLISHED_KNOTS[name].items()}
