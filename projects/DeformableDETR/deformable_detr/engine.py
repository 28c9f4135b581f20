"""Config set-up, training data and the trainer of the project (used by ``train_net.py``).

Configs load through :func:`paploss.engine.load_config`, which adds this project's keys to every
``PAPDeformableDETR`` config (the config extension the package registers on import) and applies
paploss's rules (dataset paths, ``OUTPUT_DIR``, ``LR_STEP_FRACTIONS``); paploss's
:class:`~paploss.engine.Trainer` builds the project's optimizer (registered the same way).
"""

from typing import List, Optional, Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetMapper, build_detection_train_loader
from detectron2.data import transforms as T

from paploss.data import ensure_dataset_files
from paploss.engine import Trainer, load_config
from paploss.engine import setup_cfg as paploss_setup_cfg

__all__ = ["DeformableDETRTrainer", "build_train_augmentations", "load_config", "setup_cfg"]

#: Shorter sides an image is resized to before the published random crop.
CROP_PRE_RESIZE = (400, 500, 600)


def setup_cfg(config_file: Optional[str] = None, opts: Sequence = ()) -> CfgNode:
    """:func:`paploss.engine.setup_cfg` without the start-up data checks: load the config,
    register ``MODEL.PAPLOSS.DATASETS``, check the dataset names, freeze.

    Raises:
        FileNotFoundError: if ``config_file`` does not exist.
        ValueError: naming the source and the key when a key does not exist or has the wrong type.
    """
    return paploss_setup_cfg(config_file, opts, validate=False)


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
    """paploss's trainer (COCO evaluation, complete checkpoints, and the published optimizer
    this package registers for ``PAPDeformableDETR``) with the published training
    augmentations."""

    @classmethod
    def build_train_loader(cls, cfg):
        for name in cfg.DATASETS.TRAIN:
            ensure_dataset_files(name)
        mapper = DatasetMapper(cfg, is_train=True, augmentations=build_train_augmentations(cfg))
        return build_detection_train_loader(cfg, mapper=mapper)
