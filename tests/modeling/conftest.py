"""Shared fixtures: configs and a real training batch of the synthetic set."""

import itertools

import pytest
import torch
from detectron2.data import build_detection_train_loader

from .utils import make_cfg


@pytest.fixture(scope="session")
def synthetic_batch():
    """Four training images with their annotations, as the model's data loader yields them."""
    torch.manual_seed(0)
    cfg = make_cfg("configs/synthetic/retinanet_stock.yaml")
    loader = build_detection_train_loader(cfg)
    return next(itertools.islice(iter(loader), 1))
