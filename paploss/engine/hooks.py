"""Detectron2 training hooks of paploss: exact resume and early stop of invalid trainings.

* :class:`RandomStateHook` puts what an exact resume needs besides weights, optimizer and
  schedule into every checkpoint (the global random states, the sampler's seed, loss normalisers
  kept as plain attributes) and hands it to the :class:`~paploss.engine.sampler.
  ResumableTrainingSampler` on load. :class:`paploss.engine.Trainer` installs it, so
  ``tools/train_net.py --resume`` and a resumed search trial continue exactly.
* :class:`InvalidTrainingHook` stops a training at the iteration its predictions or its loss
  become NaN/infinite, or its loss stays constant over a window, with an
  :class:`InvalidTrainingError` (a ``FloatingPointError``, like Detectron2's own NaN-loss check).
  The search's proxy trainings install it (``screening.early_stop``) and mark such a trial
  *diverged*.
"""

import logging
import math
from typing import Any, Dict, List, Tuple

import torch
from detectron2.engine.train_loop import HookBase

from paploss.engine.sampler import ResumableTrainingSampler, get_random_state
from paploss.utils.validation import check_int, check_number

__all__ = [
    "RandomStateHook",
    "InvalidTrainingError",
    "NonFiniteTrainingError",
    "ConstantLossError",
    "InvalidTrainingHook",
]

logger = logging.getLogger(__name__)


class RandomStateHook(HookBase):
    """Puts the state an exact resume needs besides weights and optimizer into every checkpoint.

    That is the global random states and the shuffling seed (handed to the sampler on load, see
    :class:`~paploss.engine.sampler.ResumableTrainingSampler`) and the running loss normalisers
    that some heads keep as plain attributes rather than buffers (Detectron2's
    ``RetinaNet.loss_normalizer``): every float attribute named in :attr:`MODULE_ATTRIBUTES` of
    any submodule. State that a module keeps in buffers or through
    ``torch.nn.Module.get_extra_state`` is in the model checkpoint already.

    Args:
        sampler: the trainer's training sampler.
        batch_size: ``SOLVER.IMS_PER_BATCH`` (samples of the global stream per iteration).
    """

    MODULE_ATTRIBUTES = ("loss_normalizer",)

    def __init__(self, sampler: ResumableTrainingSampler, batch_size: int) -> None:
        self._sampler = sampler
        self._batch_size = batch_size

    def state_dict(self) -> Dict[str, Any]:
        attributes = {}
        for module_name, module in self.trainer.model.named_modules():
            for attribute in self.MODULE_ATTRIBUTES:
                value = getattr(module, attribute, None)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    attributes[f"{module_name}:{attribute}"] = float(value)
        return {
            "random_state": get_random_state(),
            "sampler_seed": self._sampler.seed,
            "module_attributes": attributes,
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._sampler.resume(
            state_dict.get("sampler_seed", self._sampler.seed), state_dict["random_state"]
        )
        modules = dict(self.trainer.model.named_modules())
        for key, value in state_dict.get("module_attributes", {}).items():
            module_name, _, attribute = key.rpartition(":")
            if module_name in modules:  # such attributes may be created lazily: set, don't check
                setattr(modules[module_name], attribute, value)
            else:
                logger.warning("checkpoint has state for %s that the model does not have", key)

    def before_train(self) -> None:
        self._sampler.start_index = self.trainer.start_iter * self._batch_size


class InvalidTrainingError(FloatingPointError):
    """A training was stopped because its loss is invalid (a search trial *diverged*).

    A ``FloatingPointError``, like Detectron2's own NaN-loss error, so trial runners that treat
    that as divergence need no change.

    Attributes:
        iteration: the iteration at which the training was stopped.
    """

    def __init__(self, message: str, iteration: int) -> None:
        super().__init__(message)
        self.iteration = iteration


class NonFiniteTrainingError(InvalidTrainingError):
    """The loss or a weight became NaN or infinite."""


class ConstantLossError(InvalidTrainingError):
    """The total loss stayed constant over a window of iterations."""


class InvalidTrainingHook(HookBase):
    """Detectron2 hook that stops a training whose loss is invalid, at the iteration it happens.

    * **Non-finite predictions** (``check_predictions``): a forward pre-hook on every PAP-loss
      module of the model (:class:`paploss.modeling.head_loss.RankingHeadLoss`) raises
      :class:`NonFiniteTrainingError` when the logits or boxes it receives are NaN/infinite.
      Without it such an iteration fails inside the loss with the ``ValueError`` of its input
      check, which a trial runner would take for a crash rather than a divergence.
    * **Non-finite loss**: after every step, a NaN/infinite logged ``total_loss`` raises
      :class:`NonFiniteTrainingError` (Detectron2's ``SimpleTrainer`` raises its own
      ``FloatingPointError`` for this inside the step already; this covers trainers that only
      log it).
    * **Constant loss**: after every step, when the last ``window`` logged ``total_loss`` values
      satisfy ``max - min <= tolerance * max(1, |mean|)``, raises :class:`ConstantLossError`.

    Args:
        window: iterations of the constant-loss check (0 disables it).
        tolerance: relative tolerance of the constant-loss check.
        check_predictions: check what the PAP-loss modules receive.
    """

    def __init__(
        self, window: int = 50, tolerance: float = 1e-6, check_predictions: bool = True
    ) -> None:
        self.window = check_int(window, "window", minimum=0)
        self.tolerance = check_number(tolerance, "tolerance", low=0.0, low_inclusive=True)
        self.check_predictions = bool(check_predictions)
        self._handles: List[Any] = []

    def before_train(self) -> None:
        if not self.check_predictions:
            return
        from paploss.modeling.head_loss import RankingHeadLoss

        model = getattr(self.trainer, "model", None)
        model = getattr(model, "module", model)  # unwrap DistributedDataParallel
        if model is None:
            return
        for module in model.modules():
            if isinstance(module, RankingHeadLoss):
                self._handles.append(module.register_forward_pre_hook(self._check_inputs))

    def after_train(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _check_inputs(self, module: torch.nn.Module, inputs: Tuple[Any, ...]) -> None:
        ranking = inputs[0]  # the head's HeadRanking
        finite = bool(torch.isfinite(ranking.logits).all())
        if not (finite and bool(torch.isfinite(ranking.pred_boxes).all())):
            iteration = int(self.trainer.iter)
            raise NonFiniteTrainingError(
                f"{getattr(module, 'head_name', 'head')}: predictions became NaN or infinite at "
                f"iteration {iteration}",
                iteration,
            )

    def after_step(self) -> None:
        iteration = int(self.trainer.iter)
        try:
            history = self.trainer.storage.history("total_loss")
        except KeyError:  # nothing logged (yet, or not the main process)
            return
        latest = float(history.latest())
        if not math.isfinite(latest):
            raise NonFiniteTrainingError(
                f"total loss is {latest} at iteration {iteration}", iteration
            )
        if self.window <= 0:
            return
        values = [value for value, _ in history.values()[-self.window :]]
        if len(values) < self.window:
            return
        spread = max(values) - min(values)
        if spread <= self.tolerance * max(1.0, abs(sum(values) / len(values))):
            raise ConstantLossError(
                f"total loss constant at {latest:.6g} for {self.window} iterations "
                f"(spread {spread:.3g}) at iteration {iteration}",
                iteration,
            )
