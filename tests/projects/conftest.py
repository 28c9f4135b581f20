"""Puts projects/DeformableDETR on sys.path (as its train_net.py does) and shares fixtures."""

import os
import random
import sys

import numpy as np
import pytest
import torch

PROJECT = os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "projects", "DeformableDETR")
)
if PROJECT not in sys.path:
    sys.path.insert(0, PROJECT)

TINY_CONFIG = os.path.join(PROJECT, "configs", "Base-DeformableDETR-Tiny.yaml")


def seed_everything(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture(scope="session")
def detr_batch():
    """Four training images of the synthetic set with annotations, without augmentation."""
    from deformable_detr import load_config
    from detectron2.data import DatasetMapper, get_detection_dataset_dicts

    from paploss.data import ensure_dataset_files

    cfg = load_config(TINY_CONFIG)
    ensure_dataset_files("synthetic_shapes_train")
    mapper = DatasetMapper(cfg, is_train=True, augmentations=[])
    return [mapper(d) for d in get_detection_dataset_dicts(["synthetic_shapes_train"])[:4]]
