"""Losses as graphs of primitive operators (AutoLoss-Zero), pure PyTorch.

* :mod:`~paploss.losses.graph.graph`: the graphs: guarded operators, text form (:func:`parse`,
  ``str``), :func:`evaluate`, :func:`canonical`, :func:`structural_hash`;
* :mod:`~paploss.losses.graph.branches`: the classification and box branches of a detection head
  (their inputs and reduction, :func:`cls_loss`, :func:`box_loss`) and reference expressions.

Nothing here imports Detectron2 or the search. Training with a graph loss is
:class:`paploss.modeling.graph_loss.GraphHeadLoss` (``MODEL.PAPLOSS.LOSS: "graph"``); searching
graphs is the ``evolution`` and ``random`` methods of the search
(:mod:`paploss.search.proposers.graph_evolution`, :mod:`paploss.search.proposers.graph_mutation`),
and screening them is :mod:`paploss.search.screening.graph_screener`.
"""

from .branches import (
    BOX,
    BRANCHES,
    CE_EXPRESSION,
    CLS,
    GIOU_EXPRESSION,
    GRAPH_LOSS_NAME,
    IOU_EXPRESSION,
    L1_EXPRESSION,
    Branch,
    box_inputs,
    box_loss,
    cls_inputs,
    cls_loss,
    paired_box_areas,
    parse_branch,
    reduce_branch,
)
from .graph import (
    BINARY_OPERATORS,
    EPS,
    EXP_MAX,
    OPERATORS,
    UNARY_OPERATORS,
    GraphSyntaxError,
    Node,
    Operator,
    canonical,
    depth,
    evaluate,
    input_names,
    parse,
    size,
    structural_hash,
)

__all__ = [
    "BINARY_OPERATORS",
    "BOX",
    "BRANCHES",
    "Branch",
    "CE_EXPRESSION",
    "CLS",
    "EPS",
    "EXP_MAX",
    "GIOU_EXPRESSION",
    "GRAPH_LOSS_NAME",
    "GraphSyntaxError",
    "IOU_EXPRESSION",
    "L1_EXPRESSION",
    "Node",
    "OPERATORS",
    "Operator",
    "UNARY_OPERATORS",
    "box_inputs",
    "box_loss",
    "canonical",
    "cls_inputs",
    "cls_loss",
    "depth",
    "evaluate",
    "input_names",
    "paired_box_areas",
    "parse",
    "parse_branch",
    "reduce_branch",
    "size",
    "structural_hash",
]
