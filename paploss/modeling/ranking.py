"""What a head ranks: :class:`HeadRanking`, built by one function per kind of head.

Shape shorthand (as in Detectron2's ``fast_rcnn.py``):

* ``R``: anchors (RetinaNet, RPN) or RoIs (ROI head) of the whole per-device batch
* ``K``: foreground classes (1 for the RPN)
* ``P``: positive anchors / RoIs
* ``N``: images; ``A``: anchors of one image

Every ranking loss of a head (:mod:`paploss.modeling.head_loss`) reads one :class:`HeadRanking`:
the ``[R, K]`` logits, the ``[R]`` labels in Detectron2's convention (``0..K-1`` the class of a
positive, ``K`` background, ``-1`` ignored), and the positives' predicted boxes and deltas (with
gradient) with their ground truth, in label order. A head whose boxes are deltas applied to
reference boxes (anchors or proposals) also keeps every row's deltas, reference box and image, so
that the ranking can be decoded again from other predictions (:meth:`HeadRanking.with_predictions`,
used by the screening of candidate losses). The ROI head of a Mask R-CNN also hands over the
positives' mask logits at their ground-truth class and their ground-truth masks on the same RoI
grid (``M × M``), from which the head loss computes the mask branch's loss and, with
``MODEL.PAPLOSS.QUALITY: "mask_iou"``, the positives' quality.

The builders are the only place that knows how a head's Detectron2 ``losses`` arguments become a
ranking:

* :func:`dense_ranking`: RetinaNet-style heads (anchors × classes);
* :func:`rpn_ranking`: the RPN, whose objectness labels {-1, 0, 1} become one class;
* :func:`roi_ranking`: the Fast R-CNN box predictor, class-specific or class-agnostic regression,
  with the mask predictions of the positive RoIs when the ROI heads have a mask branch.

The heads' ``losses`` call them and hand the ranking to their head loss; anything else that needs
what a head ranks (the screening, a visualisation) observes the head loss's input with
:func:`paploss.modeling.head_loss.record_rankings` instead of re-deriving it.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.layers import cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances

__all__ = [
    "HeadRanking",
    "class_targets",
    "dense_ranking",
    "positive_mask_targets",
    "roi_ranking",
    "rpn_ranking",
]


def class_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-(anchor, class) targets from per-anchor labels.

    Args:
        labels: ``[R]`` int; ``0..K-1`` positive of that class, ``K`` background, ``-1`` ignored.
        num_classes: ``K``.

    Returns:
        ``[R, K]`` int8 targets: 1 at a positive's own class, 0 at every other class of a
        non-ignored anchor, -1 at every class of an ignored anchor.
    """
    classes = torch.arange(num_classes, device=labels.device)
    targets = (labels.unsqueeze(1) == classes).to(torch.int8)  # [R, K], fixed shapes only
    return torch.where(labels.unsqueeze(1) < 0, torch.full_like(targets, -1), targets)


@dataclass(frozen=True)
class HeadRanking:
    """One head's ranking of a batch: what every head loss reads.

    Build it with :meth:`from_deltas` (or a head's builder) when boxes are deltas on reference
    boxes; construct it directly for heads that predict boxes (the decoding fields stay None).

    Attributes:
        logits: ``[R, K]`` classification logits.
        labels: ``[R]`` int64 labels: ``0..K-1`` positive of that class, ``K`` background,
            ``-1`` ignored.
        pred_boxes: ``[P, 4]`` decoded predicted boxes of the positives (XYXY), in label order,
            carrying the gradient to the box branch.
        gt_boxes: ``[P, 4]`` their matched ground-truth boxes.
        pred_deltas: ``[P, 4]`` the positives' predicted deltas (with gradient), or None.
        gt_deltas: ``[P, 4]`` their regression targets in the same encoding, or None.
        deltas: ``[R, 4]`` (class-agnostic) or ``[R, K, 4]`` (per-class) deltas of every row.
        reference_boxes: ``[R, 4]`` anchors or proposals (XYXY) the deltas apply to.
        image_index: ``[R]`` int64, the image of each row.
        box2box_transform: the head's delta encoding.
        mask_logits: ``[P, M, M]`` mask logits of the positives at their ground-truth class
            (with gradient to the mask branch), in label order, or None (no mask branch).
        gt_masks: ``[P, M, M]`` their ground-truth masks (0/1, same dtype as ``mask_logits``)
            on the same RoI grid, or None.
        targets: ``[R * K]`` int8 in {1, 0, -1} (:func:`class_targets`, flattened); derived.
        positive_rows: ``[P]`` int64 rows of the positives; derived.
        positive_index: ``[P]`` int64 indices of the positives in the ``[R * K]`` entries;
            derived.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    pred_boxes: torch.Tensor
    gt_boxes: torch.Tensor
    pred_deltas: Optional[torch.Tensor] = None
    gt_deltas: Optional[torch.Tensor] = None
    deltas: Optional[torch.Tensor] = None
    reference_boxes: Optional[torch.Tensor] = None
    image_index: Optional[torch.Tensor] = None
    box2box_transform: Optional[Box2BoxTransform] = None
    mask_logits: Optional[torch.Tensor] = None
    gt_masks: Optional[torch.Tensor] = None
    targets: torch.Tensor = field(init=False, repr=False)
    positive_rows: torch.Tensor = field(init=False, repr=False)
    positive_index: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.logits.dim() != 2 or self.labels.shape != self.logits.shape[:1]:
            raise ValueError(
                f"logits must be [R, K] and labels [R], got {list(self.logits.shape)} and "
                f"{list(self.labels.shape)}"
            )
        num_classes = self.logits.shape[1]
        positive = (self.labels >= 0) & (self.labels < num_classes)
        rows = torch.nonzero(positive, as_tuple=True)[0]
        if rows.numel() != self.pred_boxes.shape[0]:
            raise ValueError(
                f"{rows.numel()} positives in labels but {self.pred_boxes.shape[0]} predicted boxes"
            )
        if (self.mask_logits is None) != (self.gt_masks is None):
            raise ValueError("mask_logits and gt_masks must be given together")
        if self.mask_logits is not None and (
            self.mask_logits.dim() != 3
            or self.mask_logits.shape[0] != rows.numel()
            or self.gt_masks.shape != self.mask_logits.shape
        ):
            raise ValueError(
                f"mask_logits and gt_masks must be [P, M, M] with P = {rows.numel()} positives, "
                f"got {list(self.mask_logits.shape)} and {list(self.gt_masks.shape)}"
            )
        object.__setattr__(self, "targets", class_targets(self.labels, num_classes).reshape(-1))
        object.__setattr__(self, "positive_rows", rows)
        object.__setattr__(self, "positive_index", rows * num_classes + self.labels[rows])

    @classmethod
    def from_deltas(
        cls,
        *,
        logits: torch.Tensor,
        labels: torch.Tensor,
        deltas: torch.Tensor,
        reference_boxes: torch.Tensor,
        matched_gt_boxes: torch.Tensor,
        image_index: torch.Tensor,
        box2box_transform: Box2BoxTransform,
    ) -> "HeadRanking":
        """The ranking of rows whose boxes are ``deltas`` applied to ``reference_boxes``.

        A positive's deltas are its row's (class-agnostic) or its row's at its label
        (per-class); its predicted box is them decoded on its reference box, its target deltas
        encode its matched ground truth on the same reference box.

        Args:
            logits: ``[R, K]``.
            labels: ``[R]`` in ``{-1, 0..K}``.
            deltas: ``[R, 4]`` or ``[R, K, 4]``.
            reference_boxes: ``[R, 4]`` anchors or proposals.
            matched_gt_boxes: ``[R, 4]`` ground truth matched to each row (read at positives).
            image_index: ``[R]`` image of each row.
            box2box_transform: the head's delta encoding.
        """
        rows = torch.nonzero((labels >= 0) & (labels < logits.shape[1]), as_tuple=True)[0]
        pred_deltas = _select(deltas, rows, labels)
        references = reference_boxes[rows]
        gt_boxes = matched_gt_boxes[rows]
        return cls(
            logits=logits,
            labels=labels,
            pred_boxes=box2box_transform.apply_deltas(pred_deltas, references),
            gt_boxes=gt_boxes,
            pred_deltas=pred_deltas,
            gt_deltas=box2box_transform.get_deltas(references, gt_boxes),
            deltas=deltas,
            reference_boxes=reference_boxes,
            image_index=image_index,
            box2box_transform=box2box_transform,
        )

    @property
    def has_masks(self) -> bool:
        """Whether the ranking carries the positives' mask predictions and ground truth."""
        return self.mask_logits is not None

    @property
    def num_classes(self) -> int:
        """``K``."""
        return int(self.logits.shape[1])

    @property
    def num_positives(self) -> int:
        """``P``."""
        return int(self.positive_rows.numel())

    @property
    def flat_logits(self) -> torch.Tensor:
        """``[R * K]`` logits, the order of :attr:`targets`."""
        return self.logits.reshape(-1)

    def per_entry(self, values: torch.Tensor) -> torch.Tensor:
        """``[R * K]`` tensor with the positives' ``values [P]`` at their entries, 0 elsewhere."""
        return torch.zeros_like(self.flat_logits).index_put(
            (self.positive_index,), values.to(self.flat_logits.dtype)
        )

    def positive_deltas(self, deltas: torch.Tensor) -> torch.Tensor:
        """``[P, 4]`` deltas of the positives (in label order) among other deltas of every row.

        Args:
            deltas: ``[R, 4]`` (class-agnostic) or ``[R, K, 4]`` (per-class, read at each
                positive's label), e.g. a predictor's output being trained.
        """
        return _select(deltas, self.positive_rows, self.labels)

    def with_predictions(self, logits: torch.Tensor, pred_deltas: torch.Tensor) -> "HeadRanking":
        """The same rows, labels and ground truth with other predictions.

        Args:
            logits: ``[R, K]`` logits.
            pred_deltas: ``[P, 4]`` deltas of the positives (e.g. tensors being optimised); the
                other rows keep their :attr:`deltas`.

        Returns:
            A ranking whose positives' boxes are ``pred_deltas`` decoded as :meth:`from_deltas`
            decodes them, and whose :attr:`deltas` hold ``pred_deltas`` at the positives.

        Raises:
            ValueError: if this ranking was not built from deltas.
        """
        if self.box2box_transform is None or self.deltas is None:
            raise ValueError("with_predictions needs a ranking built by HeadRanking.from_deltas")
        rows = self.positive_rows
        index = (rows,) if self.deltas.dim() == 2 else (rows, self.labels[rows])
        return dataclasses.replace(
            self,
            logits=logits,
            pred_deltas=pred_deltas,
            pred_boxes=self.box2box_transform.apply_deltas(pred_deltas, self.reference_boxes[rows]),
            deltas=self.deltas.index_put(index, pred_deltas),
        )


def _select(deltas: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[P, 4]`` deltas of ``rows``: class-agnostic ``[R, 4]`` or per-class ``[R, K, 4]`` at the
    rows' labels."""
    return deltas[rows] if deltas.dim() == 2 else deltas[rows, labels[rows]]


def dense_ranking(
    anchors: Sequence[Boxes],
    pred_logits: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    pred_anchor_deltas: Sequence[torch.Tensor],
    gt_boxes: Sequence[torch.Tensor],
    box2box_transform: Box2BoxTransform,
) -> HeadRanking:
    """The ranking of a dense head (``RetinaNet.losses``'s arguments): every (anchor, class).

    Args:
        anchors: per-level anchors (``Hi*Wi*A`` each), shared by the images.
        pred_logits: per-level ``[N, Hi*Wi*A, K]`` classification logits.
        gt_labels: per-image ``[A]`` labels in ``{-1, 0..K}``.
        pred_anchor_deltas: per-level ``[N, Hi*Wi*A, 4]`` box deltas.
        gt_boxes: per-image ``[A, 4]`` matched ground-truth boxes.
        box2box_transform: the head's anchor-to-box transform.

    Returns:
        Rows image-major (``R = N * A``).
    """
    labels = torch.stack(list(gt_labels))  # [N, A]
    num_images, num_anchors = labels.shape
    logits = cat(list(pred_logits), dim=1)
    return HeadRanking.from_deltas(
        logits=logits.reshape(num_images * num_anchors, logits.shape[-1]),
        labels=labels.reshape(-1),
        deltas=cat(list(pred_anchor_deltas), dim=1).reshape(-1, 4),
        reference_boxes=Boxes.cat(list(anchors)).tensor.repeat(num_images, 1),
        matched_gt_boxes=torch.stack(list(gt_boxes)).reshape(-1, 4),
        image_index=torch.arange(num_images, device=labels.device).repeat_interleave(num_anchors),
        box2box_transform=box2box_transform,
    )


def rpn_ranking(
    anchors: Sequence[Boxes],
    pred_objectness_logits: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    pred_anchor_deltas: Sequence[torch.Tensor],
    gt_boxes: Sequence[torch.Tensor],
    box2box_transform: Box2BoxTransform,
) -> HeadRanking:
    """The ranking of an RPN (``RPN.losses``'s arguments): every anchor, one class.

    The RPN's labels 1 (foreground), 0 (background), -1 (ignored) become the one-class labels 0,
    1 and -1.

    Args:
        anchors: per-level anchors.
        pred_objectness_logits: per-level ``[N, Hi*Wi*A]`` logits.
        gt_labels: per-image ``[A]`` labels in {-1, 0, 1}.
        pred_anchor_deltas: per-level ``[N, Hi*Wi*A, 4]`` box deltas.
        gt_boxes: per-image ``[A, 4]`` matched ground-truth boxes.
        box2box_transform: the RPN's anchor-to-box transform.
    """
    one_class = [torch.where(x == 1, 0, torch.where(x == 0, 1, -1)) for x in gt_labels]
    return dense_ranking(
        anchors,
        [x.unsqueeze(-1) for x in pred_objectness_logits],
        one_class,
        pred_anchor_deltas,
        gt_boxes,
        box2box_transform,
    )


def roi_ranking(
    predictions: Tuple[torch.Tensor, torch.Tensor],
    proposals: List[Instances],
    box2box_transform: Box2BoxTransform,
    mask_logits: Optional[torch.Tensor] = None,
) -> HeadRanking:
    """The ranking of a Fast R-CNN box predictor (``FastRCNNOutputLayers.losses``'s arguments).

    Args:
        predictions: ``(scores [R, K], proposal_deltas [R, K*4] or [R, 4])``; ``K`` sigmoid
            logits per RoI (no background logit).
        proposals: per-image labelled RoIs with ``proposal_boxes``, ``gt_classes`` and (when the
            image has ground truth) ``gt_boxes``, and ``gt_masks`` with ``mask_logits``.
        box2box_transform: the box predictor's transform.
        mask_logits: ``[P, K, M, M]`` (class-specific) or ``[P, 1, M, M]`` (class-agnostic)
            mask-head logits of the positive RoIs, image after image in proposal order (what
            Detectron2's ``select_foreground_proposals`` keeps), or None.

    Returns:
        The ranking; with ``mask_logits``, it carries each positive's logits at its class and
        its ground-truth mask cropped and resized to its RoI (:func:`positive_mask_targets`).
    """
    scores, proposal_deltas = predictions
    num_classes = scores.shape[1]
    deltas = proposal_deltas
    if deltas.shape[1] != 4:  # class-specific regression
        deltas = deltas.view(-1, num_classes, 4)
    counts = torch.tensor([len(p) for p in proposals], device=scores.device)
    ranking = HeadRanking.from_deltas(
        logits=scores,
        labels=cat([p.gt_classes for p in proposals], dim=0),
        deltas=deltas,
        reference_boxes=cat([p.proposal_boxes.tensor for p in proposals], dim=0),
        matched_gt_boxes=cat(
            [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals],
            dim=0,
        ),
        image_index=torch.arange(len(proposals), device=scores.device).repeat_interleave(counts),
        box2box_transform=box2box_transform,
    )
    if mask_logits is None:
        return ranking
    if mask_logits.dim() != 4 or mask_logits.shape[0] != ranking.num_positives:
        raise ValueError(
            f"mask_logits must be [P, K or 1, M, M] with P = {ranking.num_positives} positive "
            f"RoIs, got {list(mask_logits.shape)}"
        )
    if mask_logits.shape[1] == 1:  # class-agnostic masks
        logits = mask_logits[:, 0]
    else:
        classes = ranking.labels[ranking.positive_rows]
        logits = mask_logits[torch.arange(len(classes), device=classes.device), classes]
    gt_masks = positive_mask_targets(proposals, num_classes, logits.shape[-1])
    return dataclasses.replace(ranking, mask_logits=logits, gt_masks=gt_masks.to(logits))


def positive_mask_targets(proposals: List[Instances], num_classes: int, side: int) -> torch.Tensor:
    """The ground-truth masks of the positive RoIs on their ``side × side`` RoI grid.

    Args:
        proposals: per-image labelled RoIs (``proposal_boxes``, ``gt_classes``, and
            ``gt_masks`` where the image has positives).
        num_classes: ``K``; a RoI is positive when its class is in ``0..K-1``.
        side: ``M``, the side of the mask head's output.

    Returns:
        ``[P, M, M]`` bool masks (Detectron2's ``crop_and_resize``, as its mask loss), image after
        image in proposal order.
    """
    targets = []
    for p in proposals:
        positive = (p.gt_classes >= 0) & (p.gt_classes < num_classes)
        if not bool(positive.any()):
            continue
        if not p.has("gt_masks"):
            raise ValueError(
                "the ROI heads' mask branch needs ground-truth masks, but the training instances "
                "have no gt_masks: annotate 'segmentation' and map the data with instance masks "
                "(Detectron2's DatasetMapper with MODEL.MASK_ON: True)"
            )
        boxes = p.proposal_boxes.tensor[positive]
        targets.append(p.gt_masks[positive].crop_and_resize(boxes, side).to(boxes.device))
    if not targets:
        device = proposals[0].proposal_boxes.device if proposals else None
        return torch.zeros((0, side, side), dtype=torch.bool, device=device)
    return cat(targets, dim=0)
