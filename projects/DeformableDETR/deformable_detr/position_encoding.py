"""Sine position embeddings of feature-map pixels and of boxes."""

import math

import torch

__all__ = ["box_sine_embedding", "sine_position_embedding"]


def _frequencies(num_feats: int, temperature: float, device, dtype) -> torch.Tensor:
    index = torch.arange(num_feats, device=device, dtype=dtype)
    return temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_feats)


def _interleave_sin_cos(x: torch.Tensor) -> torch.Tensor:
    """``[..., F]`` angles → ``[..., F]`` with sin at even and cos at odd positions."""
    return torch.stack([x[..., 0::2].sin(), x[..., 1::2].cos()], dim=-1).flatten(-2)


def sine_position_embedding(
    mask: torch.Tensor, num_feats: int, temperature: float = 10000.0
) -> torch.Tensor:
    """Normalised 2-d sine embedding of every pixel of a padded feature map.

    Coordinates are the pixel centres of the valid (unpadded) region, normalised to ``[0, 2π]``.

    Args:
        mask: ``[N, H, W]`` bool, True at padding.
        num_feats: features per axis (``C / 2``), even.
        temperature: base of the frequencies.

    Returns:
        ``[N, 2 * num_feats, H, W]``: y features, then x features.
    """
    not_mask = (~mask).float()
    y = not_mask.cumsum(1)
    x = not_mask.cumsum(2)
    eps, scale = 1e-6, 2 * math.pi
    y = (y - 0.5) / (y[:, -1:, :] + eps) * scale
    x = (x - 0.5) / (x[:, :, -1:] + eps) * scale
    frequencies = _frequencies(num_feats, temperature, mask.device, torch.float32)
    pos_x = _interleave_sin_cos(x[..., None] / frequencies)
    pos_y = _interleave_sin_cos(y[..., None] / frequencies)
    return torch.cat([pos_y, pos_x], dim=-1).permute(0, 3, 1, 2)


def box_sine_embedding(
    boxes: torch.Tensor, num_feats: int, temperature: float = 10000.0
) -> torch.Tensor:
    """Sine embedding of normalised boxes (two-stage queries).

    Args:
        boxes: ``[..., 4]`` in [0, 1].
        num_feats: features per coordinate, even.
        temperature: base of the frequencies.

    Returns:
        ``[..., 4 * num_feats]``.
    """
    frequencies = _frequencies(num_feats, temperature, boxes.device, boxes.dtype)
    angles = boxes[..., None] * (2 * math.pi) / frequencies  # [..., 4, F]
    return _interleave_sin_cos(angles).flatten(-2)
