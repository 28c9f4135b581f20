"""Hungarian matching of queries to ground-truth boxes, one image at a time.

The cost of assigning query ``q`` to ground truth ``g`` (Deformable DETR's standard cost) is

    C[q, g] = w_class * focal(q, c_g) + w_bbox * |b_q - b_g|_1 - w_giou * GIoU(b_q, b_g),

``focal(q, c) = alpha (1 - p)^gamma (-log p) - (1 - alpha) p^gamma (-log(1 - p))`` with
``p = sigmoid(logit[q, c])`` (the focal loss of a positive minus that of a negative), boxes in
normalised ``(cx, cy, w, h)`` for the L1 term and in XYXY for the GIoU term. The assignment that
minimises the total cost is found by ``scipy.optimize.linear_sum_assignment`` on the CPU.
"""

from typing import List, Mapping, Sequence, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .box_ops import box_cxcywh_to_xyxy, pairwise_generalized_iou

__all__ = ["HungarianMatcher"]

_LOG_EPS = 1e-8


class HungarianMatcher(nn.Module):
    """One-to-one assignment of predictions to ground truth minimising the matching cost."""

    def __init__(
        self,
        *,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        """
        Args:
            cost_class: weight of the focal class cost, >= 0.
            cost_bbox: weight of the L1 box cost, >= 0.
            cost_giou: weight of the (negative) GIoU cost, >= 0.
            focal_alpha: alpha of the focal class cost, in [0, 1].
            focal_gamma: gamma of the focal class cost, >= 0.
        """
        super().__init__()
        self.cost_class = float(cost_class)
        self.cost_bbox = float(cost_bbox)
        self.cost_giou = float(cost_giou)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)

    @torch.no_grad()
    def cost_matrix(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_boxes: torch.Tensor,
    ) -> torch.Tensor:
        """The matching cost of one image.

        Args:
            logits: ``[Q, K]`` class logits.
            boxes: ``[Q, 4]`` predicted normalised ``(cx, cy, w, h)``.
            gt_labels: ``[G]`` int64 classes in ``[0, K)``.
            gt_boxes: ``[G, 4]`` normalised ``(cx, cy, w, h)``.

        Returns:
            ``[Q, G]`` float cost.
        """
        prob = logits.float().sigmoid()[:, gt_labels]  # [Q, G]
        alpha, gamma = self.focal_alpha, self.focal_gamma
        positive = alpha * (1 - prob).pow(gamma) * -(prob + _LOG_EPS).log()
        negative = (1 - alpha) * prob.pow(gamma) * -(1 - prob + _LOG_EPS).log()
        boxes, gt_boxes = boxes.float(), gt_boxes.float()
        l1 = torch.cdist(boxes, gt_boxes, p=1)
        giou = pairwise_generalized_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(gt_boxes))
        return self.cost_class * (positive - negative) + self.cost_bbox * l1 - self.cost_giou * giou

    @torch.no_grad()
    def forward(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        targets: Sequence[Mapping[str, torch.Tensor]],
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Match every image of the batch.

        Args:
            logits: ``[N, Q, K]`` class logits.
            boxes: ``[N, Q, 4]`` predicted normalised ``(cx, cy, w, h)``.
            targets: ``N`` dicts with ``"labels"`` ``[G]`` and ``"boxes"`` ``[G, 4]``.

        Returns:
            ``N`` pairs ``(query_index, gt_index)`` of int64 CPU tensors of equal length
            ``min(Q, G)``, sorted by ``query_index``.

        Raises:
            FloatingPointError: if the predictions of an image with ground truth are not finite.
        """
        matches = []
        for image, target in enumerate(targets):
            gt_labels, gt_boxes = target["labels"], target["boxes"]
            if gt_labels.numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                matches.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(logits[image], boxes[image], gt_labels, gt_boxes).cpu()
            if not bool(torch.isfinite(cost).all()):
                raise FloatingPointError(
                    f"the matching cost of image {image} is not finite (NaN or infinite "
                    "predicted logits or boxes)"
                )
            rows, cols = linear_sum_assignment(cost.numpy())
            order = np.argsort(rows, kind="stable")
            matches.append(
                (
                    torch.as_tensor(rows[order], dtype=torch.int64),
                    torch.as_tensor(cols[order], dtype=torch.int64),
                )
            )
        return matches

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
            f"cost_giou={self.cost_giou}, focal_alpha={self.focal_alpha}, "
            f"focal_gamma={self.focal_gamma}"
        )
