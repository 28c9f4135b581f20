"""The training mapper: Detectron2's, or one whose augmentations also see the boxes.

Detectron2's ``DatasetMapper`` hands its augmentations the image only (``T.AugInput(image)``);
the SSD-style min-IoU crop of :mod:`paploss.data.augmentations` also needs the ground-truth boxes.
:class:`BoxAugmentationDatasetMapper` is a training mapper for box annotations that passes them
(``T.AugInput(image, boxes=...)``); :func:`build_train_mapper` picks the mapper a config needs.
"""

import copy
from typing import List, Optional

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from .augmentations import build_train_augmentations

__all__ = ["BoxAugmentationDatasetMapper", "build_train_mapper"]


class BoxAugmentationDatasetMapper:
    """Training mapper for box annotations whose augmentations receive the boxes.

    Reads the image in ``INPUT.FORMAT``, applies the augmentations to the image and its
    (non-crowd) boxes, and returns Detectron2's model input: ``image`` (``[C, H, W]`` tensor, float32
    after photometric augmentation) and ``instances`` (``gt_boxes``, ``gt_classes``), dropping
    boxes that became empty. Segmentations and keypoints are not used.
    """

    @configurable
    def __init__(self, *, augmentations: List[T.Augmentation], image_format: str):
        """
        Args:
            augmentations: applied in order; any may take ``boxes`` in ``get_transform``.
            image_format: ``INPUT.FORMAT``.
        """
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg) -> dict:
        for key in ("MASK_ON", "KEYPOINT_ON", "LOAD_PROPOSALS"):
            if cfg.MODEL[key]:
                raise ValueError(
                    f"MODEL.PAPLOSS.AUGMENTATION {cfg.MODEL.PAPLOSS.AUGMENTATION!r} supports box "
                    f"annotations only; set MODEL.{key} False"
                )
        return {"augmentations": build_train_augmentations(cfg), "image_format": cfg.INPUT.FORMAT}

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        annotations = [
            {k: v for k, v in a.items() if k not in ("segmentation", "keypoints")}
            for a in dataset_dict.pop("annotations", [])
            if a.get("iscrowd", 0) == 0
        ]
        boxes = np.array(
            [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations],
            dtype=np.float64,
        ).reshape(-1, 4)
        aug_input = T.AugInput(image, boxes=boxes)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        annotations = [
            utils.transform_instance_annotations(a, transforms, image_shape) for a in annotations
        ]
        instances = utils.annotations_to_instances(annotations, image_shape)
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
        return dataset_dict


def build_train_mapper(cfg) -> Optional[BoxAugmentationDatasetMapper]:
    """The training mapper of ``MODEL.PAPLOSS.AUGMENTATION``: ``None`` (Detectron2's
    ``DatasetMapper``, the default of ``build_detection_train_loader``) for ``"default"``, a
    :class:`BoxAugmentationDatasetMapper` for ``"ssd"``.

    Use it as ``build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))``.
    """
    if cfg.MODEL.PAPLOSS.AUGMENTATION == "default":
        return None
    return BoxAugmentationDatasetMapper(cfg)  # raises ValueError for an unknown mode
