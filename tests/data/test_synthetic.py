"""The synthetic generator: determinism, COCO validity, split disjointness."""

import hashlib
import json
import os

import numpy as np
import pytest
from pycocotools.coco import COCO

from paploss.data.synthetic import (
    CLASS_NAMES,
    SPLITS,
    SyntheticSplitSpec,
    default_split_specs,
    generate_split,
    render_image,
)


def _file_digests(root):
    digests = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return digests


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    spec = SyntheticSplitSpec(split="val", num_images=12, seed=7, first_image_id=500)
    root = tmp_path_factory.mktemp("synthetic")
    return spec, root, generate_split(spec, str(root))


def test_generation_is_deterministic(small_split, tmp_path):
    spec, root, _ = small_split
    generate_split(spec, str(tmp_path))
    first, second = _file_digests(root), _file_digests(tmp_path)
    assert len(first) == spec.num_images + 1  # PNGs + JSON
    assert first == second


def test_different_seeds_give_different_images():
    a, _ = render_image(SyntheticSplitSpec("val", 1, seed=1), 0)
    b, _ = render_image(SyntheticSplitSpec("val", 1, seed=2), 0)
    assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_coco_file_is_valid_and_boxes_lie_inside_images(small_split):
    spec, root, json_path = small_split
    coco = COCO(json_path)
    assert sorted(coco.getImgIds()) == list(range(500, 500 + spec.num_images))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASS_NAMES)
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) >= spec.num_images  # at least one object per image on average
    assert len({a["id"] for a in anns}) == len(anns)
    for ann in anns:
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and 0 <= x and 0 <= y
        assert x + w <= spec.image_size and y + h <= spec.image_size
        assert 0 < ann["area"] <= w * h
        assert os.path.isfile(os.path.join(root, "val", coco.imgs[ann["image_id"]]["file_name"]))


def test_objects_vary_in_scale_aspect_and_class():
    spec = default_split_specs()["train"]
    boxes, classes = [], []
    for index in range(60):
        _, anns = render_image(spec, index)
        boxes += [a["bbox"] for a in anns]
        classes += [a["category_id"] for a in anns]
    boxes = np.array(boxes)
    sizes = np.sqrt(boxes[:, 2] * boxes[:, 3])
    aspects = boxes[:, 2] / boxes[:, 3]
    assert sizes.min() < 16 and sizes.max() > 40
    assert aspects.min() < 0.6 and aspects.max() > 1.6
    assert set(classes) == {1, 2, 3, 4}


def test_splits_are_disjoint():
    specs = default_split_specs()
    assert set(specs) == set(SPLITS)
    id_ranges = [
        set(range(s.first_image_id, s.first_image_id + s.num_images)) for s in specs.values()
    ]
    for i in range(len(id_ranges)):
        for j in range(i + 1, len(id_ranges)):
            assert not id_ranges[i] & id_ranges[j]
    # image content: the search splits never show a val image
    val = {render_image(specs["val"], k)[0].tobytes() for k in range(20)}
    for split in ("search_train", "search_val"):
        assert not val & {render_image(specs[split], k)[0].tobytes() for k in range(20)}


def test_existing_split_is_reused(small_split):
    spec, root, json_path = small_split
    before = os.stat(json_path).st_mtime_ns
    assert generate_split(spec, str(root)) == json_path
    assert os.stat(json_path).st_mtime_ns == before
    with open(json_path) as f:
        assert len(json.load(f)["images"]) == spec.num_images
