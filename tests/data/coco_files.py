"""Tiny COCO-format datasets written by tests: PNG images with filled shapes, one json file."""

import json
import os
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw


def write_coco_set(
    root: str,
    split: str,
    classes: Sequence[str] = ("tree",),
    num_images: int = 4,
    image_size: Tuple[int, int] = (96, 96),
    seed: int = 0,
    category_ids: Optional[Sequence[int]] = None,
    json_name: Optional[str] = None,
) -> Tuple[str, str]:
    """Write ``<root>/<split>/*.png`` and ``<root>/annotations/instances_<split>.json``.

    Each image (``image_size`` = (height, width)) holds 2-4 filled ellipses of 12-40 px, coloured
    by class, on a noisy background; every class appears in the set.

    Args:
        category_ids: the ``categories`` ids (default 1..len(classes)).
        json_name: file name of the json in ``<root>/annotations`` (default
            ``instances_<split>.json``).

    Returns:
        ``(json_file, image_root)``.
    """
    rng = np.random.default_rng(seed)
    ids = list(category_ids or range(1, len(classes) + 1))
    image_root = os.path.join(root, split)
    os.makedirs(image_root, exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    height, width = image_size
    images, annotations = [], []
    for index in range(num_images):
        pixels = rng.normal(110.0, 20.0, (height, width, 3)).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, "RGB")
        draw = ImageDraw.Draw(image)
        for obj in range(int(rng.integers(2, 5))):
            cls = (index + obj) % len(classes)
            w, h = (float(v) for v in rng.uniform(12, 40, 2))
            x0, y0 = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
            colour = tuple(int(c) for c in np.roll([230, 40, 40], cls))
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
            annotations.append(
                {"id": len(annotations) + 1, "image_id": index + 1, "category_id": ids[cls],
                 "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": 0}
            )  # fmt: skip
        file_name = f"{split}_{index:04d}.png"
        image.save(os.path.join(image_root, file_name))
        images.append({"id": index + 1, "file_name": file_name, "height": height, "width": width})
    categories = [{"id": i, "name": name} for i, name in zip(ids, classes)]
    json_file = os.path.join(root, "annotations", json_name or f"instances_{split}.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_file, image_root
