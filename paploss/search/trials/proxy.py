"""The Detectron2 side of a proxy training: the trainer that scores a candidate.

:class:`ProxyTrainer` is :class:`paploss.engine.Trainer` (which resumes exactly: its checkpoints
hold the random states and the sampler position, see :mod:`paploss.engine.sampler`) with three
changes:

* **Common random numbers.** The training data is shuffled with ``cfg.SEED``, the seed of the
  trial's round, so every trial of a round sees the same images in the same order.
* **Early stop of invalid trainings.** The hook of the search's ``screening.early_stop`` settings
  (:class:`paploss.engine.hooks.InvalidTrainingHook`) stops the training at the iteration its
  PAP-loss heads receive NaN/infinite predictions, or its loss becomes NaN/infinite or stays
  constant over a window of iterations, with a ``FloatingPointError`` (as Detectron2's own NaN-loss
  check): the trial runner marks such a trial *diverged*.
* **Evaluation is left to the caller** (no ``EvalHook``), so training and evaluation are timed
  separately, and only plain-text/JSON metric writers are used (no TensorBoard files).

A trial resumed from its checkpoint then ends with the weights and the reward of an uninterrupted
one, under the conditions of :mod:`paploss.engine.sampler` (the trial runner turns TorchScript
graph optimisation off for the evaluation as well).
"""

from __future__ import annotations

from typing import Any, List, Optional

from detectron2.engine import hooks
from detectron2.engine.train_loop import HookBase
from detectron2.utils.events import CommonMetricPrinter, JSONWriter

from paploss.engine import Trainer
from paploss.search.settings import EarlyStopSettings

__all__ = ["ProxyTrainer"]


class ProxyTrainer(Trainer):
    """:class:`paploss.engine.Trainer` for proxy trainings (see the module docstring).

    Args:
        cfg: frozen config of the proxy training; ``cfg.SEED`` also seeds the data order.
        early_stop: settings of the :class:`~paploss.engine.hooks.InvalidTrainingHook` the
            trainer installs (None or disabled: none).
    """

    def __init__(self, cfg: Any, *, early_stop: Optional[EarlyStopSettings] = None) -> None:
        self._early_stop = early_stop
        super().__init__(cfg)

    @classmethod
    def build_train_loader(cls, cfg: Any) -> Any:
        return cls.build_resumable_train_loader(cfg, seed=int(cfg.SEED))

    def build_hooks(self) -> List[HookBase]:
        kept = [h for h in super().build_hooks() if not isinstance(h, hooks.EvalHook)]
        early_stop = None if self._early_stop is None else self._early_stop.build_hook()
        if early_stop is None:
            return kept
        return self.insert_before_checkpointer(kept, [early_stop])

    def build_writers(self) -> list:
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(f"{self.cfg.OUTPUT_DIR}/metrics.json"),
        ]
