"""Helpers for the modeling tests."""

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from paploss.engine import setup_cfg


def make_cfg(config_file, *opts):
    """A frozen config with a batch of 4 images and the given overrides."""
    return setup_cfg(config_file, ["SOLVER.IMS_PER_BATCH", "4", *opts])


def build_train_model(config_file, *opts, seed=0):
    """The model of ``config_file`` (with overrides) in training mode, seeded weights."""
    torch.manual_seed(seed)
    model = build_model(make_cfg(config_file, *opts))
    model.train()
    return model


def losses_with_storage(model, batch):
    """The model's loss dict on ``batch`` and the event storage it logged to."""
    with EventStorage(0) as storage:
        losses = model(batch)
    return losses, storage
