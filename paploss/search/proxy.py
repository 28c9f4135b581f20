"""The Detectron2 side of a proxy training: a trainer that resumes exactly and stops invalid runs.

:class:`ProxyTrainer` is :class:`paploss.engine.Trainer` with three changes:

* **Exact resume.** Its checkpoints also hold the global random states (Python, NumPy, torch) and
  running loss normalisers kept as plain attributes (:class:`RandomStateHook`), and its training
  sampler (:class:`ResumableTrainingSampler`) skips the samples that the checkpointed iterations
  already used and restores those random states right before it yields the first sample of the
  resumed run. A resumed run then sees the same images with the same augmentations as an
  uninterrupted one, so a trial that was killed and resumed from its last checkpoint ends with the
  same weights and the same reward. This holds with ``DATALOADER.NUM_WORKERS: 0``, images of one
  aspect-ratio group (or no grouping), the same thread count, and TorchScript graph optimisation
  off (:func:`paploss.search.trial.run_trial` turns it off); otherwise a resumed trial is still
  correct, only not bit-identical.
* **Early stop of invalid trainings.** The hook of the search's ``screening.early_stop`` settings
  (:class:`paploss.search.screening.InvalidTrainingHook`) stops the training at the iteration its
  PAP-loss heads receive NaN/infinite predictions, or its loss becomes NaN/infinite or stays
  constant over a window of iterations, with a ``FloatingPointError`` (as Detectron2's own NaN-loss
  check): the trial runner marks such a trial *diverged*.
* **Evaluation is left to the caller** (no ``EvalHook``), so training and evaluation are timed
  separately, and only plain-text/JSON metric writers are used (no TensorBoard files).
"""

from __future__ import annotations

import itertools
import logging
import random
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import hooks
from detectron2.engine.train_loop import HookBase
from detectron2.utils.events import CommonMetricPrinter, JSONWriter

from paploss.data import ensure_dataset_files
from paploss.engine import Trainer
from paploss.search.screening_settings import EarlyStopSettings

__all__ = [
    "ResumableTrainingSampler",
    "RandomStateHook",
    "ProxyTrainer",
    "get_random_state",
    "set_random_state",
]

logger = logging.getLogger(__name__)


def get_random_state() -> Dict[str, Any]:
    """The global random states of Python, NumPy and torch (CPU), as checkpoint-safe data.

    Only lists, ints, floats and tensors are used, so ``torch.load(..., weights_only=True)`` (the
    default of recent PyTorch releases) can read a checkpoint that holds it.
    """
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": [version, list(internal), gauss],
        "numpy": {
            "key": torch.from_numpy(np.asarray(numpy_state["state"]["key"], dtype=np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }


def set_random_state(state: Dict[str, Any]) -> None:
    """Restore states from :func:`get_random_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {
                "key": numpy_state["key"].numpy().astype(np.uint32),
                "pos": int(numpy_state["pos"]),
            },
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        }
    )
    torch.set_rng_state(state["torch"])


class ResumableTrainingSampler(TrainingSampler):
    """Detectron2's infinite shuffling sampler that can start part-way through its stream.

    Args:
        size: number of training images.
        seed: shuffling seed (the same for every trial of a search round).

    Attributes:
        start_index: number of samples of the global stream to skip (set before the first
            sample is drawn: ``(start_iter) * IMS_PER_BATCH``).
        pending_random_state: global random states to restore right before the first sample is
            yielded (set when a checkpoint is loaded), or None.
    """

    def __init__(self, size: int, seed: int) -> None:
        super().__init__(size, shuffle=True, seed=seed)
        self.start_index = 0
        self.pending_random_state: Optional[Dict[str, Any]] = None

    def _infinite_indices(self) -> Iterator[int]:
        # Runs lazily on the first request for data, i.e. after the data loader set itself up:
        # whatever random numbers that took are not part of the restored state.
        if self.pending_random_state is not None:
            set_random_state(self.pending_random_state)
            self.pending_random_state = None
        yield from itertools.islice(super()._infinite_indices(), self.start_index, None)


class RandomStateHook(HookBase):
    """Puts the state an exact resume needs besides weights and optimizer into every checkpoint.

    That is the global random states (handed to the sampler on load, see
    :class:`ResumableTrainingSampler`) and the running loss normalisers that some heads keep as
    plain attributes rather than buffers (Detectron2's ``RetinaNet.loss_normalizer``): every
    float attribute named in :attr:`MODULE_ATTRIBUTES` of any submodule. State that a module keeps
    in buffers or through ``torch.nn.Module.get_extra_state`` is in the model checkpoint already.

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
        return {"random_state": get_random_state(), "module_attributes": attributes}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._sampler.pending_random_state = state_dict["random_state"]
        modules = dict(self.trainer.model.named_modules())
        for key, value in state_dict.get("module_attributes", {}).items():
            module_name, _, attribute = key.rpartition(":")
            if module_name in modules:  # such attributes may be created lazily: set, don't check
                setattr(modules[module_name], attribute, value)
            else:
                logger.warning("checkpoint has state for %s that the model does not have", key)

    def before_train(self) -> None:
        self._sampler.start_index = self.trainer.start_iter * self._batch_size


class ProxyTrainer(Trainer):
    """:class:`paploss.engine.Trainer` for proxy trainings (see the module docstring).

    Args:
        cfg: frozen config of the proxy training.
        sampler_seed: shuffling seed of the training data.
        early_stop: settings of the :class:`~paploss.search.screening.InvalidTrainingHook` the
            trainer installs (None or disabled: none).
    """

    def __init__(
        self,
        cfg: Any,
        *,
        sampler_seed: int,
        early_stop: Optional[EarlyStopSettings] = None,
    ) -> None:
        self._sampler_seed = int(sampler_seed)
        self._early_stop = early_stop
        self.train_sampler: Optional[ResumableTrainingSampler] = None
        super().__init__(cfg)

    # DefaultTrainer calls ``self.build_train_loader(cfg)``: an instance method here, so that the
    # trainer keeps a handle on its sampler.
    def build_train_loader(self, cfg: Any) -> Any:  # type: ignore[override]
        for name in cfg.DATASETS.TRAIN:
            ensure_dataset_files(name)
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        self.train_sampler = ResumableTrainingSampler(len(dataset), seed=self._sampler_seed)
        return build_detection_train_loader(cfg, dataset=dataset, sampler=self.train_sampler)

    def build_hooks(self) -> List[HookBase]:
        sampler = self.train_sampler  # PreciseBN, when enabled, builds a loader of its own
        kept = [h for h in super().build_hooks() if not isinstance(h, hooks.EvalHook)]
        assert sampler is not None
        self.train_sampler = sampler
        extra: List[HookBase] = [RandomStateHook(sampler, self.cfg.SOLVER.IMS_PER_BATCH)]
        early_stop = None if self._early_stop is None else self._early_stop.build_hook()
        if early_stop is not None:
            extra.append(early_stop)
        # Before the checkpointer, so that an invalid run stops before writing another checkpoint.
        position = next(
            (i for i, h in enumerate(kept) if isinstance(h, hooks.PeriodicCheckpointer)), len(kept)
        )
        return kept[:position] + extra + kept[position:]

    def build_writers(self) -> list:
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(f"{self.cfg.OUTPUT_DIR}/metrics.json"),
        ]
