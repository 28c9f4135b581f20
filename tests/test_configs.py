"""Every shipped Detectron2 config loads and builds a model; published parameters match."""

import glob
import os

import pytest
import torch
from detectron2.modeling import build_model

from paploss.data.augmentations import build_train_augmentations
from paploss.engine import load_config
from paploss.losses import published_grad_scale, published_knots

CONFIGS = sorted(
    path
    for path in glob.glob("configs/**/*.yaml", recursive=True)
    if not path.startswith(os.path.join("configs", "search"))
)


def test_configs_are_found():
    assert len(CONFIGS) >= 12
    assert "configs/coco/pap_retinanet_R50_FPN_512.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS)
def test_config_loads_and_builds_a_model(path):
    cfg = load_config(path, ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0
    if "pap" in os.path.basename(path):
        assert "PAP" in cfg.MODEL.META_ARCHITECTURE + cfg.MODEL.PROPOSAL_GENERATOR.NAME


@pytest.mark.parametrize(
    "path, head, name",
    [
        ("configs/coco/pap_retinanet_R50_FPN_512.yaml", "RETINANET", "retinanet"),
        ("configs/synthetic/pap_retinanet_published.yaml", "RETINANET", "retinanet"),
        ("configs/coco/pap_faster_rcnn_R50_FPN_512.yaml", "RPN", "faster_rcnn_rpn"),
        ("configs/coco/pap_faster_rcnn_R50_FPN_512.yaml", "ROI_HEADS", "faster_rcnn_roi"),
        ("configs/synthetic/pap_faster_rcnn_published.yaml", "RPN", "faster_rcnn_rpn"),
        ("configs/synthetic/pap_faster_rcnn_published.yaml", "ROI_HEADS", "faster_rcnn_roi"),
        ("configs/coco/pap_mask_rcnn_R50_FPN_1x.yaml", "RPN", "faster_rcnn_rpn"),
        ("configs/coco/pap_mask_rcnn_R50_FPN_1x.yaml", "ROI_HEADS", "faster_rcnn_roi"),
    ],
)
def test_published_configs_carry_the_published_parameters(path, head, name):
    node = load_config(path).MODEL.PAPLOSS[head]
    expected = published_knots(name)
    for function, knots in expected.items():
        torch.testing.assert_close(
            torch.tensor(node.FUNCTIONS[function], dtype=torch.float64),
            torch.tensor(knots, dtype=torch.float64),
            atol=1e-4,
            rtol=0,
        )
    assert node.GRAD_SCALE == pytest.approx(published_grad_scale(name), abs=1e-4)


@pytest.mark.parametrize("path", sorted(glob.glob("configs/coco/*_512*.yaml")))
def test_coco_configs_follow_the_published_512_protocol(path):
    cfg = load_config(path)
    augmentations = build_train_augmentations(cfg)
    assert cfg.MODEL.PAPLOSS.AUGMENTATION == "ssd" and len(augmentations) == 5
    assert augmentations[3].shape == (512, 512)
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (500, 833)
    assert cfg.SOLVER.IMS_PER_BATCH == 64 and cfg.SOLVER.WARMUP_ITERS == 500
    assert not cfg.SOLVER.CLIP_GRADIENTS.ENABLED
    iterations_per_epoch = cfg.SOLVER.MAX_ITER / 100
    epochs = [step / iterations_per_epoch for step in cfg.SOLVER.STEPS]
    retinanet = "retinanet" in path
    assert epochs == ([60, 80] if retinanet else [75, 95])
    pap = "pap" in os.path.basename(path)
    assert cfg.MODEL.PAPLOSS.TOPK == (100000 if pap else 0)
    assert cfg.SOLVER.BASE_LR == (0.016 if retinanet else 0.024 if pap else 0.04)


def _flat(node, prefix=""):
    """A config as ``{dotted key: value}``."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


#: What a synthetic Mask R-CNN config adds to its Faster R-CNN: the mask branch and its input.
_MASK_KEYS = ("MODEL.MASK_ON", "INPUT.MASK_FORMAT", "MODEL.ROI_MASK_HEAD.", "OUTPUT_DIR")


@pytest.mark.parametrize(
    "mask_config, quality",
    [("pap_mask_rcnn", "giou"), ("pap_mask_rcnn_mask_iou", "mask_iou")],
)
def test_pap_mask_rcnn_follows_the_pap_faster_rcnn_recipe(mask_config, quality):
    """The merged PAP Mask R-CNN configs differ from pap_faster_rcnn_identity.yaml only by the
    mask branch (and the mask-aware quality): the same RPN anchor sampling and box deltas, RoIs
    ranked without ground truth added, exact j-sums, and no gradient clipping of their own (the
    loss table sets it for every row)."""
    frcnn = _flat(load_config("configs/synthetic/pap_faster_rcnn_identity.yaml"))
    mask = _flat(load_config(f"configs/synthetic/{mask_config}.yaml"))
    differing = {
        key
        for key in set(frcnn) | set(mask)
        if frcnn.get(key) != mask.get(key) and not key.startswith(_MASK_KEYS)
    }
    expected = set() if quality == "giou" else {"MODEL.PAPLOSS.QUALITY"}
    assert differing == expected
    assert mask["MODEL.PAPLOSS.QUALITY"] == quality
    assert not mask["SOLVER.CLIP_GRADIENTS.ENABLED"]
    assert mask["MODEL.MASK_ON"]


@pytest.mark.parametrize("path", sorted(glob.glob("configs/synthetic/*.yaml")))
def test_no_synthetic_config_clips_gradients_by_itself(path):
    """One optimiser for every synthetic config (Base-Synthetic.yaml): the loss table turns
    clipping on or off for all of its rows (``experiments/compare_losses.py --clip``)."""
    cfg = load_config(path)
    assert not cfg.SOLVER.CLIP_GRADIENTS.ENABLED
    assert (cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE, cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE) == (
        "norm",
        0.3,
    )
