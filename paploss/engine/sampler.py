"""The training sampler of an exact resume: Detectron2's shuffling sampler that starts part-way.

A run resumed from a checkpoint sees the same images with the same augmentations as the run that
was never interrupted when

* the sampler skips the samples of the global stream that the checkpointed iterations used
  (:attr:`ResumableTrainingSampler.start_index`) and shuffles with the interrupted run's seed,
* the global random states (Python, NumPy, torch) that the data augmentations and the model
  draw from are those of the interrupted run at its checkpoint (:func:`get_random_state` stored
  in the checkpoint by :class:`paploss.engine.hooks.RandomStateHook`), restored right before the
  first sample of the resumed run (:func:`set_random_state`).

This holds with ``DATALOADER.NUM_WORKERS: 0``, images of one aspect-ratio group (or no grouping:
a grouped batch may hold images left over from before the checkpoint), one process, the same
thread count, and TorchScript graph optimisation off (as :meth:`paploss.engine.Trainer.train` runs);
otherwise a resumed run is still correct, only not bit-identical.
"""

import itertools
import random
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch
from detectron2.data.samplers import TrainingSampler

__all__ = ["ResumableTrainingSampler", "get_random_state", "set_random_state"]


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
        seed: shuffling seed; None: a random seed shared by all processes (as Detectron2's
            ``TrainingSampler``, drawn from NumPy's global generator).

    Attributes:
        start_index: number of samples of the global stream to skip (set before the first
            sample is drawn: ``start_iter * IMS_PER_BATCH``).
        pending_random_state: global random states to restore right before the first sample is
            yielded (set when a checkpoint is loaded), or None.
    """

    def __init__(self, size: int, seed: Optional[int] = None) -> None:
        super().__init__(size, shuffle=True, seed=seed)
        self.start_index = 0
        self.pending_random_state: Optional[Dict[str, Any]] = None

    @property
    def seed(self) -> int:
        """The shuffling seed."""
        return self._seed

    def resume(self, seed: int, random_state: Optional[Dict[str, Any]]) -> None:
        """Continue the stream of the run a checkpoint was written by: its shuffling seed, and its
        random states from the first sample on. Call before the first sample is drawn."""
        self._seed = int(seed)
        self.pending_random_state = random_state

    def _infinite_indices(self) -> Iterator[int]:
        # Runs lazily on the first request for data, i.e. after the data loader set itself up:
        # whatever random numbers that took are not part of the restored state.
        if self.pending_random_state is not None:
            set_random_state(self.pending_random_state)
            self.pending_random_state = None
        yield from itertools.islice(super()._infinite_indices(), self.start_index, None)
