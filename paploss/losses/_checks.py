"""Input validation shared by the ranking losses (PAP, AP, aLRP, RS).

All losses take flattened ``[M]`` tensors: one entry per (anchor or RoI, class) pair. Errors are
raised as ``ValueError`` naming the offending argument, before any computation starts.

Types and shapes are always checked. The checks of the values (targets in {-1, 0, 1}, finite
logits, per-positive values in range) read tensor contents on the host, which on an accelerator
makes the host wait for the device on every call; they run only for tensors on a device listed in
:data:`VALUE_CHECK_DEVICES` (the CPU, where reading a value costs no transfer).
"""

from typing import Optional

import torch

__all__ = ["VALUE_CHECK_DEVICES", "check_ranking_inputs"]

#: Device types whose tensors get their values checked (see the module docstring).
VALUE_CHECK_DEVICES = ("cpu",)


def check_ranking_inputs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    per_positive: Optional[torch.Tensor] = None,
    per_positive_name: str = "quality",
    per_positive_range: Optional[tuple] = (0.0, 1.0),
) -> None:
    """Validate the common ``(logits, targets[, per-positive values])`` inputs.

    Args:
        logits: ``[M]`` floating point scores; must be finite.
        targets: ``[M]`` with values in {1, 0, -1} (positive, negative, ignored).
        per_positive: optional ``[M]`` floating tensor read where ``targets == 1`` (e.g. quality or
            localisation error); only those entries must lie in ``per_positive_range``.
        per_positive_name: the argument name used in error messages.
        per_positive_range: inclusive ``(low, high)`` bounds for the positive entries, or ``None``.

    Raises:
        ValueError: naming the argument and the problem (value problems only on the devices of
            :data:`VALUE_CHECK_DEVICES`).
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating point tensor, got {_describe(logits)}")
    if logits.dim() != 1:
        raise ValueError(f"logits must have shape [M], got shape {list(logits.shape)}")
    if not isinstance(targets, torch.Tensor):
        raise ValueError(f"targets must be a tensor, got {type(targets).__name__}")
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets must have the shape of logits {list(logits.shape)}, "
            f"got {list(targets.shape)}"
        )
    if per_positive is not None:
        if not isinstance(per_positive, torch.Tensor) or not per_positive.is_floating_point():
            raise ValueError(
                f"{per_positive_name} must be a floating point tensor, got {_describe(per_positive)}"
            )
        if per_positive.shape != logits.shape:
            raise ValueError(
                f"{per_positive_name} must have the shape of logits {list(logits.shape)}, "
                f"got {list(per_positive.shape)}"
            )
    if logits.device.type not in VALUE_CHECK_DEVICES:
        return
    if targets.numel() and not bool(((targets == 1) | (targets == 0) | (targets == -1)).all()):
        bad = targets[(targets != 1) & (targets != 0) & (targets != -1)]
        raise ValueError(f"targets must be in {{-1, 0, 1}}, found {bad[:5].tolist()}")
    if logits.numel() and not bool(torch.isfinite(logits).all()):
        raise ValueError("logits contain NaN or infinite values")
    if per_positive is None:
        return
    name = per_positive_name
    values = per_positive.detach()[targets == 1]
    if values.numel() == 0:
        return
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} contains NaN or infinite values at positive entries")
    if per_positive_range is not None:
        low, high = per_positive_range
        if bool((values < low).any()) or bool((values > high).any()):
            raise ValueError(
                f"{name} must lie in [{low}, {high}] at positive entries, "
                f"got range [{values.min().item():.4g}, {values.max().item():.4g}]"
            )


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of dtype {x.dtype}"
    return type(x).__name__
