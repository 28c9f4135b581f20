"""Settings of the screening of candidate losses (the ``screening:`` section of a search file).

Plain dataclasses without torch or Detectron2, so that search settings, trial specs and reports
can use them cheaply; :mod:`paploss.search.screening` implements what they switch on and
re-exports them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional

from paploss.utils.validation import is_int, is_number

if TYPE_CHECKING:  # pragma: no cover
    from paploss.engine.hooks import InvalidTrainingHook

__all__ = [
    "RejectionSettings",
    "EquivalenceSettings",
    "EarlyStopSettings",
    "ScreeningSettings",
]

_OPTIMIZERS = ("adam", "sgd")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class RejectionSettings:
    """The loss-rejection protocol.

    Attributes:
        enabled: run the protocol (a rejected candidate is not trained).
        min_ap_gain: reject when ``AP(after) - AP(before)`` is below this, in AP points (0-100),
            for any screened head.
        steps: optimisation steps on the predictions.
        optimizer: ``"adam"`` (per-prediction step sizes, the default) or ``"sgd"`` (momentum
            0.9; sensitive to the gradient scale and λ, needs much larger learning rates).
        logit_lr: learning rate of the logits.
        box_lr: learning rate of the positives' box deltas.
        num_images: images in the fixed batch.
        seed: seeds the image choice and the random network.
        dataset: registered dataset of the images; None: the proxy training split.
        eval_every: also measure AP every this many steps (the curve is reported; 0: only at the
            end). Each measurement costs about as much as a few optimisation steps.
        candidates_per_image: top-scoring (anchor, class) pairs per image decoded before NMS.
        nms_threshold: IoU threshold of the per-class NMS.
        detections_per_image: detections kept per image after NMS (COCO's maxDets).
        rejected_reward: reward a rejected candidate gets for the policy update (AP units).
    """

    enabled: bool = True
    min_ap_gain: float = 5.0
    steps: int = 100
    optimizer: str = "adam"
    logit_lr: float = 0.1
    box_lr: float = 0.02
    num_images: int = 8
    seed: int = 0
    dataset: Optional[str] = None
    eval_every: int = 0
    candidates_per_image: int = 1000
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    rejected_reward: float = 0.0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        p = "screening.rejection"
        _check(isinstance(self.enabled, bool), f"{p}.enabled must be true or false")
        for name in ("min_ap_gain", "rejected_reward"):
            _check(is_number(getattr(self, name)), f"{p}.{name} must be a finite number")
        for name in ("steps", "num_images", "candidates_per_image", "detections_per_image"):
            value = getattr(self, name)
            _check(is_int(value, 1), f"{p}.{name} must be an integer >= 1, got {value!r}")
        for name in ("seed", "eval_every"):
            value = getattr(self, name)
            _check(is_int(value, 0), f"{p}.{name} must be an integer >= 0, got {value!r}")
        _check(
            self.optimizer in _OPTIMIZERS,
            f"{p}.optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}",
        )
        for name in ("logit_lr", "box_lr"):
            value = getattr(self, name)
            _check(is_number(value) and value > 0, f"{p}.{name} must be > 0, got {value!r}")
        _check(
            is_number(self.nms_threshold) and 0 < self.nms_threshold <= 1,
            f"{p}.nms_threshold must lie in (0, 1], got {self.nms_threshold!r}",
        )
        _check(
            self.dataset is None or (isinstance(self.dataset, str) and bool(self.dataset)),
            f"{p}.dataset must be a dataset name or null",
        )


@dataclass(frozen=True)
class EquivalenceSettings:
    """The gradient-equivalence check.

    Attributes:
        enabled: fingerprint candidates; an equivalent one reuses the first one's reward.
        significant_digits: digits each gradient norm is rounded to.
        probe_samples: probe rankings ``B`` (each gives two norms per head).
        probe_entries: entries per probe ranking.
        probe_positives: positives per probe ranking (a few more are ignored entries).
        seed: seed of the probes.
    """

    enabled: bool = True
    significant_digits: int = 2
    probe_samples: int = 16
    probe_entries: int = 64
    probe_positives: int = 8
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        p = "screening.equivalence"
        _check(isinstance(self.enabled, bool), f"{p}.enabled must be true or false")
        for name, minimum in (
            ("significant_digits", 1),
            ("probe_samples", 1),
            ("probe_positives", 1),
            ("seed", 0),
        ):
            value = getattr(self, name)
            _check(is_int(value, minimum), f"{p}.{name} must be an integer >= {minimum}")
        _check(
            is_int(self.probe_entries, 2 * self.probe_positives + 1),
            f"{p}.probe_entries must be an integer > 2 * probe_positives",
        )


@dataclass(frozen=True)
class EarlyStopSettings:
    """Stopping proxy trainings whose loss is invalid (see :class:`InvalidTrainingHook`).

    Attributes:
        enabled: install the hook in proxy trainings.
        window: iterations over which an unchanged ``total_loss`` counts as constant (0: off).
        tolerance: relative tolerance of that check.
        check_predictions: also stop as soon as a PAP-loss head receives NaN/infinite
            predictions (see :class:`InvalidTrainingHook`).
    """

    enabled: bool = True
    window: int = 50
    tolerance: float = 1e-6
    check_predictions: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        p = "screening.early_stop"
        _check(isinstance(self.enabled, bool), f"{p}.enabled must be true or false")
        _check(isinstance(self.check_predictions, bool), f"{p}.check_predictions must be a bool")
        _check(is_int(self.window, 0), f"{p}.window must be an integer >= 0")
        _check(is_number(self.tolerance) and self.tolerance >= 0, f"{p}.tolerance must be >= 0")

    def build_hook(self) -> Optional["InvalidTrainingHook"]:
        """The hook to add to a proxy trainer, or None when disabled."""
        if not self.enabled:
            return None
        from paploss.engine.hooks import InvalidTrainingHook

        return InvalidTrainingHook(
            window=self.window, tolerance=self.tolerance, check_predictions=self.check_predictions
        )


@dataclass(frozen=True)
class ScreeningSettings:
    """All screening settings: the ``screening:`` section of a search settings file.

    Example (every key optional)::

        screening:
          rejection: {enabled: true, min_ap_gain: 5.0, steps: 100, num_images: 8}
          equivalence: {enabled: true, significant_digits: 2}
          early_stop: {enabled: true, window: 50}
    """

    rejection: RejectionSettings = RejectionSettings()
    equivalence: EquivalenceSettings = EquivalenceSettings()
    early_stop: EarlyStopSettings = EarlyStopSettings()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        self.rejection.validate()
        self.equivalence.validate()
        self.early_stop.validate()

    @property
    def screens_candidates(self) -> bool:
        """Whether :class:`Screener` has anything to do."""
        return self.rejection.enabled or self.equivalence.enabled

    def to_dict(self) -> Dict[str, Any]:
        """Nested plain data (JSON/YAML-able)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]]) -> "ScreeningSettings":
        """Build and validate from nested plain data; missing keys keep their defaults.

        Raises:
            ValueError: naming an unknown key or an invalid value.
        """
        data = dict(data or {})
        parts = {"rejection": RejectionSettings, "equivalence": EquivalenceSettings}
        parts["early_stop"] = EarlyStopSettings
        unknown = sorted(set(data) - set(parts))
        _check(not unknown, f"unknown screening setting(s) {unknown}; known: {sorted(parts)}")
        values = {}
        for name, part in parts.items():
            section = data.get(name) or {}
            _check(isinstance(section, Mapping), f"screening.{name} must be a mapping")
            known = {f.name for f in dataclasses.fields(part)}
            unknown = sorted(set(section) - known)
            _check(
                not unknown,
                f"unknown screening.{name} setting(s) {unknown}; known: {sorted(known)}",
            )
            values[name] = part(**section)
        settings = cls(**values)
        settings.validate()
        return settings
