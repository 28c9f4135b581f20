"""The two branches of a detection head's loss as graphs: classification and box regression.

Each branch has its inputs (the graph's terminals), computed from the head's predictions and
targets, and one reduction of the graph's value to the branch loss.

**Classification** (``[N, K]``: ``N`` non-ignored RoIs, ``K`` foreground classes):

* ``x``: predicted class scores, ``sigmoid(logits)``;
* ``y``: one-hot targets (a background RoI's row is all zeros).

**Box regression** (``[P, 1]`` per positive, or ``[P, 4]`` for the deltas):

* ``p``, ``g``: areas of the predicted and the ground-truth box;
* ``i``, ``u``, ``e``: area of their intersection, their union and their smallest enclosing box;
* ``d``, ``t``: the predicted and the target box deltas (the head's ``Box2BoxTransform``
  encoding), when the head has them.

The five areas are divided by the enclosing area ``e`` of their pair *detached* from the graph:
values lie in [0, 1] whatever the image size (``e`` itself has the value 1 but keeps the
gradient of the enclosing area). Ratios of areas (IoU, GIoU and every other expression of
degree 0 in the areas) have exactly the value and gradient of the raw areas; other expressions
become scale-normalised instead of growing with the squared box size.

**Reduction**: the branch loss is the graph's value summed over its columns (classes, box
coordinates) and averaged over its rows (RoIs, positives): per RoI for the classification, per
positive for the box. So ``CE_EXPRESSION`` is the sigmoid cross entropy summed over the classes
and averaged over the RoIs (Detectron2's sigmoid CE), ``GIOU_EXPRESSION`` the GIoU loss averaged
over the positives, ``L1_EXPRESSION`` the L1 loss of the deltas summed over the coordinates and
averaged over the positives. A branch with no rows has the loss 0 (still connected to the
predictions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from paploss.losses.box_quality import paired_box_areas as box_areas

from .graph import EPS, Node, evaluate, input_names, parse

__all__ = [
    "Branch",
    "GRAPH_LOSS_NAME",
    "CLS",
    "BOX",
    "BRANCHES",
    "CE_EXPRESSION",
    "GIOU_EXPRESSION",
    "IOU_EXPRESSION",
    "L1_EXPRESSION",
    "parse_branch",
    "cls_inputs",
    "box_inputs",
    "paired_box_areas",
    "reduce_branch",
    "cls_loss",
    "box_loss",
]


@dataclass(frozen=True)
class Branch:
    """What graphs of one branch may read.

    Attributes:
        name: ``"cls"`` or ``"box"``.
        inputs: every input name the branch provides.
        predictions: the inputs that depend on the predictions (a loss must use one).
        search_inputs: the inputs random graphs draw from by default.
        config_key: the Detectron2 config key holding the branch's expression.
    """

    name: str
    inputs: Tuple[str, ...]
    predictions: Tuple[str, ...]
    search_inputs: Tuple[str, ...]
    config_key: str


#: ``MODEL.PAPLOSS.LOSS`` of the head loss that reads the branches' expressions from config.
GRAPH_LOSS_NAME = "graph"

CLS = Branch(
    "cls",
    inputs=("x", "y"),
    predictions=("x",),
    search_inputs=("x", "y"),
    config_key="MODEL.PAPLOSS.GRAPH.CLS",
)
BOX = Branch(
    "box",
    inputs=("p", "g", "i", "u", "e", "d", "t"),
    predictions=("p", "i", "u", "e", "d"),
    search_inputs=("p", "g", "i", "u", "e"),
    config_key="MODEL.PAPLOSS.GRAPH.BOX",
)
#: Branch name → :class:`Branch`, in the order candidates list them.
BRANCHES: Dict[str, Branch] = {"cls": CLS, "box": BOX}

#: Sigmoid cross entropy, ``-(y log x + (1 - y) log(1 - x))``.
CE_EXPRESSION = "neg(add(mul(y,log(x)),mul(sub(1,y),log(sub(1,x)))))"
#: GIoU loss, ``1 - (i/u - (e - u)/e)``.
GIOU_EXPRESSION = "sub(1,sub(div(i,u),div(sub(e,u),e)))"
#: IoU loss, ``1 - i/u``.
IOU_EXPRESSION = "sub(1,div(i,u))"
#: L1 loss of the deltas.
L1_EXPRESSION = "abs(sub(d,t))"


def parse_branch(text: str, branch: Branch) -> Node:
    """Parse a graph of ``branch`` and check that it reads the predictions.

    Raises:
        ValueError: one line; an unknown operator or input, a syntax error, or a graph that
            uses none of ``branch.predictions``.
    """
    node = parse(text, branch.inputs)
    if not set(input_names(node)) & set(branch.predictions):
        raise ValueError(
            f"{text!r} does not depend on the predictions (uses none of "
            f"{', '.join(branch.predictions)})"
        )
    return node


def cls_inputs(logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The classification inputs.

    Args:
        logits: ``[N, K]`` logits of non-ignored RoIs.
        targets: ``[N, K]`` one-hot targets in {0, 1} (any dtype).

    Returns:
        ``{"x": sigmoid(logits), "y": targets}`` in the logits' dtype.
    """
    return {"x": logits.sigmoid(), "y": targets.to(logits.dtype)}


def paired_box_areas(
    pred_boxes: torch.Tensor, gt_boxes: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Areas of matched box pairs.

    Args:
        pred_boxes: ``[P, 4]`` XYXY.
        gt_boxes: ``[P, 4]`` XYXY.

    Returns:
        ``(pred, gt, intersection, union, enclosing)``, each ``[P]``; differentiable.
    """
    # An inverted predicted box must not give a negative hull: its sides are clamped too.
    return box_areas(pred_boxes, gt_boxes, clamp_enclosing=True)


def box_inputs(
    pred_boxes: torch.Tensor,
    gt_boxes: torch.Tensor,
    pred_deltas: Optional[torch.Tensor] = None,
    gt_deltas: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """The box inputs of ``P`` positives.

    Args:
        pred_boxes: ``[P, 4]`` predicted boxes (XYXY).
        gt_boxes: ``[P, 4]`` their ground truth.
        pred_deltas: ``[P, 4]`` predicted deltas, or None (then ``d`` is not provided).
        gt_deltas: ``[P, 4]`` target deltas, or None (then ``t`` is not provided).

    Returns:
        ``p, g, i, u, e`` as ``[P, 1]`` (divided by the detached enclosing area, at least
        :data:`~paploss.losses.graph.graph.EPS`), and ``d``, ``t`` as ``[P, 4]`` when given.
    """
    areas = paired_box_areas(pred_boxes, gt_boxes)
    scale = areas[4].detach().clamp_min(EPS)
    inputs = {
        name: (area / scale).unsqueeze(1) for name, area in zip(("p", "g", "i", "u", "e"), areas)
    }
    if pred_deltas is not None:
        inputs["d"] = pred_deltas
    if gt_deltas is not None:
        inputs["t"] = gt_deltas.to(pred_boxes.dtype)
    return inputs


def reduce_branch(value: torch.Tensor, num_rows: int) -> torch.Tensor:
    """The branch loss of a graph's value: summed over columns, averaged over rows.

    Args:
        value: the graph's 2-D value (``[N, C]``, ``[N, 1]`` or ``[1, 1]``).
        num_rows: ``N``, the rows of the branch's inputs.
    """
    if num_rows == 0:
        return value.sum() * 0.0
    return value.sum(dim=-1).mean()


def _evaluate(node: Node, inputs: Dict[str, torch.Tensor], branch: Branch) -> torch.Tensor:
    try:
        return evaluate(node, inputs)
    except KeyError as e:
        raise ValueError(f"{branch.name} graph {str(node)!r}: {e.args[0]}") from None


def cls_loss(node: Node, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The classification loss of a graph: per RoI, summed over the classes.

    Args:
        node: a graph over ``x``, ``y``.
        logits: ``[N, K]`` logits of the non-ignored RoIs.
        targets: ``[N, K]`` one-hot targets.

    Returns:
        Scalar.
    """
    value = _evaluate(node, cls_inputs(logits, targets), CLS)
    return reduce_branch(value, logits.shape[0])


def box_loss(
    node: Node,
    pred_boxes: torch.Tensor,
    gt_boxes: torch.Tensor,
    pred_deltas: Optional[torch.Tensor] = None,
    gt_deltas: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The box loss of a graph: per positive, summed over the coordinates.

    Args:
        node: a graph over :data:`BOX`'s inputs.
        pred_boxes: ``[P, 4]``; gt_boxes: ``[P, 4]``; pred_deltas, gt_deltas: ``[P, 4]`` or
            None (see :func:`box_inputs`).

    Returns:
        Scalar.

    Raises:
        ValueError: if the graph reads deltas that were not given.
    """
    value = _evaluate(node, box_inputs(pred_boxes, gt_boxes, pred_deltas, gt_deltas), BOX)
    return reduce_branch(value, pred_boxes.shape[0])
