"""Set losses of Deformable DETR: Hungarian matching, then ``MODEL.PAPLOSS.LOSS`` per layer.

Shape shorthand: ``N`` images, ``Q`` queries (or encoder pixels), ``K`` classes (1 for the
two-stage encoder proposals, which are class-agnostic), ``P`` matched queries of the batch.

Every decoder layer (and, two-stage, the encoder proposals) is matched to the ground truth on its
own and gets the same loss; keys carry a suffix: none for the last layer, ``_<i>`` for decoder
layer ``i`` before it, ``_enc`` for the encoder proposals. Returned values are already weighted.

* ``"stock"`` (Deformable DETR): ``loss_ce`` sigmoid focal loss over all (query, class) entries,
  one-hot targets at the matched queries' classes; ``loss_bbox`` L1 and ``loss_giou`` GIoU loss of
  the matched boxes (normalised ``(cx, cy, w, h)``). Each summed and divided by the number of
  ground-truth boxes of the batch (averaged over processes), weights 2, 5 and 2.
* ``"pap"``: ``loss_pap``, the PAP loss over all ``N * Q * K`` (query, class) entries of the
  per-device batch, a matched query's ground-truth class positive and every other entry
  negative; a positive's quality is ``(GIoU + 1) / 2`` or IoU (``MODEL.PAPLOSS.QUALITY``) of its
  predicted and ground-truth boxes, and λ scales the gradient that reaches the boxes through it.
  One function set and one λ (``MODEL.PAPLOSS.DETR``) serve every layer. ``loss_bbox``, the
  stock L1 term, is kept beside it (``LOSS.RANKING_BBOX_WEIGHT``, 0 drops it). The PAP loss is
  paploss's head loss (:class:`paploss.modeling.head_loss.PAPHeadLoss`, head ``"DETR"``) on the
  layer's :class:`~paploss.modeling.ranking.HeadRanking` (:func:`detr_ranking`); the last decoder
  layer's ranking goes through the module's forward, so that what the search's screening
  records (:func:`paploss.modeling.record_rankings`) and the early stop of invalid trainings
  checks is the detector's own output, and the other outputs through its ``compute``.
* ``"rs"``: ``loss_rs``, Rank & Sort loss over the same entries (continuous labels: the IoU of
  the detached predicted box) plus the score-weighted GIoU loss balanced by value: paploss's
  definition (:func:`paploss.modeling.head_loss.rank_sort_terms`, that of its RS heads) on the
  layer's :func:`detr_ranking`; ``loss_bbox`` L1 as for ``"pap"``.
"""

import logging
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from fvcore.nn import sigmoid_focal_loss
from torch import nn

from paploss.losses import PAPFunctions
from paploss.losses.box_quality import QUALITY_TYPES, paired_iou_giou
from paploss.modeling.head_loss import PAPHeadLoss, rank_sort_terms
from paploss.modeling.ranking import HeadRanking

from .box_ops import box_cxcywh_to_xyxy
from .config import (
    DETR_LOSSES,
    PAP_SUBTREE,
    config_bool,
    config_choice,
    config_int,
    config_number,
)
from .matcher import HungarianMatcher

__all__ = ["DeformableDETRCriterion", "IDENTITY_TRANSFORM", "build_matcher", "detr_ranking"]

logger = logging.getLogger(__name__)

Targets = Sequence[Mapping[str, torch.Tensor]]

#: The box encoding of a DETR ranking: a query's box is its reference box under zero deltas,
#: a delta moves or scales a box by its own width and height (what the screening optimises).
IDENTITY_TRANSFORM = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))


def detr_ranking(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    matched: Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    image_sizes: Optional[torch.Tensor] = None,
) -> HeadRanking:
    """The ranking of one supervised output: every (query, class) entry of the batch.

    A matched query's ground-truth class is its label, every other query is background (``K``);
    nothing is ignored. The boxes are the predicted boxes as reference boxes with zero deltas
    under :data:`IDENTITY_TRANSFORM`, so the positives' decoded boxes are the predicted ones (with
    their gradient) and the ranking can be decoded from other deltas
    (:meth:`~paploss.modeling.ranking.HeadRanking.with_predictions`). Boxes are in input-image
    pixels (XYXY) when ``image_sizes`` is given, else in the normalised frame; IoU and GIoU are
    the same in both.

    Args:
        logits: ``[N, Q, K]``.
        boxes: ``[N, Q, 4]`` normalised ``(cx, cy, w, h)``.
        matched: :meth:`DeformableDETRCriterion.matched`: ``image [P]``, ``query [P]``,
            ``gt_labels [P]``, ``gt_boxes [P, 4]`` (normalised ``(cx, cy, w, h)``).
        image_sizes: ``[N, 2]`` unpadded ``(height, width)`` of the input images, or None.

    Returns:
        Rows image-major (``R = N * Q``).
    """
    num_images, num_queries, num_classes = logits.shape
    image, query, gt_labels, gt_boxes = matched
    if image_sizes is None:
        scale = torch.ones((num_images, 4), dtype=boxes.dtype, device=boxes.device)
    else:
        height, width = image_sizes.to(boxes).unbind(-1)
        scale = torch.stack([width, height, width, height], dim=-1)
    rows = image * num_queries + query
    labels = torch.full((num_images * num_queries,), num_classes, device=logits.device)
    labels[rows] = gt_labels
    pred_xyxy = (box_cxcywh_to_xyxy(boxes) * scale[:, None]).reshape(-1, 4)
    gt_xyxy = pred_xyxy.new_zeros(pred_xyxy.shape)
    gt_xyxy[rows] = box_cxcywh_to_xyxy(gt_boxes).to(gt_xyxy) * scale[image]
    return HeadRanking.from_deltas(
        logits=logits.reshape(-1, num_classes),
        labels=labels,
        deltas=pred_xyxy.new_zeros(pred_xyxy.shape),
        reference_boxes=pred_xyxy,
        matched_gt_boxes=gt_xyxy,
        image_index=torch.arange(num_images, device=logits.device).repeat_interleave(num_queries),
        box2box_transform=IDENTITY_TRANSFORM,
    )


def build_matcher(cfg) -> HungarianMatcher:
    """The Hungarian matcher of ``MODEL.DEFORMABLE_DETR.MATCHER`` (focal parameters from LOSS)."""
    node = cfg.MODEL.DEFORMABLE_DETR
    key = "MODEL.DEFORMABLE_DETR."
    costs = {
        name: config_number(node.MATCHER[name.upper()], f"{key}MATCHER.{name.upper()}")
        for name in ("cost_class", "cost_bbox", "cost_giou")
    }
    if sum(costs.values()) == 0:
        raise ValueError(f"{key}MATCHER: all matching cost weights are 0")
    return HungarianMatcher(
        **costs,
        focal_alpha=config_number(node.LOSS.FOCAL_ALPHA, f"{key}LOSS.FOCAL_ALPHA", high=1.0),
        focal_gamma=config_number(node.LOSS.FOCAL_GAMMA, f"{key}LOSS.FOCAL_GAMMA"),
    )


def _put_scalars(**scalars: float) -> None:
    try:
        storage = get_event_storage()
    except AssertionError:  # called outside a training loop (tests, screening)
        return
    storage.put_scalars(**scalars)


class DeformableDETRCriterion(nn.Module):
    """Matches every supervised output to the ground truth and computes its loss."""

    @configurable
    def __init__(
        self,
        *,
        matcher: HungarianMatcher,
        loss_name: str = "stock",
        aux_loss: bool = True,
        class_weight: float = 2.0,
        bbox_weight: float = 5.0,
        giou_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        ranking_weight: float = 1.0,
        ranking_bbox_weight: float = 5.0,
        functions: Optional[PAPFunctions] = None,
        grad_scale: float = 1.0,
        quality_type: str = "giou",
        topk: int = 0,
        rs_delta: float = 0.5,
    ):
        """
        Args:
            matcher: the Hungarian matcher.
            loss_name: ``"stock"``, ``"pap"`` or ``"rs"``.
            aux_loss: supervise every decoder layer (else only the last).
            class_weight, bbox_weight, giou_weight: weights of the stock focal, L1, GIoU terms.
            focal_alpha, focal_gamma: focal-loss parameters.
            ranking_weight: weight of the PAP / RS loss of each layer.
            ranking_bbox_weight: weight of the L1 term kept beside the PAP / RS loss.
            functions: the PAP functions (default: identities).
            grad_scale: λ > 0 of the PAP loss.
            quality_type: ``"giou"`` or ``"iou"``, the PAP quality of a positive.
            topk: the PAP loss's j-sums over the ``topk`` largest logits only (0: all).
            rs_delta: half-width of the RS loss's smoothed step.
        """
        super().__init__()
        self.matcher = matcher
        self.loss_name = config_choice(loss_name, "loss_name", DETR_LOSSES)
        self.aux_loss = aux_loss
        self.class_weight = class_weight
        self.bbox_weight = bbox_weight
        self.giou_weight = giou_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.ranking_weight = ranking_weight
        self.ranking_bbox_weight = ranking_bbox_weight
        self.functions = functions if functions is not None else PAPFunctions.identity()
        self.grad_scale = config_number(grad_scale, "grad_scale", low_inclusive=False)
        self.quality_type = config_choice(quality_type, "quality_type", QUALITY_TYPES)
        self.rs_delta = rs_delta
        # The PAP loss of a ranking, paploss's; its head (the MODEL.PAPLOSS subtree) names keys
        # in errors and the ranking in paploss.modeling.record_rankings.
        self.pap_loss: Optional[PAPHeadLoss] = None
        if self.loss_name == "pap":
            self.pap_loss = PAPHeadLoss(
                functions=self.functions,
                grad_scale=self.grad_scale,
                quality_type=self.quality_type,
                topk=topk,
                head=PAP_SUBTREE,
                head_name="detr",
                loss_key="loss_pap",
            )

    @classmethod
    def from_config(cls, cfg) -> dict:
        node = cfg.MODEL.DEFORMABLE_DETR
        key = "MODEL.DEFORMABLE_DETR.LOSS."
        pap = cfg.MODEL.PAPLOSS
        pap_key = f"MODEL.PAPLOSS.{PAP_SUBTREE}"
        loss_name = config_choice(pap.LOSS, "MODEL.PAPLOSS.LOSS", DETR_LOSSES)
        try:
            functions = PAPFunctions.from_knots(
                {name: pap[PAP_SUBTREE].FUNCTIONS[name] for name in pap[PAP_SUBTREE].FUNCTIONS}
            )
        except ValueError as e:
            raise ValueError(f"{pap_key}.FUNCTIONS: {e}") from e
        grad_scale = config_number(
            pap[PAP_SUBTREE].GRAD_SCALE, f"{pap_key}.GRAD_SCALE", low_inclusive=False
        )
        if loss_name != "pap" and grad_scale != 1.0:
            logger.warning(f"{pap_key}.GRAD_SCALE={grad_scale} is ignored with LOSS={loss_name!r}")
        return {
            "matcher": build_matcher(cfg),
            "loss_name": loss_name,
            "aux_loss": config_bool(node.AUX_LOSS, "MODEL.DEFORMABLE_DETR.AUX_LOSS"),
            "class_weight": config_number(node.LOSS.CLASS_WEIGHT, f"{key}CLASS_WEIGHT"),
            "bbox_weight": config_number(node.LOSS.BBOX_WEIGHT, f"{key}BBOX_WEIGHT"),
            "giou_weight": config_number(node.LOSS.GIOU_WEIGHT, f"{key}GIOU_WEIGHT"),
            "focal_alpha": config_number(node.LOSS.FOCAL_ALPHA, f"{key}FOCAL_ALPHA", high=1.0),
            "focal_gamma": config_number(node.LOSS.FOCAL_GAMMA, f"{key}FOCAL_GAMMA"),
            "ranking_weight": config_number(
                node.LOSS.RANKING_WEIGHT, f"{key}RANKING_WEIGHT", low_inclusive=False
            ),
            "ranking_bbox_weight": config_number(
                node.LOSS.RANKING_BBOX_WEIGHT, f"{key}RANKING_BBOX_WEIGHT"
            ),
            "functions": functions,
            "grad_scale": grad_scale,
            "quality_type": config_choice(pap.QUALITY, "MODEL.PAPLOSS.QUALITY", QUALITY_TYPES),
            "topk": config_int(pap.TOPK, "MODEL.PAPLOSS.TOPK", low=0),
            "rs_delta": config_number(pap.RS.DELTA, "MODEL.PAPLOSS.RS.DELTA"),
        }

    @staticmethod
    def num_boxes(targets: Targets, device) -> float:
        """Ground-truth boxes per process, averaged over processes, at least 1."""
        count = torch.tensor(
            [float(sum(len(t["labels"]) for t in targets))], dtype=torch.float32, device=device
        )
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(count)
            count = count / comm.get_world_size()
        return max(count.item(), 1.0)

    def forward(
        self, outputs: Mapping[str, torch.Tensor], targets: Targets
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: ``"logits"`` ``[D, N, Q, K]`` and ``"boxes"`` ``[D, N, Q, 4]`` of the decoder
                layers; two-stage also ``"enc_logits"`` ``[N, S, 1]``, ``"enc_boxes"``
                ``[N, S, 4]``.
            targets: ``N`` dicts: ``"labels"`` ``[G]`` int64, ``"boxes"`` ``[G, 4]`` normalised
                ``(cx, cy, w, h)``, and optionally ``"image_size"`` ``[2]``, the unpadded input
                ``(height, width)`` (the PAP loss's ranking is then in pixels, see
                :func:`detr_ranking`).

        Returns:
            Weighted losses (see the module docstring for the keys).
        """
        logits, boxes = outputs["logits"], outputs["boxes"]
        num_boxes = self.num_boxes(targets, logits.device)
        num_layers = logits.shape[0]
        layers = range(num_layers) if self.aux_loss else [num_layers - 1]
        losses: Dict[str, torch.Tensor] = {}
        for layer in layers:
            suffix = "" if layer == num_layers - 1 else f"_{layer}"
            losses.update(
                self.layer_losses(logits[layer], boxes[layer], targets, num_boxes, suffix)
            )
        if "enc_logits" in outputs:
            agnostic = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            losses.update(
                self.layer_losses(
                    outputs["enc_logits"], outputs["enc_boxes"], agnostic, num_boxes, "_enc"
                )
            )
        return losses

    def layer_losses(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        targets: Targets,
        num_boxes: float,
        suffix: str = "",
    ) -> Dict[str, torch.Tensor]:
        """Match one output to the ground truth and compute its weighted losses.

        Args:
            logits: ``[N, Q, K]``.
            boxes: ``[N, Q, 4]`` normalised ``(cx, cy, w, h)``.
            targets: as in :meth:`forward`.
            num_boxes: the stock losses' normaliser.
            suffix: appended to every key.
        """
        matches = self.matcher(logits, boxes, targets)
        matched = self.matched(matches, targets, logits.device)
        image, query, gt_labels, gt_boxes = matched
        pred_boxes = boxes[image, query]  # [P, 4]
        l1 = (pred_boxes - gt_boxes).abs().sum() / num_boxes
        if self.loss_name == "stock":
            one_hot = torch.zeros_like(logits)
            one_hot[image, query, gt_labels] = 1.0
            focal = sigmoid_focal_loss(
                logits, one_hot, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
            )
            _, giou = paired_iou_giou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(gt_boxes))
            return {
                f"loss_ce{suffix}": self.class_weight * focal / num_boxes,
                f"loss_bbox{suffix}": self.bbox_weight * l1,
                f"loss_giou{suffix}": self.giou_weight * (1 - giou).sum() / num_boxes,
            }
        sizes = [t["image_size"] for t in targets] if "image_size" in targets[0] else None
        ranking = detr_ranking(
            logits, boxes, matched, None if sizes is None else torch.stack(sizes)
        )
        if self.loss_name == "pap":
            ranking_loss = self._pap(ranking, suffix)
        else:
            rs, box_loss, box_weight = rank_sort_terms(ranking, self.rs_delta)
            ranking_loss = rs + box_weight.to(rs.dtype) * box_loss.to(rs.dtype)
        return {
            f"loss_{self.loss_name}{suffix}": self.ranking_weight * ranking_loss,
            f"loss_bbox{suffix}": self.ranking_bbox_weight * l1,
        }

    @staticmethod
    def matched(
        matches: List[Tuple[torch.Tensor, torch.Tensor]], targets: Targets, device
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flatten per-image matches: ``image [P]``, ``query [P]``, ``gt_labels [P]``,
        ``gt_boxes [P, 4]``."""
        image = torch.cat([torch.full_like(q, index) for index, (q, _) in enumerate(matches)]).to(
            device
        )
        query = torch.cat([q for q, _ in matches]).to(device)
        gt_labels = torch.cat(
            [t["labels"][g.to(t["labels"].device)] for (_, g), t in zip(matches, targets)]
        ).to(device)
        gt_boxes = torch.cat(
            [t["boxes"][g.to(t["boxes"].device)] for (_, g), t in zip(matches, targets)]
        ).to(device)
        return image, query, gt_labels.long(), gt_boxes

    def _pap(self, ranking: HeadRanking, suffix: str) -> torch.Tensor:
        """The PAP loss of one output's ranking; the last decoder layer's (``suffix`` "") through
        the head loss's forward (logged by it as ``detr/...``), the others through ``compute``
        (logged here with their suffix)."""
        if not suffix:
            return self.pap_loss(ranking)[self.pap_loss.loss_key]
        loss, scalars = self.pap_loss.compute(ranking)
        _put_scalars(**{f"detr/{name}{suffix}": value for name, value in scalars.items()})
        return loss

    def extra_repr(self) -> str:
        text = f"loss={self.loss_name!r}, aux_loss={self.aux_loss}"
        if self.loss_name == "pap":
            text += f", grad_scale={self.grad_scale}, quality={self.quality_type!r}"
        return text
