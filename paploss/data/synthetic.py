"""A deterministic synthetic detection dataset in COCO format ("synthetic shapes").

Each image shows a textured background with clutter (lines, speckles and small distractor blobs)
and several objects of four classes (rectangle, ellipse, triangle, cross), drawn in colours from a
hue band of their class (jittered, with random saturation and brightness),
scales (about 10 to 64 px) and aspect ratios (1:2.5 to 2.5:1). Objects may overlap; later objects
occlude earlier ones, and each annotation is the box of the object's *visible* pixels. Objects
whose visible part is under ``MIN_VISIBLE_FRACTION`` of their area are not annotated (they look
like clutter). Each annotation also carries the object's instance mask: its visible pixels (the
occluded parts cut away, so a mask may have holes or several pieces), as COCO RLE
(``{"size": [h, w], "counts": str}``, pycocotools' compressed encoding). Detectron2 reads RLE
masks with ``INPUT.MASK_FORMAT: "bitmask"`` (the Mask R-CNN configs set it). Small objects, occlusion and clutter make AP75 clearly harder than AP50, so the
localisation quality that a loss rewards shows in the metrics.

Everything is a pure function of ``(split, seed, num_images, image_size)``: the same arguments
write byte-identical JSON and PNG files. :data:`GENERATOR_VERSION` names the format: the cache
folder of the generated set includes it (:func:`paploss.data.register_synthetic_datasets`), so a
new version is generated afresh instead of reusing files of an older one.

Layout written by :func:`generate_split`::

    <root>/<split>.json      COCO instances file (images, annotations, categories)
    <root>/<split>/*.png     images
"""

import colorsys
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_util

__all__ = [
    "CLASS_NAMES",
    "SPLITS",
    "SyntheticSplitSpec",
    "default_split_specs",
    "encode_mask",
    "generate_split",
    "render_image",
]

CLASS_NAMES: Tuple[str, ...] = ("rectangle", "ellipse", "triangle", "cross")
SPLITS: Tuple[str, ...] = ("train", "search_train", "search_val", "val")
MIN_VISIBLE_FRACTION = 0.35
#: Version 4 added the instance masks (``segmentation``) to the annotations.
GENERATOR_VERSION = 4


@dataclass(frozen=True)
class SyntheticSplitSpec:
    """What one split contains.

    Attributes:
        split: split name, one of :data:`SPLITS`.
        num_images: number of images.
        seed: base seed; image ``k`` uses ``(seed, k)``.
        image_size: square image side in pixels.
        first_image_id: COCO id of the first image (ids are unique across splits).
    """

    split: str
    num_images: int
    seed: int
    image_size: int = 128
    first_image_id: int = 1


def default_split_specs(image_size: int = 128) -> Dict[str, SyntheticSplitSpec]:
    """The built-in splits. Different seeds and id ranges make every split disjoint."""
    sizes = {"train": 600, "search_train": 300, "search_val": 100, "val": 200}
    return {
        split: SyntheticSplitSpec(
            split=split,
            num_images=sizes[split],
            seed=1000 * (index + 1),
            image_size=image_size,
            first_image_id=100_000 * (index + 1) + 1,
        )
        for index, split in enumerate(SPLITS)
    }


def _random_colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> Tuple[int, ...]:
    return tuple(int(c) for c in rng.integers(low, high, size=3))


def _class_colour(rng: np.random.Generator, cls: int) -> Tuple[int, ...]:
    """A colour whose hue lies in the class's band (jittered), with random saturation/value."""
    hue = (cls / len(CLASS_NAMES) + rng.uniform(-0.07, 0.07)) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.5, 1.0))
    return tuple(int(round(255 * c)) for c in rgb)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A smooth colour gradient plus pixel noise."""
    start = rng.uniform(40, 200, size=3)
    end = rng.uniform(40, 200, size=3)
    ramp = np.linspace(0.0, 1.0, size)[None, :, None]
    if rng.random() < 0.5:
        ramp = ramp.transpose(1, 0, 2)
    pixels = start + (end - start) * ramp
    pixels = np.broadcast_to(pixels, (size, size, 3)) + rng.normal(0.0, 12.0, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _shape_polygon(kind: str, box: Sequence[float], rng: np.random.Generator) -> List[tuple]:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if kind == "triangle":
        apex = x0 + w * rng.uniform(0.2, 0.8)
        return [(apex, y0), (x1, y1), (x0, y1)]
    # cross: a plus sign whose arms have a random thickness
    t = rng.uniform(0.25, 0.45)
    cx0, cx1 = x0 + w * (0.5 - t / 2), x0 + w * (0.5 + t / 2)
    cy0, cy1 = y0 + h * (0.5 - t / 2), y0 + h * (0.5 + t / 2)
    return [
        (cx0, y0), (cx1, y0), (cx1, cy0), (x1, cy0), (x1, cy1), (cx1, cy1),
        (cx1, y1), (cx0, y1), (cx0, cy1), (x0, cy1), (x0, cy0), (cx0, cy0),
    ]  # fmt: skip


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, box, fill, rng) -> None:
    if kind == "rectangle":
        draw.rectangle(box, fill=fill)
    elif kind == "ellipse":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon(_shape_polygon(kind, box, rng), fill=fill)


def _add_clutter(image: Image.Image, rng: np.random.Generator) -> None:
    """Lines, speckles and small distractor blobs that belong to no class."""
    size = image.size[0]
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 7))):
        points = [tuple(float(v) for v in rng.uniform(0, size, 2)) for _ in range(2)]
        draw.line(points, fill=_random_colour(rng), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(2, 6))):
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(1.0, 3.0)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_random_colour(rng))
    for _ in range(int(rng.integers(0, 3))):  # ring-shaped distractors
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(4.0, 10.0)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=_random_colour(rng), width=2)


def render_image(spec: SyntheticSplitSpec, index: int) -> Tuple[Image.Image, List[dict]]:
    """Render image ``index`` of a split.

    Returns:
        The RGB image and its annotations as dicts with ``bbox`` (XYWH, visible part),
        ``category_id`` (1-based), ``area`` (visible pixel count) and ``segmentation`` (the
        visible pixels as COCO compressed RLE, :func:`encode_mask`).
    """
    rng = np.random.default_rng([spec.seed, index])
    size = spec.image_size
    image = _background(rng, size)
    _add_clutter(image, rng)

    num_objects = int(rng.integers(2, 7))
    owner = np.full((size, size), -1, dtype=np.int32)  # which object each pixel shows
    full_areas: List[int] = []
    classes: List[int] = []
    draw = ImageDraw.Draw(image)
    for obj in range(num_objects):
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        scale = float(np.exp(rng.uniform(np.log(10.0), np.log(64.0))))
        aspect = float(np.exp(rng.uniform(-np.log(2.5), np.log(2.5))))
        w = min(scale * np.sqrt(aspect), size - 2.0)
        h = min(scale / np.sqrt(aspect), size - 2.0)
        x0 = rng.uniform(0, size - w)
        y0 = rng.uniform(0, size - h)
        box = (float(x0), float(y0), float(x0 + w), float(y0 + h))
        colour = _class_colour(rng, cls)
        # Render the shape alone into a mask (same random draws as the visible shape).
        mask_image = Image.new("L", (size, size), 0)
        shape_state = rng.bit_generator.state
        _draw_shape(ImageDraw.Draw(mask_image), CLASS_NAMES[cls], box, 255, rng)
        rng.bit_generator.state = shape_state
        _draw_shape(draw, CLASS_NAMES[cls], box, colour, rng)
        mask = np.asarray(mask_image) > 0
        owner[mask] = obj
        full_areas.append(int(mask.sum()))
        classes.append(cls)

    annotations = []
    for obj in range(num_objects):
        visible = owner == obj
        area = int(visible.sum())
        if full_areas[obj] == 0 or area < MIN_VISIBLE_FRACTION * full_areas[obj] or area < 12:
            continue
        ys, xs = np.nonzero(visible)
        x0, y0 = float(xs.min()), float(ys.min())
        w, h = float(xs.max() + 1) - x0, float(ys.max() + 1) - y0
        annotations.append(
            {
                "bbox": [x0, y0, w, h],
                "category_id": classes[obj] + 1,
                "area": float(area),
                "segmentation": encode_mask(visible),
            }
        )
    return image, annotations


def encode_mask(mask: np.ndarray) -> dict:
    """A binary ``[H, W]`` mask as COCO compressed RLE with a JSON-able ``counts`` string."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def generate_split(spec: SyntheticSplitSpec, root: str) -> str:
    """Write one split (JSON + PNGs) under ``root`` unless it is already there.

    Generation writes into a temporary folder and moves it into place, so concurrent callers
    (e.g. several trial processes) never see a half-written split.

    Returns:
        The path of the split's COCO JSON file.
    """
    json_path = os.path.join(root, f"{spec.split}.json")
    if os.path.isfile(json_path):
        return json_path
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{spec.split}-", dir=root)
    try:
        image_dir = os.path.join(staging, spec.split)
        os.makedirs(image_dir)
        images, annotations = [], []
        for index in range(spec.num_images):
            image_id = spec.first_image_id + index
            file_name = f"{image_id:08d}.png"
            image, objects = render_image(spec, index)
            image.save(os.path.join(image_dir, file_name), format="PNG", optimize=False)
            images.append(
                {"id": image_id, "file_name": file_name, "height": image.height,
                 "width": image.width}
            )  # fmt: skip
            for obj in objects:
                annotations.append(
                    {"id": len(annotations) + spec.first_image_id * 20, "image_id": image_id,
                     "iscrowd": 0, **obj}
                )  # fmt: skip
        coco = {
            "info": {
                "description": f"paploss synthetic shapes, split {spec.split}",
                "version": str(GENERATOR_VERSION),
            },
            "images": images,
            "annotations": annotations,
            "categories": [
                {"id": i + 1, "name": name, "supercategory": "shape"}
                for i, name in enumerate(CLASS_NAMES)
            ],
        }
        with open(os.path.join(staging, f"{spec.split}.json"), "w") as f:
            json.dump(coco, f)
        target_dir = os.path.join(root, spec.split)
        try:
            os.rename(image_dir, target_dir)
        except OSError:  # another process finished first
            if not os.path.isdir(target_dir):
                raise
        # The JSON goes last: its presence marks a complete split.
        os.replace(os.path.join(staging, f"{spec.split}.json"), json_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return json_path
