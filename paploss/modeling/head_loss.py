"""The loss of one detection head's ranking, shared by the dense, RPN and ROI heads.

A head hands its :class:`~paploss.modeling.ranking.HeadRanking` (``[R, K]`` logits, ``[R]``
labels, the positives' predicted and ground-truth boxes and deltas) to its head loss, an
``nn.Module``: :meth:`RankingHeadLoss.forward` computes the loss of the configured kind on it
(:meth:`RankingHeadLoss.compute`), logs the loss's parts to Detectron2's event storage under
``<head>/...`` and returns a one-entry loss dict ``{"<prefix><loss name>": total}``. Because the
ranking is the module's input, whoever needs what a head ranks observes it with a forward
pre-hook (:func:`record_rankings`, the screening's early stop) rather than re-deriving it.

Head losses are registered in :data:`HEAD_LOSS_REGISTRY` under their ``MODEL.PAPLOSS.LOSS`` name
(:attr:`RankingHeadLoss.loss_name`); :func:`build_head_loss` builds the configured one. Built in:

* ``"pap"`` (:class:`PAPHeadLoss`): the PAP loss, ranking and localisation in one term; the only
  loss that reads the head's ``FUNCTIONS`` and ``GRAD_SCALE`` (λ).
* ``"ap"`` (:class:`APHeadLoss`): AP-Loss + smooth L1 on the box deltas.
* ``"alrp"`` (:class:`ALRPHeadLoss`): aLRP Loss, classification + self-balanced localisation.
* ``"rs"`` (:class:`RSHeadLoss`): Rank & Sort Loss + score-weighted GIoU loss, value-balanced.
* ``"stock"`` (:class:`StockHeadLoss`): a marker; the head uses Detectron2's own losses.

**Mask branch.** When the ranking carries the positives' masks (the ROI head of a Mask R-CNN,
:func:`~paploss.modeling.ranking.roi_ranking`), :meth:`RankingHeadLoss.forward` adds the mask
loss of :meth:`RankingHeadLoss.mask_loss` under :data:`MASK_LOSS_KEY`: Rank & Sort Mask R-CNN's
Dice loss, weighted per positive like the RS box loss (its detached score) and balanced by value
to the head's ranking loss every iteration. :meth:`~RankingHeadLoss.compute` (what the screening
of candidate losses scores) never includes it. With ``MODEL.PAPLOSS.QUALITY: "mask_iou"`` the
PAP loss's quality of a positive also reads its mask (:class:`PAPHeadLoss`).

A Detectron2 project adds its own loss by subclassing :class:`RankingHeadLoss` (``loss_name``,
``@configurable`` constructor, ``from_config``, ``compute``) and decorating it with
``@HEAD_LOSS_REGISTRY.register()``; ``MODEL.PAPLOSS.LOSS`` then selects it by that name
(``projects/CustomHeadLoss``).

Every constructor argument is checked once, in ``__init__``; an error names the config key the
argument comes from (:meth:`RankingHeadLoss.config_key`) when the loss was built from a config.
"""

import contextlib
import logging
from typing import Dict, Iterator, Optional, Tuple, Union

import torch
from detectron2.config import configurable
from detectron2.utils.events import get_event_storage
from fvcore.nn import smooth_l1_loss
from torch import nn

from paploss.losses import (
    PAPFunctions,
    alrp_loss,
    ap_loss,
    pap_loss_components,
    rank_sort_loss,
    scale_grad,
)
from paploss.losses.box_quality import QUALITY_TYPES, box_quality, paired_iou_giou
from paploss.losses.mask_quality import dice_loss, soft_mask_iou
from paploss.utils.registry import NamedRegistry
from paploss.utils.validation import check_int, check_number

from .ranking import HeadRanking

__all__ = [
    "ALRPHeadLoss",
    "ALRPSelfBalance",
    "APHeadLoss",
    "HEAD_LOSS_REGISTRY",
    "MASK_IOU_QUALITY",
    "MASK_LOSS_KEY",
    "PAPHeadLoss",
    "RSHeadLoss",
    "RankingHeadLoss",
    "StockHeadLoss",
    "build_head_loss",
    "record_rankings",
]

logger = logging.getLogger(__name__)

#: A logged scalar: a detached scalar tensor (read on the host only when logged) or a number.
Scalar = Union[torch.Tensor, float]


class _HeadLossRegistry(NamedRegistry):
    """A Detectron2 :class:`Registry` whose entries are named by their ``loss_name`` (the value
    of ``MODEL.PAPLOSS.LOSS`` that selects one)."""

    NAME_ATTRIBUTE = "loss_name"


HEAD_LOSS_REGISTRY = _HeadLossRegistry("HEAD_LOSS")
HEAD_LOSS_REGISTRY.__doc__ = """
Registry of head losses, by their ``MODEL.PAPLOSS.LOSS`` name.

A registered class is a :class:`RankingHeadLoss` whose ``@configurable`` constructor takes
``from_config(cfg, head, *, head_name, loss_key)``, where ``head`` is the head's subtree of
``MODEL.PAPLOSS`` (``"RETINANET"``, ``"RPN"`` or ``"ROI_HEADS"``).
"""

#: The Detectron2 key of each head's smooth-L1 beta, used by the AP-Loss box term.
_SMOOTH_L1_BETA_KEYS = {
    "RETINANET": ("RETINANET", "SMOOTH_L1_LOSS_BETA"),
    "RPN": ("RPN", "SMOOTH_L1_BETA"),
    "ROI_HEADS": ("ROI_BOX_HEAD", "SMOOTH_L1_BETA"),
}

# RS Loss: a sum of box weights (detached scores) below this normalises by 1 instead (published).
_RS_BOX_WEIGHT_EPS = 1e-10

#: ``MODEL.PAPLOSS.QUALITY`` value whose quality reads the positives' masks (:class:`PAPHeadLoss`).
MASK_IOU_QUALITY = "mask_iou"
#: Key of the mask branch's loss in a head loss's output (:meth:`RankingHeadLoss.mask_loss`).
MASK_LOSS_KEY = "loss_mask_dice"


def positive_score_weights(ranking: HeadRanking) -> torch.Tensor:
    """``[P]`` detached best class score (sigmoid) of each positive: the weight of its box and
    mask losses in Rank & Sort Loss."""
    scores = ranking.logits.detach().index_select(0, ranking.positive_rows).sigmoid()
    return scores.max(dim=1).values


def _weighted_mean(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``Σ w·v / Σ w`` (``Σ w`` below ``_RS_BOX_WEIGHT_EPS`` counts as 1, as published)."""
    normaliser = weights.sum()
    normaliser = torch.where(normaliser < _RS_BOX_WEIGHT_EPS, 1.0, normaliser)
    return (weights * values).sum() / normaliser


def _value_balance(target: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """Detached weight ``target / loss`` that makes ``weight * loss`` equal ``target`` in value
    (0 when ``loss`` is 0)."""
    detached = loss.detach()
    positive = detached > 0
    return torch.where(positive, target.detach() / torch.where(positive, detached, 1.0), 0.0)


def rank_sort_terms(
    ranking: HeadRanking, delta: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The terms of Rank & Sort Loss with its score-weighted, value-balanced GIoU box loss.

    A positive's continuous label is the IoU of its detached predicted box with its ground truth;
    the box loss is the GIoU loss weighted by each positive's detached best class score
    (:func:`positive_score_weights`), normalised by the sum of the weights. The loss of a head is
    ``L_RS + λ_box * L_box`` (:class:`RSHeadLoss`, and the Deformable DETR project's ``rs``).

    Args:
        ranking: the head's ranking.
        delta: half-width of the smoothed step of the ranking, >= 0.

    Returns:
        ``(L_RS, L_box, λ_box)``: the Rank & Sort Loss, the (unweighted) box loss and the
        detached weight that balances it to ``L_RS`` in value (0 when ``L_box`` is 0).
    """
    iou, giou = paired_iou_giou(ranking.pred_boxes, ranking.gt_boxes)
    quality = ranking.per_entry(iou.detach().clamp(0.0, 1.0))
    rs = rank_sort_loss(ranking.flat_logits, ranking.targets, quality, delta)
    box_loss = _weighted_mean(positive_score_weights(ranking), 1 - giou)
    return rs, box_loss, _value_balance(rs, box_loss)


def _log_scalars(prefix: str, scalars: Dict[str, Scalar]) -> None:
    """Put ``scalars`` into the event storage as ``<prefix>/<name>``, the tensors read on the host
    in one transfer (one synchronisation with the device per call)."""
    names = list(scalars)
    tensors = [torch.as_tensor(v).detach() for v in scalars.values()]
    if tensors:
        device = tensors[0].device
        values = torch.stack([t.to(device=device, dtype=torch.float64) for t in tensors]).tolist()
        storage = get_event_storage()
        for name, value in zip(names, values):
            storage.put_scalar(f"{prefix}/{name}", value)


def _config_functions(node, key: str) -> PAPFunctions:
    try:
        return PAPFunctions.from_knots({name: node[name] for name in node.keys()})
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from e


class RankingHeadLoss(nn.Module):
    """Base class: one head's loss over the flattened (anchor or RoI, class) ranking of a batch.

    Subclasses implement :meth:`compute` for one value of ``MODEL.PAPLOSS.LOSS`` and are
    registered in :data:`HEAD_LOSS_REGISTRY`; build them with :func:`build_head_loss`.
    """

    #: The ``MODEL.PAPLOSS.LOSS`` value a subclass implements (its registry name).
    loss_name: str = ""
    #: True when the head uses Detectron2's own losses (:class:`StockHeadLoss`; the graph loss in
    #: the RPN).
    is_stock: bool = False
    #: True when the loss reads the head's ``GRAD_SCALE`` (otherwise a λ != 1 is warned about).
    uses_grad_scale: bool = False
    #: Constructor argument -> the config key it is read from (``{head}``: the head's subtree).
    config_keys: Dict[str, str] = {}
    #: The scalar of :meth:`compute` that holds the ranking loss's value, to which the mask loss
    #: is balanced (None: the whole loss).
    balance_scalar: Optional[str] = None

    def __init__(
        self, *, head: Optional[str] = None, head_name: str = "head", loss_key: Optional[str] = None
    ):
        """
        Args:
            head: the head's subtree of ``MODEL.PAPLOSS`` (``"RETINANET"``, ``"RPN"``,
                ``"ROI_HEADS"``) when built from a config; names keys in errors and identifies
                the head in :func:`record_rankings`.
            head_name: prefix of the event-storage scalars (e.g. ``"retinanet"``).
            loss_key: the key of the returned loss dict (default ``"loss_<loss_name>"``).
        """
        super().__init__()
        self.head = head
        self.head_name = head_name
        self.loss_key = loss_key or f"loss_{self.loss_name}"

    @classmethod
    def from_config(cls, cfg, head: str, *, head_name: str, loss_key: str) -> dict:
        """Arguments common to all losses; subclasses add theirs from ``cfg.MODEL.PAPLOSS``.

        Args:
            cfg: a config with :func:`~paploss.modeling.config.add_paploss_config` keys.
            head: the head's subtree of ``MODEL.PAPLOSS`` (``"RETINANET"``, ``"RPN"`` or
                ``"ROI_HEADS"``).
            head_name: prefix of the event-storage scalars.
            loss_key: the key of the returned loss dict.
        """
        return {"head": head, "head_name": head_name, "loss_key": loss_key}

    def config_key(self, argument: str) -> str:
        """The config key ``argument`` was read from, for error messages; the argument's own name
        when the loss was not built from a config."""
        key = self.config_keys.get(argument)
        if key is None or self.head is None:
            return argument
        return key.format(head=self.head)

    def forward(
        self, ranking: HeadRanking, extra_scalars: Optional[Dict[str, torch.Tensor]] = None
    ) -> Dict[str, torch.Tensor]:
        """The loss of one batch, its parts logged to the event storage.

        The scalars are read on the host in one transfer (:func:`_log_scalars`): the only point
        where the head loss waits for the device.

        Args:
            ranking: what the head ranks.
            extra_scalars: more scalars (name -> scalar tensor or number) of the head to log
                under its name in the same transfer, e.g. counts of its anchors.

        Returns:
            ``{loss_key: scalar}``, and ``{MASK_LOSS_KEY: scalar}`` when the ranking has masks.
        """
        loss, scalars = self.compute(ranking)
        losses = {self.loss_key: loss}
        if ranking.has_masks:
            if self.balance_scalar is None:
                balance_to = loss.detach()
            else:
                balance_to = torch.as_tensor(scalars[self.balance_scalar], dtype=loss.dtype)
            losses[MASK_LOSS_KEY], mask_scalars = self.mask_loss(ranking, balance_to)
            scalars = {**scalars, **mask_scalars}
        scalars = {**scalars, "num_positives": ranking.num_positives, **(extra_scalars or {})}
        _log_scalars(self.head_name, scalars)
        return losses

    def compute(self, ranking: HeadRanking) -> Tuple[torch.Tensor, Dict[str, Scalar]]:
        """The loss of one batch, without logging and without waiting for the device.

        Returns:
            ``(total loss, {scalar name: value})``, the values detached scalar tensors (or
            numbers); :meth:`forward` logs the scalars under the head's name.
        """
        raise NotImplementedError

    def mask_loss(
        self, ranking: HeadRanking, balance_to: torch.Tensor
    ) -> Tuple[torch.Tensor, Dict[str, Scalar]]:
        """The mask branch's loss (Rank & Sort Mask R-CNN's), for a ranking with masks.

        ``L_mask = Σ_P w_i · Dice_i / Σ_P w_i`` with ``Dice_i = 1 − 2Σpt / (Σp² + Σt² + ε)`` on
        the sigmoid of positive i's mask logits and ``w_i`` its detached best class score (as
        the RS box loss); returned as ``λ_mask · L_mask`` with the detached
        ``λ_mask = balance_to / L_mask`` (0 when ``L_mask`` is 0), so its value equals the
        ranking loss's. Override it for another mask loss.

        Args:
            ranking: a ranking with :attr:`~HeadRanking.mask_logits` and ``gt_masks``.
            balance_to: detached scalar, the value of the head's ranking loss
                (:attr:`balance_scalar`).

        Returns:
            ``(loss, scalars)``: ``mask_dice`` (unweighted ``L_mask``), ``mask_weight``
            (``λ_mask``) and ``mask_iou`` (mean soft IoU of the positives' masks).
        """
        probs = ranking.mask_logits.sigmoid()
        loss = _weighted_mean(
            positive_score_weights(ranking).to(probs.dtype), dice_loss(probs, ranking.gt_masks)
        )
        weight = _value_balance(balance_to.to(loss), loss)
        with torch.no_grad():
            iou = soft_mask_iou(probs, ranking.gt_masks)
        scalars = {
            "mask_dice": loss.detach(),
            "mask_weight": weight,
            "mask_iou": iou.mean() if iou.numel() else 0.0,
        }
        return weight * loss, scalars


@HEAD_LOSS_REGISTRY.register()
class StockHeadLoss(RankingHeadLoss):
    """``MODEL.PAPLOSS.LOSS: "stock"``: the head keeps Detectron2's losses and never calls this."""

    loss_name = "stock"
    is_stock = True

    @configurable
    def __init__(self, **kwargs):
        """
        Args:
            kwargs: the arguments of :class:`RankingHeadLoss`.
        """
        super().__init__(**kwargs)

    def compute(self, ranking: HeadRanking) -> Tuple[torch.Tensor, Dict[str, Scalar]]:
        raise RuntimeError(f"{self.head_name}: the stock head computes Detectron2's own losses")


@HEAD_LOSS_REGISTRY.register()
class PAPHeadLoss(RankingHeadLoss):
    """The PAP loss: ranking and localisation in one term (formula: ``docs/pap_loss.md``).

    The quality of a positive is ``(GIoU + 1) / 2`` or the IoU of its decoded predicted box, or
    with ``"mask_iou"`` also reads its predicted mask (:meth:`quality`); λ scales only the
    gradient that reaches the box (and mask) branch through the quality.
    Scalars: ``pap_ranking``, ``pap_localization`` (their sum is the loss), ``num_positives``,
    ``pap_precision_error`` (the positives' mean precision error R_i: with identity functions a
    positive's box gradient is ``1 - R_i``, so a value near 1 says the boxes barely learn).
    """

    loss_name = "pap"
    uses_grad_scale = True
    config_keys = {
        "functions": "MODEL.PAPLOSS.{head}.FUNCTIONS",
        "grad_scale": "MODEL.PAPLOSS.{head}.GRAD_SCALE",
        "quality_type": "MODEL.PAPLOSS.QUALITY",
        "topk": "MODEL.PAPLOSS.TOPK",
    }

    @configurable
    def __init__(
        self,
        *,
        functions: PAPFunctions,
        grad_scale: float = 1.0,
        quality_type: str = "giou",
        topk: int = 0,
        **kwargs,
    ):
        """
        Args:
            functions: the PAP loss's five functions for this head.
            grad_scale: λ > 0, scales the gradient reaching the box branch only.
            quality_type: ``"giou"`` (``(GIoU + 1) / 2``), ``"iou"`` or ``"mask_iou"`` (see
                :meth:`quality`).
            topk: ``N >= 0``: the j-sums over the N largest valid logits only (the published
                truncation); 0: exact over all entries.
            kwargs: the arguments of :class:`RankingHeadLoss`.
        """
        super().__init__(**kwargs)
        if quality_type not in QUALITY_TYPES + (MASK_IOU_QUALITY,):
            raise ValueError(
                f"{self.config_key('quality_type')} must be one of "
                f"{QUALITY_TYPES + (MASK_IOU_QUALITY,)}, got {quality_type!r}"
            )
        self.functions = functions
        self.grad_scale = check_number(grad_scale, self.config_key("grad_scale"), low=0.0)
        self.quality_type = quality_type
        self.topk = check_int(topk, self.config_key("topk"), minimum=0)

    @classmethod
    def from_config(cls, cfg, head: str, *, head_name: str, loss_key: str) -> dict:
        ret = super().from_config(cfg, head, head_name=head_name, loss_key=loss_key)
        node = cfg.MODEL.PAPLOSS
        ret.update(
            functions=_config_functions(
                node[head].FUNCTIONS, cls.config_keys["functions"].format(head=head)
            ),
            grad_scale=node[head].GRAD_SCALE,
            quality_type=node.QUALITY,
            topk=node.TOPK,
        )
        if node.QUALITY == MASK_IOU_QUALITY and (
            head == "RETINANET" or (head == "ROI_HEADS" and not cfg.MODEL.MASK_ON)
        ):
            raise ValueError(
                f"{cls.config_keys['quality_type']}: {MASK_IOU_QUALITY!r} needs the ROI heads' "
                f"mask branch (MODEL.MASK_ON: True with PAPROIHeads); the {head} head has none"
            )
        return ret

    def quality(self, ranking: HeadRanking) -> torch.Tensor:
        """``[P]`` quality ``u`` of the positives, differentiable in their predictions.

        ``"giou"``: ``(GIoU + 1) / 2`` of the predicted box; ``"iou"``: its IoU;
        ``"mask_iou"``: the soft IoU of the predicted mask (sigmoid) with the ground-truth mask
        on the RoI grid (:func:`~paploss.losses.soft_mask_iou`) times ``(GIoU + 1) / 2`` of the
        box, so that both the mask and the box branch learn from the loss (a mask pasted into a
        badly placed box is a bad instance mask); a ranking without masks (the RPN of a Mask
        R-CNN) uses ``(GIoU + 1) / 2``.
        """
        if self.quality_type != MASK_IOU_QUALITY:
            return box_quality(ranking.pred_boxes, ranking.gt_boxes, self.quality_type)
        quality = box_quality(ranking.pred_boxes, ranking.gt_boxes, "giou")
        if ranking.has_masks:
            mask_iou = soft_mask_iou(ranking.mask_logits.sigmoid(), ranking.gt_masks)
            quality = quality * mask_iou.to(quality.dtype)
        return quality

    def compute(self, ranking: HeadRanking) -> Tuple[torch.Tensor, Dict[str, Scalar]]:
        quality_of_positives = scale_grad(self.quality(ranking), self.grad_scale)
        parts = pap_loss_components(
            ranking.flat_logits,
            ranking.targets,
            ranking.per_entry(quality_of_positives),
            self.functions,
            self.topk,
        )
        scalars = {
            "pap_localization": parts.localization.detach(),
            "pap_ranking": parts.ranking.detach(),
            "pap_precision_error": parts.precision_error,
        }
        return parts.loss, scalars


@HEAD_LOSS_REGISTRY.register()
class APHeadLoss(RankingHeadLoss):
    """AP-Loss for classification plus a smooth-L1 box regression loss.

    ``loss = ap_loss(logits) + sum_P smoothL1(pred_deltas - gt_deltas) / max(P, 1)``: the AP-Loss
    paper keeps the detector's smooth-L1 regression, normalised by the number of positives. The
    deltas are the head's own encoding (``Box2BoxTransform`` with its ``BBOX_REG_WEIGHTS``) and
    beta is the head's Detectron2 smooth-L1 beta (``MODEL.RETINANET.SMOOTH_L1_LOSS_BETA``,
    ``MODEL.RPN.SMOOTH_L1_BETA``, ``MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA``), so the box term is the
    stock head's, normalised by the batch's positives instead of Detectron2's running average.
    The two terms are added with weight 1, as in the paper.
    Scalars: ``ap_cls`` (1 - interpolated AP), ``ap_box``, ``num_positives``.
    """

    loss_name = "ap"
    balance_scalar = "ap_cls"
    config_keys = {"delta": "MODEL.PAPLOSS.AP.DELTA"}

    @configurable
    def __init__(self, *, delta: float = 1.0, smooth_l1_beta: float = 0.0, **kwargs):
        """
        Args:
            delta: half-width of AP-Loss's smoothed step, > 0.
            smooth_l1_beta: beta of the smooth-L1 box loss, >= 0 (0: L1).
            kwargs: the arguments of :class:`RankingHeadLoss`.
        """
        super().__init__(**kwargs)
        self.delta = check_number(delta, self.config_key("delta"), low=0.0)
        self.smooth_l1_beta = check_number(
            smooth_l1_beta, self.config_key("smooth_l1_beta"), low=0.0, low_inclusive=True
        )

    def config_key(self, argument: str) -> str:
        if argument == "smooth_l1_beta" and self.head in _SMOOTH_L1_BETA_KEYS:
            return "MODEL.{}.{}".format(*_SMOOTH_L1_BETA_KEYS[self.head])
        return super().config_key(argument)

    @classmethod
    def from_config(cls, cfg, head: str, *, head_name: str, loss_key: str) -> dict:
        ret = super().from_config(cfg, head, head_name=head_name, loss_key=loss_key)
        node, key = _SMOOTH_L1_BETA_KEYS[head]
        ret.update(delta=cfg.MODEL.PAPLOSS.AP.DELTA, smooth_l1_beta=cfg.MODEL[node][key])
        return ret

    def compute(self, ranking: HeadRanking) -> Tuple[torch.Tensor, Dict[str, Scalar]]:
        if ranking.pred_deltas is None or ranking.gt_deltas is None:
            raise ValueError(f"{self.head_name}: the AP-Loss box term needs pred_deltas, gt_deltas")
        cls_loss = ap_loss(ranking.flat_logits, ranking.targets, self.delta)
        box_loss = smooth_l1_loss(
            ranking.pred_deltas, ranking.gt_deltas, self.smooth_l1_beta, reduction="sum"
        ) / max(ranking.num_positives, 1)
        scalars = {"ap_cls": cls_loss.detach(), "ap_box": box_loss.detach()}
        return cls_loss + box_loss.to(cls_loss.dtype), scalars


class ALRPSelfBalance(nn.Module):
    """aLRP's self-balancing weight of the localisation term, with its state in buffers.

    The weight starts at ``initial_weight`` (50 in the paper) and every ``period`` calls (one
    epoch in the paper) is reset to ``(mean(L_cls) + mean(L_loc)) / mean(L_loc)`` over the calls
    of that period (kept when ``mean(L_loc) == 0``); the new weight already applies to the call
    that completes the period. The weight and the running sums of the period are float64
    buffers, so they are part of the model's state dict: checkpoints keep them and a resumed
    training continues the period exactly. They are updated without a host synchronisation.
    Under DistributedDataParallel each process keeps its own values (as the published
    implementation; Detectron2's trainer does not broadcast buffers) and the checkpoint holds
    those of the main process.
    """

    def __init__(self, *, period: int, initial_weight: float = 50.0):
        """
        Args:
            period: number of calls between two resets of the weight, an int > 0.
            initial_weight: weight until the first reset, > 0. (:class:`ALRPHeadLoss` checks
                both against its config keys.)
        """
        super().__init__()
        self.period = int(period)
        self.register_buffer("weight", torch.tensor(float(initial_weight), dtype=torch.float64))
        self.register_buffer("cls_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("loc_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def forward(self, cls_loss: torch.Tensor, loc_loss: torch.Tensor) -> torch.Tensor:
        """Record this call's unweighted losses; return the weight to apply now (a detached
        float64 scalar)."""
        self.cls_sum += cls_loss.detach().to(self.cls_sum)
        self.loc_sum += loc_loss.detach().to(self.loc_sum)
        self.count += 1
        reset = self.count >= self.period
        has_loc = self.loc_sum > 0
        balanced = (self.cls_sum + self.loc_sum) / torch.where(has_loc, self.loc_sum, 1.0)
        self.weight.copy_(torch.where(reset & has_loc, balanced, self.weight))
        self.cls_sum.masked_fill_(reset, 0.0)
        self.loc_sum.masked_fill_(reset, 0.0)
        self.count.masked_fill_(reset, 0)
        return self.weight.clone()

    def extra_repr(self) -> str:
        return f"period={self.period}"


@HEAD_LOSS_REGISTRY.register()
class ALRPHeadLoss(RankingHeadLoss):
    """aLRP Loss: ``L = L_cls + w * L_loc`` with the self-balancing weight ``w``.

    A positive's localisation error is ``E = (1 - GIoU(pred, gt)) / (2 (1 - tau))``; ``L_cls``
    (trained with the aLRP error-driven gradient, which also reads ``E``) and ``L_loc`` (the
    score-ordered localisation term, gradient to the boxes only) come from
    :func:`paploss.losses.alrp_loss`; ``w`` from :class:`ALRPSelfBalance`.
    Scalars: ``alrp_cls``, ``alrp_box`` (unweighted ``L_loc``), ``alrp_box_weight`` (``w``),
    ``num_positives``.
    """

    loss_name = "alrp"
    balance_scalar = "alrp_cls"
    config_keys = {
        "tau": "MODEL.PAPLOSS.{head}.ALRP_TAU",
        "delta": "MODEL.PAPLOSS.ALRP.DELTA",
        "balance_period": "MODEL.PAPLOSS.ALRP.BALANCE_PERIOD",
        "initial_weight": "MODEL.PAPLOSS.ALRP.INITIAL_WEIGHT",
    }

    @configurable
    def __init__(
        self,
        *,
        tau: float = 0.5,
        delta: float = 1.0,
        balance_period: int = 7330,
        initial_weight: float = 50.0,
        **kwargs,
    ):
        """
        Args:
            tau: the IoU threshold of a positive in aLRP's localisation error, in (0, 1).
            delta: half-width of the smoothed step, > 0.
            balance_period: iterations between two resets of the self-balancing weight (one
                epoch in the paper), an int > 0.
            initial_weight: the weight of the localisation term until the first reset, > 0.
            kwargs: the arguments of :class:`RankingHeadLoss`.
        """
        super().__init__(**kwargs)
        self.tau = check_number(tau, self.config_key("tau"), low=0.0, high=1.0)
        self.delta = check_number(delta, self.config_key("delta"), low=0.0)
        self.balance = ALRPSelfBalance(
            period=check_int(balance_period, self.config_key("balance_period"), minimum=1),
            initial_weight=check_number(initial_weight, self.config_key("initial_weight"), low=0.0),
        )

    @classmethod
    def from_config(cls, cfg, head: str, *, head_name: str, loss_key: str) -> dict:
        ret = super().from_config(cfg, head, head_name=head_name, loss_key=loss_key)
        node = cfg.MODEL.PAPLOSS
        ret.update(
            tau=node[head].ALRP_TAU,
            delta=node.ALRP.DELTA,
            balance_period=node.ALRP.BALANCE_PERIOD,
            initial_weight=node.ALRP.INITIAL_WEIGHT,
        )
        return ret

    def localization_errors(self, pred_boxes: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
        """``[P]`` errors ``(1 - GIoU) / (2 (1 - tau))`` in ``[0, 1 / (1 - tau)]``."""
        _, giou = paired_iou_giou(pred_boxes, gt_boxes)
        return (1 - giou).clamp_min(0.0) / (2 * (1 - self.tau))

    def compute(self, ranking: HeadRanking) -> Tuple[torch.Tensor, Dict[str, Scalar]]:
        loc_errors = self.localization_errors(ranking.pred_boxes, ranking.gt_boxes)
        cls_loss, loc_loss = alrp_loss(
            ranking.flat_logits, ranking.targets, ranking.per_entry(loc_errors), self.delta
        )
        weight = self.balance(cls_loss, loc_loss)
        scalars = {
            "alrp_cls": cls_loss.detach(),
            "alrp_box": loc_loss.detach(),
            "alrp_box_weight": weight,
        }
        return cls_loss + weight.to(loc_loss.dtype) * loc_loss, scalars


@HEAD_LOSS_REGISTRY.register()
class RSHeadLoss(RankingHeadLoss):
    """Rank & Sort Loss with a score-weighted GIoU box loss and value-based balancing.

    The continuous label of a positive is ``y = IoU(detached predicted box, gt)``. The box loss is
    the GIoU loss weighted by each positive's detached maximum class score (sigmoid), normalised
    by the sum of those weights; it is balanced every iteration by ``λ_box = L_RS / L_box``
    (detached; 0 when ``L_box == 0``). ``loss = loss_weight * (L_RS + λ_box * L_box)``, with
    ``loss_weight`` 0.2 for the RPN in the paper.
    Scalars: ``rs_cls`` (``L_RS``), ``rs_box`` (unweighted ``L_box``), ``rs_box_weight``
    (``λ_box``), ``num_positives``.
    """

    loss_name = "rs"
    balance_scalar = "rs_cls"
    config_keys = {
        "delta": "MODEL.PAPLOSS.RS.DELTA",
        "loss_weight": "MODEL.PAPLOSS.{head}.RS_LOSS_WEIGHT",
    }

    @configurable
    def __init__(self, *, delta: float = 0.5, loss_weight: float = 1.0, **kwargs):
        """
        Args:
            delta: half-width of the smoothed step, >= 0 (0: the exact step).
            loss_weight: factor of the head's whole loss, > 0.
            kwargs: the arguments of :class:`RankingHeadLoss`.
        """
        super().__init__(**kwargs)
        self.delta = check_number(delta, self.config_key("delta"), low=0.0, low_inclusive=True)
        self.loss_weight = check_number(loss_weight, self.config_key("loss_weight"), low=0.0)

    @classmethod
    def from_config(cls, cfg, head: str, *, head_name: str, loss_key: str) -> dict:
        ret = super().from_config(cfg, head, head_name=head_name, loss_key=loss_key)
        node = cfg.MODEL.PAPLOSS
        ret.update(delta=node.RS.DELTA, loss_weight=node[head].RS_LOSS_WEIGHT)
        return ret

    def compute(self, ranking: HeadRanking) -> Tuple[torch.Tensor, Dict[str, Scalar]]:
        rs, box_loss, box_weight = rank_sort_terms(ranking, self.delta)
        total = self.loss_weight * (rs + box_weight.to(rs.dtype) * box_loss.to(rs.dtype))
        scalars = {
            "rs_cls": rs.detach(),
            "rs_box": box_loss.detach(),
            "rs_box_weight": box_weight,
        }
        return total, scalars


def build_head_loss(cfg, head: str, *, head_name: str, key_prefix: str) -> RankingHeadLoss:
    """The head loss registered under ``cfg.MODEL.PAPLOSS.LOSS``, for one head.

    Args:
        cfg: a config with :func:`~paploss.modeling.config.add_paploss_config` keys.
        head: the head's subtree of ``MODEL.PAPLOSS``: ``"RETINANET"``, ``"RPN"`` or
            ``"ROI_HEADS"``.
        head_name: prefix of the event-storage scalars (e.g. ``"rpn"``).
        key_prefix: prefix of the loss-dict key, completed with the loss name (e.g.
            ``"loss_rpn_"`` gives ``"loss_rpn_rs"``).

    Raises:
        ValueError: naming the key, for an unregistered loss or a bad value of a key it reads.
    """
    loss_name = cfg.MODEL.PAPLOSS.LOSS
    if not isinstance(loss_name, str) or loss_name not in HEAD_LOSS_REGISTRY:
        names = ", ".join(sorted(name for name, _ in HEAD_LOSS_REGISTRY))
        raise ValueError(
            f"MODEL.PAPLOSS.LOSS must be one of the registered head losses ({names}), "
            f"got {loss_name!r}"
        )
    loss_class = HEAD_LOSS_REGISTRY.get(loss_name)
    grad_scale = cfg.MODEL.PAPLOSS[head].GRAD_SCALE
    if not loss_class.uses_grad_scale and grad_scale != 1.0:
        logger.warning(
            f"MODEL.PAPLOSS.{head}.GRAD_SCALE={grad_scale} only applies to the 'pap' loss; "
            f"it is ignored with MODEL.PAPLOSS.LOSS={loss_name!r}"
        )
    return loss_class(cfg, head, head_name=head_name, loss_key=f"{key_prefix}{loss_name}")


@contextlib.contextmanager
def record_rankings(model: nn.Module) -> Iterator[Dict[str, HeadRanking]]:
    """Record what each head of ``model`` ranks, during the forwards run inside the context.

    A forward pre-hook on every :class:`RankingHeadLoss` of the model built from a config keeps
    the :class:`HeadRanking` the head hands to its loss, by head (``"RETINANET"``, ``"RPN"``,
    ``"ROI_HEADS"``; the latest forward wins). Nothing about the forward changes: the losses are
    computed as in training. A stock head (``MODEL.PAPLOSS.LOSS: "stock"``) builds no ranking.

    Example::

        with record_rankings(model) as rankings, EventStorage():
            model(batched_inputs)
        rankings["RPN"].labels

    Yields:
        The dict that the forwards fill.
    """
    rankings: Dict[str, HeadRanking] = {}
    handles = []
    for module in model.modules():
        if isinstance(module, RankingHeadLoss) and module.head is not None:

            def keep(_module, inputs, head=module.head):
                rankings[head] = inputs[0]

            handles.append(module.register_forward_pre_hook(keep))
    try:
        yield rankings
    finally:
        for handle in handles:
            handle.remove()
