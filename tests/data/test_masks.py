"""Instance masks: the synthetic set's RLE masks, COCO mask AP on them, user datasets with masks."""

import copy
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from paploss.data import register_coco_dataset
from paploss.data.synthetic import SyntheticSplitSpec, generate_split, render_image
from paploss.engine import setup_cfg


@pytest.fixture(scope="module")
def masked_split(tmp_path_factory):
    spec = SyntheticSplitSpec(split="val", num_images=6, seed=11, first_image_id=1)
    root = tmp_path_factory.mktemp("masks")
    return spec, root, generate_split(spec, str(root))


def test_masks_are_the_visible_pixels_of_each_object(masked_split):
    spec, _, json_path = masked_split
    coco = COCO(json_path)
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        masks = np.stack([coco.annToMask(a) for a in anns])
        assert masks.shape[1:] == (spec.image_size, spec.image_size)
        # occluded parts are cut away: no pixel belongs to two objects
        assert masks.sum(axis=0).max() <= 1
        for ann, mask in zip(anns, masks):
            assert mask.sum() == ann["area"]
            ys, xs = np.nonzero(mask)
            x0, y0 = xs.min(), ys.min()
            assert ann["bbox"] == [x0, y0, xs.max() + 1 - x0, ys.max() + 1 - y0]


def test_rendered_masks_match_the_written_ones(masked_split):
    spec, _, json_path = masked_split
    with open(json_path) as f:
        written = [a["segmentation"] for a in json.load(f)["annotations"]]
    rendered = [a["segmentation"] for k in range(spec.num_images) for a in render_image(spec, k)[1]]
    assert written == rendered and all(isinstance(s["counts"], str) for s in written)


def test_ground_truth_as_detections_has_mask_ap_one(masked_split):
    """pycocotools' segm evaluation reads the RLE masks: the ground truth scores AP 1."""
    _, _, json_path = masked_split
    coco = COCO(json_path)
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
         "segmentation": a["segmentation"]}
        for a in coco.loadAnns(coco.getAnnIds())
    ]  # fmt: skip
    evaluation = COCOeval(coco, coco.loadRes(detections), "segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def _with_polygon_masks(json_path, out_path):
    """The same file with each object's mask given as COCO polygons (its box's outline)."""
    with open(json_path) as f:
        content = json.load(f)
    for ann in content["annotations"]:
        x, y, w, h = ann["bbox"]
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    with open(out_path, "w") as f:
        json.dump(content, f)


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_user_dataset_with_polygon_masks_trains_a_ranking_mask_rcnn(
    masked_split, tmp_path, mask_format
):
    spec, root, json_path = masked_split
    polygon_json = str(tmp_path / "polygons.json")
    _with_polygon_masks(json_path, polygon_json)
    name = f"user_polygon_masks_{mask_format}"
    register_coco_dataset(name, polygon_json, str(root / spec.split))
    cfg = setup_cfg(
        "configs/synthetic/rs_mask_rcnn.yaml",
        ["INPUT.MASK_FORMAT", mask_format, "DATASETS.TRAIN", f"('{name}',)"],
    )
    mapper = DatasetMapper(cfg, is_train=True)
    batch = [mapper(copy.deepcopy(d)) for d in DatasetCatalog.get(name)[:2]]
    masks = batch[0]["instances"].gt_masks
    assert len(masks) == len(batch[0]["instances"]) > 0
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with EventStorage(0):
        losses = model(batch)
    assert "loss_mask_dice" in losses
    assert all(torch.isfinite(v) and v.item() > 0 for v in losses.values())


def test_rle_counts_are_pycocotools_compressed_rle():
    _, anns = render_image(SyntheticSplitSpec("val", 1, seed=5), 0)
    for ann in anns:
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode("ascii"))
        assert mask_util.area(rle) == ann["area"]
