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
* **Re-initialised and frozen modules** (``proxy.warm_start.reinit`` / ``freeze``, the cheap
  proxy of a warm-started search): the modules named in ``freeze`` are frozen as the model is
  built, before the optimizer and the DDP wrapper see them, like Detectron2's
  ``MODEL.BACKBONE.FREEZE_AT`` (parameters ``requires_grad_(False)``, batch norms
  ``FrozenBatchNorm2d``); the modules named in ``reinit`` keep the
  weights the model was built with (Detectron2's initialisation) when
  :meth:`resume_or_load` loads ``MODEL.WEIGHTS``, so the checkpoint gives everything else. A
  trial resumed from its own checkpoint loads that as it is.

A trial resumed from its checkpoint then ends with the weights and the reward of an uninterrupted
one, under the conditions of :mod:`paploss.engine.sampler` (the trial runner turns TorchScript
graph optimisation off for the evaluation as well).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from detectron2.engine import hooks
from detectron2.engine.train_loop import HookBase
from detectron2.utils.events import CommonMetricPrinter, JSONWriter

from paploss.engine import Trainer
from paploss.search.settings import EarlyStopSettings
from paploss.search.trials.proxy_config import early_stop_hook

__all__ = ["ProxyTrainer", "freeze_modules", "module_state"]


def _named(name: str, prefixes: Sequence[str]) -> bool:
    """Whether the parameter or module ``name`` lies in a module named by one of ``prefixes``."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _check_modules(model: torch.nn.Module, prefixes: Sequence[str], setting: str) -> None:
    names = [name for name, _ in model.named_modules()]
    missing = [prefix for prefix in prefixes if prefix not in names]
    if missing:
        top = sorted({name.split(".")[0] for name in names if name})
        raise ValueError(
            f"{setting}: the model has no module {missing} (its top-level modules: {top})"
        )


def freeze_modules(model: torch.nn.Module, prefixes: Sequence[str]) -> int:
    """Freeze the modules named ``prefixes`` as Detectron2's ``FREEZE_AT`` freezes a backbone:
    their parameters stop requiring gradients (``requires_grad_(False)``) and their batch norms
    become ``FrozenBatchNorm2d`` (so no running statistic changes in training either).

    Args:
        model: the unwrapped model.
        prefixes: module names, e.g. ``["backbone", "proposal_generator"]``.

    Returns:
        The number of parameter values frozen.

    Raises:
        ValueError: naming a prefix that is no module of the model.
    """
    from detectron2.layers import FrozenBatchNorm2d

    _check_modules(model, prefixes, "proxy.warm_start.freeze")
    for prefix in prefixes:
        parent_name, _, child_name = prefix.rpartition(".")
        parent = model.get_submodule(parent_name)
        child = getattr(parent, child_name)
        frozen_child = FrozenBatchNorm2d.convert_frozen_batchnorm(child)
        if frozen_child is not child:  # the named module is a batch norm itself
            setattr(parent, child_name, frozen_child)
    frozen = 0
    for name, parameter in model.named_parameters():
        if _named(name, prefixes):
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    return frozen


def module_state(model: torch.nn.Module, prefixes: Sequence[str]) -> Dict[str, torch.Tensor]:
    """Copies of the state (parameters and buffers) of the modules named ``prefixes``.

    Raises:
        ValueError: naming a prefix that is no module of the model.
    """
    _check_modules(model, prefixes, "proxy.warm_start.reinit")
    return {
        name: value.detach().clone()
        for name, value in model.state_dict().items()
        if _named(name, prefixes)
    }


class ProxyTrainer(Trainer):
    """:class:`paploss.engine.Trainer` for proxy trainings (see the module docstring).

    Args:
        cfg: frozen config of the proxy training; ``cfg.SEED`` also seeds the data order.
        early_stop: settings of the :class:`~paploss.engine.hooks.InvalidTrainingHook` the
            trainer installs (None or disabled: none).
        stop_after: end :meth:`train` after this many iterations of the schedule (counted from
            0, not from a resumed iteration) with a checkpoint there; None: train to
            ``SOLVER.MAX_ITER``.
        reinit: modules (name prefixes of the unwrapped model) that keep their initialisation
            when ``MODEL.WEIGHTS`` is loaded (:meth:`resume_or_load`).
        freeze: modules whose parameters are frozen as the model is built.
    """

    def __init__(
        self,
        cfg: Any,
        *,
        early_stop: Optional[EarlyStopSettings] = None,
        stop_after: Optional[int] = None,
        reinit: Sequence[str] = (),
        freeze: Sequence[str] = (),
    ) -> None:
        self._early_stop = early_stop
        self._stop_after = stop_after
        self._reinit = tuple(reinit)
        self._freeze = tuple(freeze)
        super().__init__(cfg)

    def build_model(self, cfg: Any) -> torch.nn.Module:  # type: ignore[override]
        """Detectron2's model with the ``freeze`` modules frozen.

        ``DefaultTrainer.__init__`` calls it (on the instance) before it builds the optimizer and
        wraps the model for DDP, so neither holds a frozen parameter as trainable.
        """
        model = super().build_model(cfg)
        if self._freeze:
            freeze_modules(model, self._freeze)
        return model

    def resume_or_load(self, resume: bool = True) -> None:
        """Detectron2's resume or load; on a load of ``MODEL.WEIGHTS`` (no checkpoint of the
        trial's own to resume) the ``reinit`` modules keep the weights they were built with."""
        model = self.model.module if hasattr(self.model, "module") else self.model
        initial = module_state(model, self._reinit) if self._reinit else {}
        super().resume_or_load(resume=resume)
        if initial and not (resume and self.checkpointer.has_checkpoint()):
            model.load_state_dict(initial, strict=False)

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
