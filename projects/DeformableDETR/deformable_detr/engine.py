"""Config set-up, training data and the trainer of the project (used by ``train_net.py``)."""

import os
from typing import List, Optional, Sequence

from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetMapper, build_detection_train_loader
from detectron2.data import transforms as T

from paploss.data import check_dataset_names, ensure_dataset_files, register_datasets_from_config
from paploss.engine import Trainer

from .config import add_deformable_detr_config
from .solver import build_optimizer

__all__ = ["DeformableDETRTrainer", "build_train_augmentations", "load_config", "setup_cfg"]

#: Shorter sides an image is resized to before the published random crop.
CROP_PRE_RESIZE = (400, 500, 600)


def load_config(config_file: Optional[str] = None, opts: Sequence = ()) -> CfgNode:
    """A config with paploss's and this project's keys, merged from a file and overrides.

    Raises:
        FileNotFoundError: if ``config_file`` does not exist.
        ValueError: naming the source and the key when a key does not exist or has the wrong type.
    """
    import paploss.data  # noqa: F401  (registers the synthetic splits)

    cfg = get_cfg()
    add_deformable_detr_config(cfg)
    sources = []
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file '{config_file}' does not exist")
        sources.append((cfg.merge_from_file, config_file, f"config file '{config_file}'"))
    sources.append((cfg.merge_from_list, list(opts), "command-line overrides"))
    for merge, source, description in sources:
        try:  # yacs reports unknown keys and type mismatches with bare assertions
            merge(source)
        except (AssertionError, KeyError, TypeError) as e:
            raise ValueError(f"{description}: {e}") from e
    return cfg


def setup_cfg(config_file: Optional[str] = None, opts: Sequence = ()) -> CfgNode:
    """:func:`load_config`, then register ``MODEL.PAPLOSS.DATASETS``, check names, freeze."""
    cfg = load_config(config_file, opts)
    register_datasets_from_config(cfg.MODEL.PAPLOSS.DATASETS)
    check_dataset_names(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
    check_dataset_names(cfg.DATASETS.TEST, "DATASETS.TEST")
    cfg.freeze()
    return cfg


def build_train_augmentations(cfg: CfgNode) -> List[T.Augmentation]:
    """Flip, then multi-scale resizing; with ``INPUT.CROP.ENABLED`` the published DETR recipe:
    half of the images are first resized to a shorter side in :data:`CROP_PRE_RESIZE` and
    randomly cropped (``INPUT.CROP.TYPE`` / ``SIZE``) before the multi-scale resize."""
    augmentations: List[T.Augmentation] = []
    if cfg.INPUT.RANDOM_FLIP != "none":
        augmentations.append(
            T.RandomFlip(
                horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
            )
        )
    if cfg.INPUT.CROP.ENABLED:
        crop = T.AugmentationList(
            [
                T.ResizeShortestEdge(CROP_PRE_RESIZE, sample_style="choice"),
                T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE),
            ]
        )
        augmentations.append(T.RandomApply(crop, prob=0.5))
    augmentations.append(
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    )
    return augmentations


class DeformableDETRTrainer(Trainer):
    """paploss's trainer (COCO evaluation, complete checkpoints) with the published optimizer
    and training augmentations."""

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        for name in cfg.DATASETS.TRAIN:
            ensure_dataset_files(name)
        mapper = DatasetMapper(cfg, is_train=True, augmentations=build_train_augmentations(cfg))
        return build_detection_train_loader(cfg, mapper=mapper)
