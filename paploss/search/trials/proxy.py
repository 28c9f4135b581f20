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
* **Partial trainings** (``stop_after``, the search's successive halving): the training stops
  after the first ``stop_after`` iterations of its schedule (the config's ``MAX_ITER`` and LR
  steps stay; a prefix of the full training, not a shorter schedule) with a checkpoint at that
  iteration, from which the same trainer without ``stop_after`` continues exactly.
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
from paploss.search.trials.proxy_config import early_stop_hook

__all__ = ["ProxyTrainer"]


class ProxyTrainer(Trainer):
    """:class:`paploss.engine.Trainer` for proxy trainings (see the module docstring).

    Args:
        cfg: frozen config of the proxy training; ``cfg.SEED`` also seeds the data order.
        early_stop: settings of the :class:`~paploss.engine.hooks.InvalidTrainingHook` the
            trainer installs (None or disabled: none).
        stop_after: end :meth:`train` after this many iterations of the schedule (counted from
            0, not from a resumed iteration) with a checkpoint there; None: train to
            ``SOLVER.MAX_ITER``.
    """

    def __init__(
        self,
        cfg: Any,
        *,
        early_stop: Optional[EarlyStopSettings] = None,
        stop_after: Optional[int] = None,
    ) -> None:
        self._early_stop = early_stop
        self._stop_after = stop_after
        super().__init__(cfg)

    def train(self) -> Any:
        """Train to ``SOLVER.MAX_ITER``, or only to ``stop_after`` (see the class)."""
        schedule_end = self.max_iter
        if self._stop_after is None or self._stop_after >= schedule_end:
            return super().train()
        self.max_iter = self._stop_after  # the loop's end; the LR scheduler keeps the config's
        try:
            return super().train()
        finally:
            self.max_iter = schedule_end

    @classmethod
    def build_train_loader(cls, cfg: Any) -> Any:
        return cls.build_resumable_train_loader(cfg, seed=int(cfg.SEED))

    def build_hooks(self) -> List[HookBase]:
        kept = [h for h in super().build_hooks() if not isinstance(h, hooks.EvalHook)]
        early_stop = None if self._early_stop is None else early_stop_hook(self._early_stop)
        if early_stop is not None:
            kept = self.insert_before_checkpointer(kept, [early_stop])
        if self._stop_after is None:
            return kept
        position = next(i for i, h in enumerate(kept) if isinstance(h, hooks.PeriodicCheckpointer))
        stop = _StopCheckpoint(kept[position], self._stop_after, int(self.cfg.SOLVER.MAX_ITER))
        return kept[: position + 1] + [stop] + kept[position + 1 :]

    def build_writers(self) -> list:
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(f"{self.cfg.OUTPUT_DIR}/metrics.json"),
        ]


class _StopCheckpoint(HookBase):
    """The checkpoint of a partial training: saved after iteration ``stop_after - 1``, right after
    the periodic checkpointer (so it holds what a periodic checkpoint there would hold, and a
    resume starts at ``stop_after``), while the periodic checkpointer keeps the schedule's end
    (no ``model_final`` at the stop).

    Args:
        periodic: the trainer's periodic checkpointer hook.
        stop_after: iterations of the partial training.
        schedule_end: ``SOLVER.MAX_ITER``.
    """

    def __init__(self, periodic: Any, stop_after: int, schedule_end: int) -> None:
        self._periodic = periodic
        self._stop_after = stop_after
        self._schedule_end = schedule_end

    def before_train(self) -> None:
        # Detectron2's hook takes the trainer's max_iter, which is the stop here.
        self._periodic.max_iter = self._schedule_end

    def after_step(self) -> None:
        iteration = self.trainer.iter
        if iteration + 1 == self._stop_after and self._stop_after % self._periodic.period != 0:
            self._periodic.checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
