"""The gradient-equivalence check: which candidates train the same loss?

A candidate is fingerprinted by its per-sample gradient norms on fixed random probe rankings
(:class:`GradientProbes`): for each probe sample ``b`` and each head, ``||dL_b/ds_b||`` over the
logits and ``||dL_b/du_b||`` over the positives' qualities (the latter after the head's gradient
scale λ), rounded to a few significant digits (:func:`gradient_fingerprint`). Equal fingerprints
mean equivalent candidates: the later one reuses the reward of the first (status ``duplicate``),
found through an :class:`EquivalenceRegistry` of the search's fingerprints.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Hashable, Mapping, Optional, Tuple

import torch

from paploss.heads import pap_heads
from paploss.losses import pap_loss, scale_grad
from paploss.search.settings import EquivalenceSettings

if TYPE_CHECKING:  # pragma: no cover
    from paploss.modeling.head_loss import PAPHeadLoss

__all__ = ["GradientProbes", "Fingerprint", "gradient_fingerprint", "EquivalenceRegistry"]


class GradientProbes:
    """Fixed random rankings on which candidates are fingerprinted.

    Each of the ``B`` samples has ``M`` entries: ``num_positives`` positives with qualities
    uniform in [0, 1], a few ignored entries, the rest negatives. Logits are normal with a
    per-sample spread from 0.1 to 3, so the probes exercise H1/H2 both on the ramp around a
    zero logit gap and far from it.

    Attributes:
        logits: ``[B, M]`` float64.
        targets: ``[B, M]`` int8 in {1, 0, -1}.
        quality: ``[B, M]`` float64, in [0, 1] at positives, 0 elsewhere.
    """

    def __init__(
        self, num_samples: int = 16, num_entries: int = 64, num_positives: int = 8, seed: int = 0
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        spreads = torch.logspace(-1, math.log10(3.0), num_samples, dtype=torch.float64)
        self.logits = torch.randn(
            num_samples, num_entries, generator=generator, dtype=torch.float64
        )
        self.logits *= spreads[:, None]
        order = torch.argsort(torch.rand(num_samples, num_entries, generator=generator), dim=1)
        targets = torch.zeros(num_samples, num_entries, dtype=torch.int8)
        num_ignored = max(1, num_positives // 4)
        targets.scatter_(1, order[:, :num_positives], 1)
        targets.scatter_(1, order[:, num_positives : num_positives + num_ignored], -1)
        self.targets = targets
        quality = torch.rand(num_samples, num_entries, generator=generator, dtype=torch.float64)
        self.quality = torch.where(targets == 1, quality, torch.zeros_like(quality))

    @classmethod
    def from_settings(cls, settings: EquivalenceSettings) -> "GradientProbes":
        return cls(
            settings.probe_samples, settings.probe_entries, settings.probe_positives, settings.seed
        )

    @property
    def num_samples(self) -> int:
        return int(self.logits.shape[0])

    def gradient_norms(self, head_loss: "PAPHeadLoss") -> torch.Tensor:
        """``[B, 2]`` per-sample ``(||dL_b/ds_b||, ||dL_b/du_b||)`` of the PAP loss with
        ``head_loss``'s functions (u after ``scale_grad`` with its λ)."""
        norms = torch.empty(self.num_samples, 2, dtype=torch.float64)
        for b in range(self.num_samples):
            logits = self.logits[b].clone().requires_grad_(True)
            quality = self.quality[b].clone().requires_grad_(True)
            loss = pap_loss(
                logits,
                self.targets[b],
                scale_grad(quality, head_loss.grad_scale),
                head_loss.functions,
            )
            grad_logits, grad_quality = torch.autograd.grad(loss, (logits, quality))
            norms[b, 0] = grad_logits.norm()
            norms[b, 1] = grad_quality.norm()
        return norms


def _round_significant(value: float, digits: int) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits - 1}e}")


@dataclass(frozen=True)
class Fingerprint:
    """A candidate's rounded per-sample gradient norms.

    Attributes:
        values: per head, ``(head, ((||ds||, ||du||) rounded, ...) per probe sample)``.
        digest: SHA-256 hex digest of ``values`` (what registries and journals store).
    """

    values: Tuple[Tuple[str, Tuple[Tuple[float, float], ...]], ...]
    digest: str


def gradient_fingerprint(
    head_losses: Mapping[str, "PAPHeadLoss"], probes: GradientProbes, significant_digits: int = 2
) -> Fingerprint:
    """Fingerprint a candidate by its per-sample gradient norms on ``probes``.

    Args:
        head_losses: head → the candidate's PAP head loss (its functions and λ).
        probes: the fixed probe rankings (the same for the whole search).
        significant_digits: digits each norm is rounded to.

    Returns:
        A hashable :class:`Fingerprint`; candidates that differ only below the rounding get equal
        ones.
    """
    values = []
    order = {head: index for index, head in enumerate(pap_heads())}
    for head in sorted(head_losses, key=lambda h: order.get(h, len(order))):
        norms = probes.gradient_norms(head_losses[head]).tolist()
        rounded = tuple(
            (_round_significant(ds, significant_digits), _round_significant(du, significant_digits))
            for ds, du in norms
        )
        values.append((head, rounded))
    text = json.dumps(values, separators=(",", ":"))
    return Fingerprint(tuple(values), hashlib.sha256(text.encode("utf-8")).hexdigest())


class EquivalenceRegistry:
    """Fingerprint digest → the first trial that had it.

    Keys are whatever identifies a trial for the caller (e.g. ``(round, index)`` or a trial id).
    Rebuild it on resume by registering the stored digests in trial order.
    """

    def __init__(self) -> None:
        self._first: Dict[str, Hashable] = {}

    def __len__(self) -> int:
        return len(self._first)

    def __contains__(self, digest: object) -> bool:
        return digest in self._first

    def lookup(self, digest: str) -> Optional[Hashable]:
        """The trial that first had ``digest``, or None."""
        return self._first.get(digest)

    def register(self, digest: str, key: Hashable) -> Optional[Hashable]:
        """Record ``key`` under ``digest`` unless already taken.

        Returns:
            None if ``key`` is the first with this digest (or re-registers itself), otherwise the
            key of the earlier equivalent trial (the registry is unchanged).
        """
        first = self._first.setdefault(digest, key)
        return None if first == key else first
