"""SSD-style training augmentations (the published 512 protocol) as Detectron2 ``Augmentation``s.

The published PAP, aLRP and AP-Loss COCO results train at 512 x 512 with this pipeline:

1. :class:`PhotometricDistortion`: random brightness, contrast, saturation and hue, and a random
   channel permutation (each with probability 1/2; contrast before or after the colour changes).
2. :class:`Expand` ("zoom out"): with probability 1/2, place the image at a random position of a
   canvas 1 to 4 times its size filled with the pixel mean.
3. :class:`MinIoURandomCrop`: crop a random patch whose IoU with every ground-truth box is at
   least a randomly chosen threshold, keeping the boxes whose centre lies inside the patch.
4. Resize to a square (``T.Resize``) and a horizontal flip with probability 1/2 (``T.RandomFlip``).

:func:`build_train_augmentations` returns this list for ``MODEL.PAPLOSS.AUGMENTATION: "ssd"`` and
Detectron2's own for ``"default"``. The crop needs the boxes: Detectron2's ``DatasetMapper`` does
not hand them to its augmentations, :class:`paploss.data.mapper.BoxAugmentationDatasetMapper`
does (:func:`paploss.data.mapper.build_train_mapper` picks the mapper from the config).

Randomness comes from NumPy's global generator, like Detectron2's own augmentations, so
``np.random.seed`` (Detectron2 seeds each data-loader worker) makes them reproducible.

Differences from the published (mmdetection) implementation, on purpose: pixel values are kept in
[0, 255] after each photometric step and saturation in [0, 1] (mmdetection's float pipeline lets
them leave those ranges, where the HSV round trip is ill-defined); the crop gives up after
``max_rounds`` rounds of ``max_trials`` trials and keeps the image uncropped (mmdetection retries
forever; with the SSD modes a round keeps the image uncropped with probability 1/7 anyway).
"""

from typing import Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from fvcore.transforms.transform import CropTransform, NoOpTransform, Transform

__all__ = [
    "AUGMENTATION_MODES",
    "SSD_CROP_MODES",
    "CenterKeepingCropTransform",
    "Expand",
    "ExpandTransform",
    "MinIoURandomCrop",
    "PhotometricDistortion",
    "PhotometricTransform",
    "build_train_augmentations",
    "hsv_to_rgb",
    "rgb_to_hsv",
]

#: Values of ``MODEL.PAPLOSS.AUGMENTATION``.
AUGMENTATION_MODES = ("default", "ssd")
#: The SSD crop modes: ``None`` keeps the whole image, a number is the minimum IoU of the patch
#: with every ground-truth box (0: any patch that keeps a box centre).
SSD_CROP_MODES: Tuple[Optional[float], ...] = (None, 0.1, 0.3, 0.5, 0.7, 0.9, 0.0)


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """``[..., 3]`` RGB (any non-negative scale) to HSV: hue in degrees [0, 360), saturation in
    [0, 1], value on the scale of the input."""
    rgb = np.asarray(rgb, dtype=np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(axis=-1)
    spread = value - rgb.min(axis=-1)
    saturation = np.where(value > 0, spread / np.where(value > 0, value, 1), 0)
    safe = np.where(spread > 0, spread, 1)
    hue = np.select(
        [spread == 0, value == r, value == g],
        [0.0, ((g - b) / safe) % 6, (b - r) / safe + 2],
        (r - g) / safe + 4,
    )
    return np.stack([(hue * 60) % 360, saturation, value], axis=-1).astype(np.float32)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv` (hue in degrees, taken modulo 360)."""
    hsv = np.asarray(hsv, dtype=np.float32)
    hue, saturation, value = (hsv[..., 0] % 360) / 60, hsv[..., 1], hsv[..., 2]
    chroma = value * saturation
    second = chroma * (1 - np.abs(hue % 2 - 1))
    sector = np.floor(hue).astype(np.int64) % 6
    zero = np.zeros_like(chroma)
    # (R, G, B) before adding value - chroma, for the six 60-degree sectors of the hue circle.
    table = [
        (chroma, second, zero),
        (second, chroma, zero),
        (zero, chroma, second),
        (zero, second, chroma),
        (second, zero, chroma),
        (chroma, zero, second),
    ]
    channels = [
        np.select([sector == k for k in range(6)], [row[c] for row in table]) for c in range(3)
    ]
    return (np.stack(channels, axis=-1) + (value - chroma)[..., None]).astype(np.float32)


class PhotometricTransform(Transform):
    """A fixed photometric change of an ``[H, W, 3]`` image; boxes and coordinates unchanged.

    Steps: add ``brightness``; multiply by ``contrast`` (first or last); in HSV multiply the
    saturation by ``saturation`` and shift the hue by ``hue`` degrees; permute the channels.
    Values are clipped to [0, 255] after each step. The result is float32.
    """

    def __init__(
        self,
        *,
        brightness: float = 0.0,
        contrast: float = 1.0,
        contrast_first: bool = True,
        saturation: float = 1.0,
        hue: float = 0.0,
        permutation: Optional[Sequence[int]] = None,
        image_format: str = "BGR",
    ):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        img = np.clip(img.astype(np.float32) + self.brightness, 0, 255)
        if self.contrast_first:
            img = np.clip(img * self.contrast, 0, 255)
        if self.saturation != 1.0 or self.hue != 0.0:
            rgb = img[..., ::-1] if self.image_format == "BGR" else img
            hsv = rgb_to_hsv(rgb)
            hsv[..., 1] = np.clip(hsv[..., 1] * self.saturation, 0, 1)
            hsv[..., 0] = (hsv[..., 0] + self.hue) % 360
            rgb = np.clip(hsv_to_rgb(hsv), 0, 255)
            img = rgb[..., ::-1] if self.image_format == "BGR" else rgb
        if not self.contrast_first:
            img = np.clip(img * self.contrast, 0, 255)
        if self.permutation is not None:
            img = img[..., list(self.permutation)]
        return np.ascontiguousarray(img, dtype=np.float32)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation


class PhotometricDistortion(T.Augmentation):
    """SSD's photometric distortion: each change is applied with probability 1/2.

    Brightness ``+U(-brightness_delta, brightness_delta)``; contrast ``x U(contrast_range)``,
    before or after the colour changes (probability 1/2 each); saturation
    ``x U(saturation_range)``; hue ``+U(-hue_delta, hue_delta)`` degrees; a random channel
    permutation. Turns the image into float32.
    """

    def __init__(
        self,
        brightness_delta: float = 32.0,
        contrast_range: Tuple[float, float] = (0.5, 1.5),
        saturation_range: Tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18.0,
        image_format: str = "BGR",
    ):
        """
        Args:
            brightness_delta: largest brightness change, in pixel values.
            contrast_range: range of the contrast factor.
            saturation_range: range of the saturation factor.
            hue_delta: largest hue change, in degrees.
            image_format: ``"BGR"`` or ``"RGB"``, the channel order of the images
                (``INPUT.FORMAT``).
        """
        super().__init__()
        if image_format not in ("BGR", "RGB"):
            raise ValueError(f"image_format must be 'BGR' or 'RGB', got {image_format!r}")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        def maybe(draw, default):
            return draw() if np.random.randint(2) else default

        brightness = maybe(
            lambda: np.random.uniform(-self.brightness_delta, self.brightness_delta), 0.0
        )
        contrast_first = bool(np.random.randint(2))
        contrast = maybe(lambda: np.random.uniform(*self.contrast_range), 1.0)
        saturation = maybe(lambda: np.random.uniform(*self.saturation_range), 1.0)
        hue = maybe(lambda: np.random.uniform(-self.hue_delta, self.hue_delta), 0.0)
        permutation = maybe(lambda: tuple(int(c) for c in np.random.permutation(3)), None)
        return PhotometricTransform(
            brightness=float(brightness),
            contrast=float(contrast),
            contrast_first=contrast_first,
            saturation=float(saturation),
            hue=float(hue),
            permutation=permutation,
            image_format=self.image_format,
        )


class ExpandTransform(Transform):
    """Place the image at ``(left, top)`` of a ``canvas_h x canvas_w`` canvas filled with
    ``fill`` (one value per channel); coordinates shift by ``(left, top)``."""

    def __init__(self, *, left: int, top: int, canvas_w: int, canvas_h: int, fill: Sequence[float]):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        shape = (self.canvas_h, self.canvas_w) + img.shape[2:]
        fill = np.asarray(self.fill, dtype=np.float64)
        if img.dtype == np.uint8:
            fill = np.clip(np.round(fill), 0, 255)
        canvas = np.empty(shape, dtype=img.dtype)
        canvas[...] = fill.astype(img.dtype)
        canvas[self.top : self.top + h, self.left : self.left + w] = img
        return canvas

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords + np.array([self.left, self.top], dtype=coords.dtype)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        raise NotImplementedError("ExpandTransform has no fill value for segmentations")


class Expand(T.Augmentation):
    """SSD's "zoom out": with probability ``prob``, put the image at a uniformly random position
    of a canvas ``U(ratio_range)`` times its size, filled with ``fill`` (the pixel mean)."""

    def __init__(
        self,
        fill: Sequence[float],
        ratio_range: Tuple[float, float] = (1.0, 4.0),
        prob: float = 0.5,
    ):
        """
        Args:
            fill: one value per channel, in the images' channel order (``MODEL.PIXEL_MEAN``).
            ratio_range: range of the canvas-to-image size ratio, ``1 <= low <= high``.
            prob: probability to expand.
        """
        super().__init__()
        if not 1.0 <= ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range must satisfy 1 <= low <= high, got {ratio_range}")
        fill = tuple(float(v) for v in fill)
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        if np.random.uniform() >= self.prob:
            return NoOpTransform()
        h, w = image.shape[:2]
        ratio = np.random.uniform(*self.ratio_range)
        left = int(np.random.uniform(0, w * ratio - w))
        top = int(np.random.uniform(0, h * ratio - h))
        canvas_w, canvas_h = max(int(w * ratio), left + w), max(int(h * ratio), top + h)
        return ExpandTransform(
            left=left, top=top, canvas_w=canvas_w, canvas_h=canvas_h, fill=self.fill
        )


class CenterKeepingCropTransform(CropTransform):
    """A crop that drops the boxes whose centre lies outside the patch (SSD's rule).

    A dropped box becomes an empty box, which Detectron2's ``filter_empty_instances`` removes
    from the annotations; the other boxes are shifted like any crop (and later clipped to the
    image by ``transform_instance_annotations``).
    """

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        box = np.asarray(box, dtype=np.float64).reshape(-1, 4)
        centre = (box[:, :2] + box[:, 2:]) / 2
        inside = (
            (centre[:, 0] > self.x0)
            & (centre[:, 0] < self.x0 + self.w)
            & (centre[:, 1] > self.y0)
            & (centre[:, 1] < self.y0 + self.h)
        )
        out = super().apply_box(box)
        out[~inside] = 0.0
        return out


def _patch_iou(patch: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU ``[N]`` of one XYXY ``patch`` with ``boxes [N, 4]``."""
    width = np.clip(np.minimum(patch[2], boxes[:, 2]) - np.maximum(patch[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(patch[3], boxes[:, 3]) - np.maximum(patch[1], boxes[:, 1]), 0, None)
    inter = width * height
    area_patch = (patch[2] - patch[0]) * (patch[3] - patch[1])
    area_boxes = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area_patch + area_boxes - inter, 1e-12)


class MinIoURandomCrop(T.Augmentation):
    """SSD's random crop: a patch whose IoU with every box is at least a random threshold.

    Each round draws a mode from ``modes`` (``None``: keep the image; a number: the minimum IoU)
    and tries up to ``max_trials`` patches of width and height ``U(min_crop_size, 1)`` times the
    image's, aspect ratio (h / w) in [1/2, 2], at a uniform position (integer pixel corners). A
    patch is taken if its IoU with every box is >= the threshold and at least one box centre lies
    inside it; the boxes whose centre lies outside are dropped
    (:class:`CenterKeepingCropTransform`). An image without boxes takes the first valid patch.
    After ``max_rounds`` rounds without a patch the image is kept.
    """

    def __init__(
        self,
        modes: Sequence[Optional[float]] = SSD_CROP_MODES,
        min_crop_size: float = 0.3,
        max_trials: int = 50,
        max_rounds: int = 100,
    ):
        """
        Args:
            modes: the modes drawn uniformly each round (see the class docstring).
            min_crop_size: smallest patch side as a fraction of the image side, in (0, 1].
            max_trials: patches tried per round.
            max_rounds: rounds before keeping the image uncropped.
        """
        super().__init__()
        if not modes:
            raise ValueError("modes must not be empty")
        if not 0 < min_crop_size <= 1:
            raise ValueError(f"min_crop_size must be in (0, 1], got {min_crop_size}")
        modes = tuple(modes)
        self._init(locals())

    def get_transform(self, image: np.ndarray, boxes: Optional[np.ndarray]) -> Transform:
        h, w = image.shape[:2]
        boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, dtype=np.float64)
        boxes = boxes.reshape(-1, 4)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        for _ in range(self.max_rounds):
            min_iou = self.modes[np.random.randint(len(self.modes))]
            if min_iou is None:
                return NoOpTransform()
            for _ in range(self.max_trials):
                new_w = np.random.uniform(self.min_crop_size * w, w)
                new_h = np.random.uniform(self.min_crop_size * h, h)
                if not 0.5 <= new_h / new_w <= 2:
                    continue
                left = np.random.uniform(w - new_w)
                top = np.random.uniform(h - new_h)
                patch = np.array([int(left), int(top), int(left + new_w), int(top + new_h)])
                if patch[2] == patch[0] or patch[3] == patch[1]:
                    continue
                if len(boxes):
                    if _patch_iou(patch, boxes).min() < min_iou:
                        continue
                    inside = (
                        (centres[:, 0] > patch[0])
                        & (centres[:, 1] > patch[1])
                        & (centres[:, 0] < patch[2])
                        & (centres[:, 1] < patch[3])
                    )
                    if not inside.any():
                        continue
                x0, y0, x1, y1 = (int(v) for v in patch)
                return CenterKeepingCropTransform(x0, y0, x1 - x0, y1 - y0, w, h)
        return NoOpTransform()


def _ssd_augmentations(cfg) -> list:
    image_format = cfg.INPUT.FORMAT
    if image_format not in ("BGR", "RGB"):
        raise ValueError(
            f"MODEL.PAPLOSS.AUGMENTATION 'ssd' needs INPUT.FORMAT 'BGR' or 'RGB', "
            f"got {image_format!r}"
        )
    sizes = tuple(cfg.INPUT.MIN_SIZE_TRAIN)
    if len(sizes) != 1:
        raise ValueError(
            "MODEL.PAPLOSS.AUGMENTATION 'ssd' resizes to a square of side INPUT.MIN_SIZE_TRAIN, "
            f"which must hold one size, got {sizes}"
        )
    if cfg.INPUT.CROP.ENABLED:
        raise ValueError(
            "MODEL.PAPLOSS.AUGMENTATION 'ssd' has its own crop; set INPUT.CROP.ENABLED False"
        )
    if len(cfg.MODEL.PIXEL_MEAN) != 3:
        raise ValueError(
            f"MODEL.PAPLOSS.AUGMENTATION 'ssd' needs 3 values in MODEL.PIXEL_MEAN, "
            f"got {list(cfg.MODEL.PIXEL_MEAN)}"
        )
    side = int(sizes[0])
    return [
        PhotometricDistortion(image_format=image_format),
        Expand(fill=cfg.MODEL.PIXEL_MEAN),
        MinIoURandomCrop(),
        T.Resize((side, side)),
        T.RandomFlip(prob=0.5, horizontal=True, vertical=False),
    ]


def build_train_augmentations(cfg) -> list:
    """The training augmentations of ``MODEL.PAPLOSS.AUGMENTATION``.

    * ``"default"``: Detectron2's (those its ``DatasetMapper`` builds from ``INPUT.*``).
    * ``"ssd"``: :class:`PhotometricDistortion`, :class:`Expand` with ``MODEL.PIXEL_MEAN``,
      :class:`MinIoURandomCrop`, resize to ``INPUT.MIN_SIZE_TRAIN`` (one size) squared, and a
      horizontal flip. Its crop needs the boxes (see the module docstring).

    Raises:
        ValueError: naming the key, for an unknown mode or settings the mode cannot use.
    """
    mode = cfg.MODEL.PAPLOSS.AUGMENTATION
    if mode not in AUGMENTATION_MODES:
        raise ValueError(
            f"MODEL.PAPLOSS.AUGMENTATION must be one of {AUGMENTATION_MODES}, got {mode!r}"
        )
    if mode == "ssd":
        return _ssd_augmentations(cfg)
    return list(DatasetMapper.from_config(cfg, is_train=True)["augmentations"])
