"""Localisation quality of matched box pairs (pure PyTorch).

Used to turn a positive's predicted box and its ground truth into the quality ``u`` of the PAP
loss, the IoU targets of the Rank & Sort loss and the GIoU-based localisation error of aLRP.
"""

from typing import Tuple

import torch

__all__ = ["paired_iou_giou", "box_quality"]

QUALITY_TYPES = ("giou", "iou")


def paired_iou_giou(
    boxes: torch.Tensor, other: torch.Tensor, eps: float = 1e-7
) -> Tuple[torch.Tensor, torch.Tensor]:
    """IoU and generalised IoU of ``boxes[k]`` with ``other[k]`` for every k.

    Args:
        boxes: ``[N, 4]`` boxes in XYXY format.
        other: ``[N, 4]`` boxes in XYXY format.
        eps: added to denominators.

    Returns:
        ``(iou [N], giou [N])``; iou in [0, 1], giou in [-1, 1]. Differentiable in both inputs.
    """
    if boxes.shape != other.shape or boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(
            f"boxes and other must both have shape [N, 4], got {list(boxes.shape)} "
            f"and {list(other.shape)}"
        )
    _, _, inter, union, hull = paired_box_areas(boxes, other)
    iou = inter / (union + eps)
    giou = iou - (hull - union) / (hull + eps)
    return iou, giou


def paired_box_areas(
    boxes: torch.Tensor, other: torch.Tensor, clamp_enclosing: bool = False
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Areas of matched box pairs, differentiable in both inputs.

    Args:
        boxes: ``[N, 4]`` XYXY.
        other: ``[N, 4]`` XYXY.
        clamp_enclosing: also clamp the enclosing box's width and height at 0 (so that an
            inverted box cannot give a negative enclosing area).

    Returns:
        ``(area, other_area, intersection, union, enclosing)``, each ``[N]``. The areas of the
        boxes and of their intersection are clamped at 0; the enclosing box's only with
        ``clamp_enclosing`` (it is non-negative for well-formed boxes).
    """
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    ox1, oy1, ox2, oy2 = other.unbind(dim=1)
    area = (x2 - x1).clamp_min(0) * (y2 - y1).clamp_min(0)
    other_area = (ox2 - ox1).clamp_min(0) * (oy2 - oy1).clamp_min(0)
    inter = (torch.min(x2, ox2) - torch.max(x1, ox1)).clamp_min(0) * (
        torch.min(y2, oy2) - torch.max(y1, oy1)
    ).clamp_min(0)
    union = area + other_area - inter
    width = torch.max(x2, ox2) - torch.min(x1, ox1)
    height = torch.max(y2, oy2) - torch.min(y1, oy1)
    if clamp_enclosing:
        width, height = width.clamp_min(0), height.clamp_min(0)
    return area, other_area, inter, union, width * height


def box_quality(boxes: torch.Tensor, other: torch.Tensor, kind: str = "giou") -> torch.Tensor:
    """Quality in [0, 1] of matched pairs: ``(GIoU + 1) / 2`` (``"giou"``) or IoU (``"iou"``).

    Args:
        boxes: ``[N, 4]`` predicted boxes (XYXY).
        other: ``[N, 4]`` ground-truth boxes (XYXY).
        kind: ``"giou"`` or ``"iou"``.

    Returns:
        ``[N]`` qualities, clamped to [0, 1].
    """
    if kind not in QUALITY_TYPES:
        raise ValueError(f"kind must be one of {QUALITY_TYPES}, got {kind!r}")
    iou, giou = paired_iou_giou(boxes, other)
    quality = iou if kind == "iou" else (giou + 1) / 2
    return quality.clamp(0.0, 1.0)
