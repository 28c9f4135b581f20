"""Gradient scaling: identity in the forward pass, gradient multiplied by ``lambda`` backward.

The PAP loss scales only the gradient that reaches the box branch by one searched factor
``lambda = 10 ** (2 t - 1)`` in [0.1, 10] (``t = 0.5`` gives 1). Keep ``lambda`` per head instance.
"""

import math
from typing import Union

import torch
from torch import nn

__all__ = ["scale_grad", "lambda_from_theta", "theta_from_lambda", "GradScale"]

Scalar = Union[float, torch.Tensor]


def _check_lambda(lam: Scalar) -> None:
    if isinstance(lam, torch.Tensor):
        if lam.dim() != 0:
            raise ValueError(f"lam must be a python float or a 0-d tensor, got {list(lam.shape)}")
        value = float(lam.detach())
    else:
        try:
            value = float(lam)
        except (TypeError, ValueError):
            raise ValueError(f"lam must be a number, got {type(lam).__name__}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"lam must be finite and > 0, got {value}")


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam):
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output):
        lam = ctx.lam
        if isinstance(lam, torch.Tensor):
            lam = lam.detach().to(device=grad_output.device, dtype=grad_output.dtype)
        return grad_output * lam, None


def scale_grad(x: torch.Tensor, lam: Scalar) -> torch.Tensor:
    """Return ``x`` unchanged; in the backward pass multiply its gradient by ``lam``.

    Args:
        x: any tensor.
        lam: positive python float or 0-d tensor (no gradient flows to it).

    Returns:
        A tensor equal to ``x``.

    Raises:
        ValueError: if ``lam`` is not a finite positive scalar.
    """
    _check_lambda(lam)
    if not isinstance(lam, torch.Tensor) and float(lam) == 1.0:
        return x
    return _ScaleGrad.apply(x, lam)


def lambda_from_theta(theta: Scalar) -> Scalar:
    """``lambda = 10 ** (2 theta - 1)``, mapping theta in [0, 1] to [0.1, 10].

    Raises:
        ValueError: if ``theta`` is outside [0, 1].
    """
    if isinstance(theta, torch.Tensor):
        if theta.numel() and not bool(((theta >= 0) & (theta <= 1)).all()):
            raise ValueError("theta must lie in [0, 1]")
        return torch.pow(10.0, 2 * theta - 1)
    if not 0.0 <= float(theta) <= 1.0:
        raise ValueError(f"theta must lie in [0, 1], got {theta}")
    return 10.0 ** (2 * float(theta) - 1)


def theta_from_lambda(lam: Scalar) -> Scalar:
    """Inverse of :func:`lambda_from_theta`: ``theta = (log10(lambda) + 1) / 2``.

    Raises:
        ValueError: if ``lam`` is outside [0.1, 10].
    """
    low, high = 0.1 * (1 - 1e-12), 10.0 * (1 + 1e-12)
    if isinstance(lam, torch.Tensor):
        if lam.numel() and not bool(((lam >= low) & (lam <= high)).all()):
            raise ValueError("lam must lie in [0.1, 10]")
        return ((torch.log10(lam) + 1) / 2).clamp(0, 1)
    if not low <= float(lam) <= high:
        raise ValueError(f"lam must lie in [0.1, 10], got {lam}")
    return min(max((math.log10(float(lam)) + 1) / 2, 0.0), 1.0)


class GradScale(nn.Module):
    """Module form of :func:`scale_grad` holding its own ``lam`` (one per head)."""

    def __init__(self, lam: float = 1.0):
        super().__init__()
        _check_lambda(lam)
        self.lam = float(lam)

    @classmethod
    def from_theta(cls, theta: float) -> "GradScale":
        return cls(lambda_from_theta(float(theta)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scale_grad(x, self.lam)

    def extra_repr(self) -> str:
        return f"lam={self.lam:.6g}"
