"""Losses searched from scratch as graphs of primitive operators (AutoLoss-Zero), pure PyTorch.

* :mod:`~paploss.lossgraph.graph`: the graphs: guarded operators, text form (:func:`parse`,
  ``str``), :func:`evaluate`, :func:`canonical`, :func:`structural_hash`;
* :mod:`~paploss.lossgraph.branches`: the classification and box branches of a detection head
  (their inputs and reduction, :func:`cls_loss`, :func:`box_loss`) and reference expressions;
* :mod:`~paploss.lossgraph.mutation`: random graphs and mutations within a :class:`GraphSpace`;
* :mod:`~paploss.lossgraph.fingerprint`: gradient-equivalence fingerprints on fixed probes;
* :mod:`~paploss.lossgraph.evolution`: the deterministic, resumable evolution (and random
  search) with ``propose(n)`` / ``tell(candidates, rewards)``.

Training with a graph loss is :class:`paploss.modeling.graph_loss.GraphHeadLoss`
(``MODEL.PAPLOSS.LOSS: "graph"``); screening graph candidates with the search's rejection
protocol is :mod:`paploss.lossgraph.screening` (both need Detectron2 and are not imported here).
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
from .evolution import (
    Evolution,
    EvolutionSettings,
    EvolutionState,
    GraphCandidate,
    Member,
    RandomSearch,
)
from .fingerprint import GraphFingerprint, GraphProbes, graph_fingerprint, round_significant
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
from .mutation import MUTATIONS, GraphSpace, mutate, random_graph

__all__ = [
    "BINARY_OPERATORS",
    "BOX",
    "BRANCHES",
    "Branch",
    "CE_EXPRESSION",
    "CLS",
    "EPS",
    "EXP_MAX",
    "Evolution",
    "EvolutionSettings",
    "EvolutionState",
    "GIOU_EXPRESSION",
    "GRAPH_LOSS_NAME",
    "GraphCandidate",
    "GraphFingerprint",
    "GraphProbes",
    "GraphSpace",
    "GraphSyntaxError",
    "IOU_EXPRESSION",
    "L1_EXPRESSION",
    "MUTATIONS",
    "Member",
    "Node",
    "OPERATORS",
    "Operator",
    "RandomSearch",
    "UNARY_OPERATORS",
    "box_inputs",
    "box_loss",
    "canonical",
    "cls_inputs",
    "cls_loss",
    "depth",
    "evaluate",
    "graph_fingerprint",
    "input_names",
    "mutate",
    "paired_box_areas",
    "parse",
    "parse_branch",
    "random_graph",
    "reduce_branch",
    "round_significant",
    "size",
    "structural_hash",
]
