"""Shared fixtures: configs and a real training batch of the synthetic set."""

import itertools
import random

import numpy as np
import pytest
import torch
from detectron2.data import build_detection_train_loader

from .utils import make_cfg


@pytest.fixture(scope="session")
def synthetic_batch():
    """Four training images with their annotations, as the model's data loader yields them.

    The same four images, flipped the same way, in every run: Detectron2 draws the order of the
    images (v0.6: the sampler's seed) and the random flips from NumPy's global generator, and data
    loader workers would seed themselves from torch's; Python's ``random`` is seeded too.
    """
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    cfg = make_cfg("configs/synthetic/retinanet_stock.yaml")
    loader = build_detection_train_loader(cfg)
    return next(itertools.islice(iter(loader), 1))
