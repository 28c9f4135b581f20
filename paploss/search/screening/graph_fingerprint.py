"""Gradient-equivalence fingerprints of graph losses (AutoLoss-Zero's check), in pure PyTorch.

A candidate (a classification and a box graph) is evaluated as the head loss evaluates it
(:func:`~paploss.losses.graph.branches.cls_loss`,
:func:`~paploss.losses.graph.branches.box_loss`) on fixed random probes (:class:`GraphProbes`); its fingerprint is, per probe sample ``b``, the
gradient norm ``||dL/dŷ_b||`` (``ŷ_b`` the ``K`` logits of probe RoI ``b``; the 4 predicted
deltas of probe positive ``b``, from which its box is decoded) and the gradient's component
``<dL/dŷ_b, v_b>`` along a fixed random unit direction ``v_b``, both rounded to a few
significant digits. Candidates with equal fingerprints are taken for the same loss.

The norms alone are AutoLoss-Zero's check; they cannot tell a loss ``L`` from ``-L`` (or from a
loss that mirrors some gradients), which ascends where ``L`` descends. The signed component
separates those, so that the check can run before the rejection protocol and a duplicate can
safely reuse the reward of its original.

The same evaluation tells whether a candidate is usable at all (:meth:`GraphFingerprint.
invalid_reason`): a non-finite loss or gradient, or no gradient reaching the predictions of a
searched branch, makes it invalid before any detector is involved.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

from paploss.losses.graph.branches import box_loss, cls_loss
from paploss.losses.graph.graph import Node

__all__ = ["GraphProbes", "GraphFingerprint", "graph_fingerprint", "round_significant"]


def round_significant(value: float, digits: int) -> float:
    """``value`` rounded to ``digits`` significant digits (0 and non-finite values unchanged)."""
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits - 1}e}")


def _encode(reference: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Deltas ``(dx, dy, dw, dh)`` of ``boxes`` on ``reference`` (XYXY, unit weights)."""
    rw, rh = reference[:, 2] - reference[:, 0], reference[:, 3] - reference[:, 1]
    rx, ry = reference[:, 0] + 0.5 * rw, reference[:, 1] + 0.5 * rh
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    bx, by = boxes[:, 0] + 0.5 * bw, boxes[:, 1] + 0.5 * bh
    return torch.stack(((bx - rx) / rw, (by - ry) / rh, (bw / rw).log(), (bh / rh).log()), dim=1)


def _decode(reference: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Boxes (XYXY) of ``deltas`` on ``reference``, the inverse of :func:`_encode`."""
    rw, rh = reference[:, 2] - reference[:, 0], reference[:, 3] - reference[:, 1]
    rx, ry = reference[:, 0] + 0.5 * rw, reference[:, 1] + 0.5 * rh
    x, y = rx + deltas[:, 0] * rw, ry + deltas[:, 1] * rh
    w, h = rw * deltas[:, 2].exp(), rh * deltas[:, 3].exp()
    return torch.stack((x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h), dim=1)


def _gradient(loss: torch.Tensor, leaf: torch.Tensor) -> Optional[torch.Tensor]:
    if not loss.requires_grad:
        return None
    return torch.autograd.grad(loss, leaf, allow_unused=True)[0]


def _unit_rows(values: torch.Tensor) -> torch.Tensor:
    return values / values.norm(dim=1, keepdim=True)


def _summary(gradient: Optional[torch.Tensor], directions: torch.Tensor) -> torch.Tensor:
    """``[B, 2]``: per row, the gradient's norm and its component along the row's direction (0
    when below 1e-9 of the norm: rounding noise of an orthogonal gradient)."""
    if gradient is None:
        return torch.zeros(directions.shape[0], 2, dtype=directions.dtype)
    norm = gradient.norm(dim=1)
    component = (gradient * directions).sum(dim=1)
    component = torch.where(component.abs() <= 1e-9 * norm, torch.zeros_like(component), component)
    return torch.stack((norm, component), dim=1)


class GraphProbes:
    """Fixed random inputs of both branches (float64), the same for a whole search.

    Classification: ``B`` RoIs with ``K`` logits of a per-RoI spread from 0.1 to 5 (near the
    decision boundary and saturated), labels cycling through the ``K`` classes and background.
    Box: ``B`` positives on reference boxes of sizes 8 to 64 px; ground truth within a shift of a
    quarter of the reference size; predicted deltas normal with a per-positive spread from 0.02 to
    1.5 (from nearly exact to non-overlapping boxes).

    Attributes:
        logits: ``[B, K]``; targets: ``[B, K]`` one-hot; reference: ``[B, 4]``;
        gt_boxes: ``[B, 4]``; gt_deltas: ``[B, 4]``; pred_deltas: ``[B, 4]``.
        cls_directions: ``[B, K]``, box_directions: ``[B, 4]``: unit rows ``v_b``.
    """

    def __init__(self, num_samples: int = 16, num_classes: int = 4, seed: int = 0) -> None:
        if num_samples < 1 or num_classes < 1:
            raise ValueError("probes need num_samples >= 1 and num_classes >= 1")
        generator = torch.Generator().manual_seed(seed)
        f64 = torch.float64

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, dtype=f64)

        spreads = torch.logspace(-1, math.log10(5.0), num_samples, dtype=f64)
        self.logits = torch.randn(num_samples, num_classes, generator=generator, dtype=f64)
        self.logits *= spreads[torch.randperm(num_samples, generator=generator)][:, None]
        labels = torch.arange(num_samples) % (num_classes + 1)
        labels = labels[torch.randperm(num_samples, generator=generator)]
        self.targets = torch.zeros(num_samples, num_classes, dtype=f64)
        foreground = labels < num_classes
        self.targets[foreground, labels[foreground]] = 1.0

        sizes = 8.0 + 56.0 * uniform(num_samples, 2)
        corners = 100.0 * uniform(num_samples, 2)
        self.reference = torch.cat((corners, corners + sizes), dim=1)
        shift = (uniform(num_samples, 4) - 0.5) * 0.5 * sizes.repeat(1, 2)
        self.gt_boxes = self.reference + shift
        self.gt_deltas = _encode(self.reference, self.gt_boxes)
        box_spreads = torch.logspace(math.log10(0.02), math.log10(1.5), num_samples, dtype=f64)
        self.pred_deltas = self.gt_deltas + box_spreads[:, None] * torch.randn(
            num_samples, 4, generator=generator, dtype=f64
        )
        self.cls_directions = _unit_rows(
            torch.randn(num_samples, num_classes, generator=generator, dtype=f64)
        )
        self.box_directions = _unit_rows(
            torch.randn(num_samples, 4, generator=generator, dtype=f64)
        )

    @property
    def num_samples(self) -> int:
        return int(self.logits.shape[0])

    def gradients(
        self, cls_graph: Node, box_graph: Node
    ) -> Tuple[torch.Tensor, torch.Tensor, float, float]:
        """Per-sample gradient norms and components of a candidate on the probes, and its losses.

        Returns:
            ``(cls [B, 2], box [B, 2], cls_loss, box_loss)``; each row is
            ``(||dL/dŷ_b||, <dL/dŷ_b, v_b>)`` (zeros where no gradient reaches the predictions).
        """
        logits = self.logits.clone().requires_grad_(True)
        loss_cls = cls_loss(cls_graph, logits, self.targets)
        grad_logits = _gradient(loss_cls, logits)
        deltas = self.pred_deltas.clone().requires_grad_(True)
        loss_box = box_loss(
            box_graph, _decode(self.reference, deltas), self.gt_boxes, deltas, self.gt_deltas
        )
        grad_deltas = _gradient(loss_box, deltas)
        cls = _summary(grad_logits, self.cls_directions)
        box = _summary(grad_deltas, self.box_directions)
        return cls, box, float(loss_cls.detach()), float(loss_box.detach())


@dataclass(frozen=True)
class GraphFingerprint:
    """A candidate's rounded per-sample gradient norms and components on the probes.

    Attributes:
        values: ``(("cls", ((norm, component), ...)), ("box", (...)))``, rounded.
        losses: ``{"cls": loss, "box": loss}`` on the probes (unrounded).
        digest: SHA-256 hex digest of ``values`` (what registries and journals store).
    """

    values: Tuple[Tuple[str, Tuple[Tuple[float, float], ...]], ...]
    losses: Dict[str, float]
    digest: str

    def invalid_reason(self, branches: Sequence[str] = ("cls", "box")) -> Optional[str]:
        """Why the candidate cannot train, or None.

        Args:
            branches: the branches that must receive a gradient (the searched ones).
        """
        for name, loss in self.losses.items():
            if not math.isfinite(loss):
                return f"{name} loss is {loss} on the probes"
        for name, rows in self.values:
            if not all(math.isfinite(v) for row in rows for v in row):
                return f"{name} gradient is not finite on the probes"
            if name in branches and not any(norm for norm, _ in rows):
                return f"no {name} gradient reaches the predictions"
        return None


def graph_fingerprint(
    cls_graph: Node, box_graph: Node, probes: GraphProbes, significant_digits: int = 2
) -> GraphFingerprint:
    """Fingerprint a candidate by its per-sample gradients on ``probes``.

    Args:
        cls_graph: the classification graph.
        box_graph: the box graph.
        probes: the fixed probes (the same for the whole search).
        significant_digits: digits each norm and component is rounded to.
    """
    cls, box, loss_cls, loss_box = probes.gradients(cls_graph, box_graph)
    values = tuple(
        (
            name,
            tuple(
                tuple(round_significant(v, significant_digits) for v in row)
                for row in rows.tolist()
            ),
        )
        for name, rows in (("cls", cls), ("box", box))
    )
    text = json.dumps(values, separators=(",", ":"))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return GraphFingerprint(values, {"cls": loss_cls, "box": loss_box}, digest)
