"""Box conversions and pairwise box overlaps used by matching, losses and inference.

Boxes inside the model are normalised ``(cx, cy, w, h)`` in [0, 1] relative to the unpadded input
image; the losses and the matcher compare them with the ground truth in the same frame.
"""

import torch

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "inverse_sigmoid",
    "pairwise_generalized_iou",
]


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` ``(cx, cy, w, h)`` → ``[..., 4]`` ``(x0, y0, x1, y1)``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` ``(x0, y0, x1, y1)`` → ``[..., 4]`` ``(cx, cy, w, h)``."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``log(x / (1 - x))`` with ``x`` clamped to [0, 1] and both terms floored at ``eps``."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def pairwise_generalized_iou(boxes: torch.Tensor, other: torch.Tensor, eps: float = 1e-7):
    """Generalised IoU of every box of ``boxes`` with every box of ``other``.

    Args:
        boxes: ``[A, 4]`` XYXY.
        other: ``[B, 4]`` XYXY.
        eps: added to the denominators.

    Returns:
        ``[A, B]`` GIoU in [-1, 1]; differentiable.
    """
    area = (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)
    other_area = (other[:, 2] - other[:, 0]).clamp_min(0) * (other[:, 3] - other[:, 1]).clamp_min(0)
    top_left = torch.max(boxes[:, None, :2], other[None, :, :2])
    bottom_right = torch.min(boxes[:, None, 2:], other[None, :, 2:])
    inter = (bottom_right - top_left).clamp_min(0).prod(dim=-1)
    union = area[:, None] + other_area[None, :] - inter
    iou = inter / (union + eps)
    hull_top_left = torch.min(boxes[:, None, :2], other[None, :, :2])
    hull_bottom_right = torch.max(boxes[:, None, 2:], other[None, :, 2:])
    hull = (hull_bottom_right - hull_top_left).clamp_min(0).prod(dim=-1)
    return iou - (hull - union) / (hull + eps)
