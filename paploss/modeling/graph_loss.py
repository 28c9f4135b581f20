"""``MODEL.PAPLOSS.LOSS: "graph"``: the Fast R-CNN head trained with searched graph losses.

The classification and box losses of the ROI head are two loss graphs
(:mod:`paploss.losses.graph`), read as text from ``MODEL.PAPLOSS.GRAPH.CLS`` and
``MODEL.PAPLOSS.GRAPH.BOX``, so that the expressions a search exports train with
``tools/train_net.py`` directly. This is AutoLoss-Zero's detection setting:

* **ROI head** (``ROI_HEADS``): ``loss = L_cls + BOX_WEIGHT * L_box``, with ``L_cls`` the
  classification graph on the sigmoid scores ``x`` and one-hot targets ``y`` of every
  non-ignored RoI, summed over the ``K`` classes and averaged over the RoIs, and ``L_box`` the box
  graph on the areas ``p, g, i, u, e`` (and deltas ``d, t``) of every positive RoI, averaged over
  the positives (:mod:`paploss.losses.graph.branches`). The box predictor has ``K`` sigmoid logits
  (no background logit), as with every paploss loss. The RoIs are Detectron2's sampled ones
  (``MODEL.PAPLOSS.ROI_HEADS.SAMPLE_PROPOSALS``, default True).
* **RPN** (``PAPRPN``): keeps Detectron2's stock losses (objectness CE + box regression on its
  sampled anchors); the head loss built for it reports itself as stock. A config may as well use
  Detectron2's ``RPN``.
* **RetinaNet**: not supported (a one-line error at build time).

Scalars (under ``roi_heads/``): ``graph_cls``, ``graph_box`` (unweighted), ``num_positives``.
"""

from typing import Dict, Tuple, Union

import torch
from detectron2.config import configurable

from paploss.losses.graph import BOX, CLS, GRAPH_LOSS_NAME, Node, box_loss, cls_loss, parse_branch
from paploss.utils.validation import check_number

from .head_loss import HEAD_LOSS_REGISTRY, RankingHeadLoss, Scalar
from .ranking import HeadRanking

__all__ = ["GraphHeadLoss"]


@HEAD_LOSS_REGISTRY.register()
class GraphHeadLoss(RankingHeadLoss):
    """Classification and box losses given as loss graphs (see the module docstring)."""

    loss_name = GRAPH_LOSS_NAME
    config_keys = {
        "cls": CLS.config_key,
        "box": BOX.config_key,
        "box_weight": "MODEL.PAPLOSS.GRAPH.BOX_WEIGHT",
    }

    @configurable
    def __init__(
        self,
        *,
        cls: Union[str, Node],
        box: Union[str, Node],
        box_weight: float = 1.0,
        **kwargs,
    ):
        """
        Args:
            cls: the classification graph or its text (inputs ``x``, ``y``).
            box: the box graph or its text (inputs ``p``, ``g``, ``i``, ``u``, ``e``, ``d``,
                ``t``).
            box_weight: factor of the box loss, >= 0.
            kwargs: the arguments of :class:`RankingHeadLoss`.

        Raises:
            ValueError: one line naming the key, for an expression that does not parse or does
                not read the predictions, a bad weight, or the RetinaNet head.
        """
        super().__init__(**kwargs)
        if self.head == "RETINANET":
            raise ValueError(
                "MODEL.PAPLOSS.LOSS 'graph' trains the Fast R-CNN head (ROI_HEADS) only, with "
                "the RPN on its stock losses; RetinaNet is not supported"
            )
        #: The RPN keeps Detectron2's own losses (PAPRPN then behaves as with "stock").
        self.is_stock = self.head == "RPN"
        self.cls_graph = self._graph(cls, CLS, "cls")
        self.box_graph = self._graph(box, BOX, "box")
        self.box_weight = check_number(
            box_weight, self.config_key("box_weight"), low=0.0, low_inclusive=True
        )

    def _graph(self, value: Union[str, Node], branch, argument: str) -> Node:
        try:
            return parse_branch(str(value), branch)
        except ValueError as e:
            raise ValueError(f"{self.config_key(argument)}: {e}") from None

    @classmethod
    def from_config(cls, cfg, head: str, *, head_name: str, loss_key: str) -> dict:
        ret = super().from_config(cfg, head, head_name=head_name, loss_key=loss_key)
        node = cfg.MODEL.PAPLOSS.GRAPH
        ret.update(cls=node.CLS, box=node.BOX, box_weight=node.BOX_WEIGHT)
        return ret

    def losses(self, ranking: HeadRanking) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(L_cls, L_box)`` of a ranking (unweighted)."""
        valid = ranking.labels >= 0
        targets = ranking.targets.reshape(-1, ranking.num_classes)[valid]
        loss_cls = cls_loss(self.cls_graph, ranking.logits[valid], targets)
        loss_box = box_loss(
            self.box_graph,
            ranking.pred_boxes,
            ranking.gt_boxes,
            ranking.pred_deltas,
            ranking.gt_deltas,
        )
        return loss_cls, loss_box.to(loss_cls.dtype)

    def compute(self, ranking: HeadRanking) -> Tuple[torch.Tensor, Dict[str, Scalar]]:
        loss_cls, loss_box = self.losses(ranking)
        scalars = {"graph_cls": loss_cls.detach(), "graph_box": loss_box.detach()}
        return loss_cls + self.box_weight * loss_box, scalars
