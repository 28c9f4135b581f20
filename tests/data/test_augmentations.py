"""SSD-style augmentations: colour maths, boxes that follow the image, the min-IoU crop rule,
reproducibility with a seed, the config switch and the training mapper."""

import itertools

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T

from paploss.data import ensure_dataset_files
from paploss.data.augmentations import (
    CenterKeepingCropTransform,
    Expand,
    ExpandTransform,
    MinIoURandomCrop,
    PhotometricDistortion,
    PhotometricTransform,
    build_train_augmentations,
    hsv_to_rgb,
    rgb_to_hsv,
)
from paploss.data.mapper import BoxAugmentationDatasetMapper, build_train_mapper
from paploss.engine import Trainer, setup_cfg

CONFIG = "configs/synthetic/retinanet_stock.yaml"
SSD = ["MODEL.PAPLOSS.AUGMENTATION", "ssd"]


def test_hsv_of_primary_colours_and_round_trip():
    hsv = rgb_to_hsv(np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 10, 10], [0, 0, 0]]))
    np.testing.assert_allclose(hsv[:, 0], [0, 120, 240, 0, 0])
    np.testing.assert_allclose(hsv[:, 1], [1, 1, 1, 0, 0])
    np.testing.assert_allclose(hsv[:, 2], [255, 255, 255, 10, 0])
    rgb = np.random.default_rng(0).uniform(0, 255, (64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, atol=1e-3)
    shifted = rgb_to_hsv(rgb)
    shifted[..., 0] += 360.0  # a full turn of hue changes nothing
    np.testing.assert_allclose(hsv_to_rgb(shifted), rgb, atol=1e-3)


def test_photometric_transform_steps():
    img = np.random.default_rng(1).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    same = PhotometricTransform().apply_image(img)
    assert same.dtype == np.float32
    np.testing.assert_allclose(same, img, atol=1e-3)
    np.testing.assert_array_equal(
        PhotometricTransform(brightness=20.0).apply_image(img), np.clip(img + 20.0, 0, 255)
    )
    np.testing.assert_array_equal(
        PhotometricTransform(permutation=(2, 0, 1)).apply_image(img), img[..., [2, 0, 1]]
    )
    # Hue and saturation act on the colours, not the channel order: the BGR transform of an
    # image equals the RGB transform of the channel-reversed image, reversed back.
    bgr = PhotometricTransform(saturation=0.7, hue=15.0, image_format="BGR").apply_image(img)
    rgb = PhotometricTransform(saturation=0.7, hue=15.0, image_format="RGB").apply_image(
        img[..., ::-1]
    )
    np.testing.assert_allclose(bgr, rgb[..., ::-1], atol=1e-3)
    assert np.abs(bgr - img).max() > 5
    boxes = np.array([[1.0, 2.0, 5.0, 9.0]])
    np.testing.assert_array_equal(PhotometricTransform(hue=10.0).apply_box(boxes), boxes)


def rectangles_image(size=96, fill=(7, 7, 7)):
    """An image with four non-overlapping rectangles of distinct colours and their boxes."""
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[...] = fill
    boxes = np.array([[4, 6, 30, 40], [50, 8, 90, 28], [10, 55, 40, 90], [60, 50, 80, 86]])
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)]
    for (x0, y0, x1, y1), colour in zip(boxes, colours):
        img[y0:y1, x0:x1] = colour
    return img, boxes.astype(np.float64), colours


def test_expand_moves_the_content_with_the_boxes():
    img, boxes, _ = rectangles_image()
    t = ExpandTransform(left=13, top=21, canvas_w=200, canvas_h=150, fill=(1.0, 2.0, 3.0))
    out = t.apply_image(img)
    assert out.shape == (150, 200, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (1, 2, 3) and tuple(out[-1, -1]) == (1, 2, 3)
    for box, moved in zip(boxes.astype(int), t.apply_box(boxes).astype(int)):
        np.testing.assert_array_equal(
            out[moved[1] : moved[3], moved[0] : moved[2]], img[box[1] : box[3], box[0] : box[2]]
        )


def test_centre_keeping_crop_drops_exactly_the_boxes_with_the_centre_outside():
    img, boxes, _ = rectangles_image()
    crop = CenterKeepingCropTransform(20, 0, 60, 60, 96, 96)  # patch x in [20, 80], y in [0, 60]
    out_boxes = crop.apply_box(boxes)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = (
        (centres[:, 0] > 20) & (centres[:, 0] < 80) & (centres[:, 1] > 0) & (centres[:, 1] < 60)
    )
    assert inside.tolist() == [False, True, False, False]
    assert (out_boxes[~inside] == 0).all()
    np.testing.assert_array_equal(out_boxes[inside], boxes[inside] - [20, 0, 20, 0])
    out = crop.apply_image(img)
    x0, y0, x1, y1 = np.clip(out_boxes[1], 0, 60).astype(int)
    assert (out[y0:y1, x0:x1] == (0, 250, 0)).all()


@pytest.mark.parametrize("min_iou", [0.1, 0.3, 0.5, 0.7])
def test_min_iou_crop_satisfies_its_threshold_and_keeps_a_centre(min_iou):
    img, boxes, _ = rectangles_image()
    crop = MinIoURandomCrop(modes=(min_iou,), max_rounds=3)
    for seed in range(40):
        np.random.seed(seed)
        t = crop.get_transform(img, boxes)
        if not isinstance(t, CenterKeepingCropTransform):
            continue  # no patch found: the image is kept
        patch = np.array([t.x0, t.y0, t.x0 + t.w, t.y0 + t.h], dtype=np.float64)
        inter_w = np.clip(
            np.minimum(patch[2], boxes[:, 2]) - np.maximum(patch[0], boxes[:, 0]), 0, None
        )
        inter_h = np.clip(
            np.minimum(patch[3], boxes[:, 3]) - np.maximum(patch[1], boxes[:, 1]), 0, None
        )
        inter = inter_w * inter_h
        union = t.w * t.h + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
        assert (inter / union).min() >= min_iou
        assert 0.5 <= t.h / t.w <= 2 and t.w >= 0.3 * 96 - 1 and t.h >= 0.3 * 96 - 1
        assert (t.apply_box(boxes).sum(axis=1) > 0).any()


def test_min_iou_crop_without_a_valid_patch_keeps_the_image():
    img, boxes, _ = rectangles_image()
    np.random.seed(0)  # IoU 0.95 with four boxes spread over the image is impossible
    t = MinIoURandomCrop(modes=(0.95,), max_trials=5, max_rounds=3).get_transform(img, boxes)
    assert isinstance(t, T.NoOpTransform)
    np.random.seed(0)
    t = MinIoURandomCrop(modes=(None,)).get_transform(img, boxes)
    assert isinstance(t, T.NoOpTransform)


def ssd_cfg(*opts):
    return setup_cfg(CONFIG, [*SSD, "INPUT.MIN_SIZE_TRAIN", "(96,)", *opts])


def augment(augmentations, img, boxes, seed):
    np.random.seed(seed)
    aug_input = T.AugInput(img, boxes=boxes)
    transforms = T.AugmentationList(augmentations)(aug_input)
    return aug_input.image, aug_input.boxes, transforms


@pytest.mark.parametrize("seed", range(12))
def test_ssd_pipeline_boxes_follow_the_image(seed):
    """Without the colour changes, each kept box must frame the visible part of its coloured
    rectangle in the augmented image (up to the blur of the bilinear resize)."""
    augmentations = [
        a for a in build_train_augmentations(ssd_cfg()) if not isinstance(a, PhotometricDistortion)
    ]
    img, boxes, colours = rectangles_image()
    out, out_boxes, _ = augment(augmentations, img, boxes, seed)
    assert out.shape[:2] == (96, 96)
    kept = 0
    for box, colour in zip(out_boxes, colours):
        box = np.clip(box, 0, 96)
        if (box[2:] - box[:2]).min() <= 1e-5:
            continue  # dropped by the crop (or cut to nothing)
        kept += 1
        mask = np.abs(out.astype(np.float64) - colour).max(axis=-1) < 60
        ys, xs = np.nonzero(mask)
        assert len(xs), (seed, box)
        framed = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
        np.testing.assert_allclose(framed, box, atol=2.5, err_msg=f"seed {seed}")
    assert kept >= 1


def test_ssd_pipeline_is_deterministic_with_a_seed():
    augmentations = build_train_augmentations(ssd_cfg())
    img, boxes, _ = rectangles_image()
    runs = [augment(augmentations, img, boxes, seed) for seed in (3, 3, 4)]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert runs[0][0].dtype == np.float32 and runs[0][0].shape == (96, 96, 3)
    assert not np.array_equal(runs[0][0], runs[2][0])


def test_build_train_augmentations_by_config():
    default = build_train_augmentations(setup_cfg(CONFIG, []))
    assert [type(a).__name__ for a in default] == ["ResizeShortestEdge", "RandomFlip"]
    ssd = build_train_augmentations(ssd_cfg())
    assert [type(a) for a in ssd][:3] == [PhotometricDistortion, Expand, MinIoURandomCrop]
    assert isinstance(ssd[3], T.Resize) and ssd[3].shape == (96, 96)
    assert ssd[1].fill == tuple(setup_cfg(CONFIG, []).MODEL.PIXEL_MEAN)


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.PAPLOSS.AUGMENTATION", "mosaic"], "MODEL.PAPLOSS.AUGMENTATION must be one of"),
        ([*SSD, "INPUT.MIN_SIZE_TRAIN", "(96, 128)"], "INPUT.MIN_SIZE_TRAIN"),
        ([*SSD, "INPUT.FORMAT", "L"], "INPUT.FORMAT"),
        ([*SSD, "INPUT.CROP.ENABLED", "True"], "INPUT.CROP.ENABLED"),
    ],
)
def test_bad_augmentation_settings_are_named(opts, message):
    with pytest.raises(ValueError, match=message):
        build_train_augmentations(setup_cfg(CONFIG, opts))
    with pytest.raises(ValueError, match=message):
        build_train_mapper(setup_cfg(CONFIG, opts))


def test_mapper_gives_model_inputs_with_consistent_boxes():
    cfg = setup_cfg(CONFIG, SSD)
    assert build_train_mapper(setup_cfg(CONFIG, [])) is None  # Detectron2's DatasetMapper
    mapper = build_train_mapper(cfg)
    assert isinstance(mapper, BoxAugmentationDatasetMapper)
    ensure_dataset_files("synthetic_shapes_search_val")
    dicts = DatasetCatalog.get("synthetic_shapes_search_val")[:6]
    outputs = []
    for seed in (0, 0):
        np.random.seed(seed)
        outputs.append([mapper(d) for d in dicts])
    for a, b, d in zip(*outputs, dicts):
        assert a["image"].shape == (3, 128, 128) and a["image"].dtype == torch.float32
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)
        boxes = a["instances"].gt_boxes.tensor
        assert bool((boxes >= 0).all()) and bool((boxes <= 128).all())
        assert bool(a["instances"].gt_boxes.nonempty().all())
        original = {x["category_id"] for x in d["annotations"]}
        assert set(a["instances"].gt_classes.tolist()) <= original
        assert "annotations" in d  # the dataset's own dicts are not modified


def test_trainer_loader_uses_the_ssd_mapper():
    cfg = setup_cfg(CONFIG, [*SSD, "SOLVER.IMS_PER_BATCH", "2"])
    batch = next(itertools.islice(iter(Trainer.build_train_loader(cfg)), 1))
    assert len(batch) == 2
    assert all(x["image"].dtype == torch.float32 for x in batch)  # photometric output
