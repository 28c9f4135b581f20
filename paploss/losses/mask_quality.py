"""Quality of predicted instance masks against their ground truth (pure PyTorch).

Both functions compare ``P`` soft masks (probabilities, e.g. the sigmoid of a mask head's logits)
with ``P`` binary ground-truth masks on the same ``M × M`` grid (the RoI), one value per mask:

* :func:`dice_loss`: the Dice loss of Rank & Sort Mask R-CNN, ``1 − 2Σpt / (Σp² + Σt² + ε)``;
* :func:`soft_mask_iou`: the soft IoU ``Σpt / (Σp + Σt − Σpt)``, equal to the IoU when ``p`` is
  binary, and differentiable in ``p`` (the ``"mask_iou"`` quality of the PAP loss).
"""

import torch

__all__ = ["DICE_EPS", "dice_loss", "soft_mask_iou"]

#: ε of the Dice denominator (the published RS Mask R-CNN value).
DICE_EPS = 1e-5


def _flatten(probs: torch.Tensor, targets: torch.Tensor):
    if probs.shape != targets.shape or probs.dim() < 2:
        raise ValueError(
            f"probs and targets must have the same shape [P, M, M], got {list(probs.shape)} and "
            f"{list(targets.shape)}"
        )
    return probs.flatten(1), targets.flatten(1).to(probs.dtype)


def dice_loss(probs: torch.Tensor, targets: torch.Tensor, eps: float = DICE_EPS) -> torch.Tensor:
    """Per-mask Dice loss ``1 − 2Σpt / (Σp² + Σt² + ε)``.

    Args:
        probs: ``[P, M, M]`` mask probabilities in [0, 1].
        targets: ``[P, M, M]`` ground-truth masks in {0, 1} (any dtype).
        eps: added to the denominator, > 0 (so an empty prediction of an empty target is 1).

    Returns:
        ``[P]`` losses in [0, 1], differentiable in ``probs``.
    """
    p, t = _flatten(probs, targets)
    intersection = (p * t).sum(dim=1)
    denominator = (p * p).sum(dim=1) + (t * t).sum(dim=1) + eps
    return 1 - 2 * intersection / denominator


def soft_mask_iou(probs: torch.Tensor, targets: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-mask soft IoU ``Σpt / (Σp + Σt − Σpt + ε)``.

    Args:
        probs: ``[P, M, M]`` mask probabilities in [0, 1].
        targets: ``[P, M, M]`` ground-truth masks in {0, 1} (any dtype).
        eps: added to the denominator.

    Returns:
        ``[P]`` values in [0, 1], differentiable in ``probs``; the IoU of the masks when
        ``probs`` is binary.
    """
    p, t = _flatten(probs, targets)
    intersection = (p * t).sum(dim=1)
    union = p.sum(dim=1) + t.sum(dim=1) - intersection
    return (intersection / (union + eps)).clamp(0.0, 1.0)
