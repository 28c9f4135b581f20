"""tools/analyze_anchors.py: coverage table on the synthetic set, checked against a readable
reference of Detectron2's anchor grid; suggestions that load as config overrides."""

import importlib.util
import math
import re
import shlex

import numpy as np
import pytest
from detectron2.data import DatasetCatalog

from paploss.engine import load_config, setup_cfg

spec = importlib.util.spec_from_file_location("analyze_anchors", "tools/analyze_anchors.py")
analyze_anchors = importlib.util.module_from_spec(spec)
spec.loader.exec_module(analyze_anchors)

CONFIGS = {
    "RPN": "configs/synthetic/pap_faster_rcnn_identity.yaml",
    "RETINANET": "configs/synthetic/pap_retinanet_identity.yaml",
}


@pytest.mark.parametrize("head", ["RPN", "RETINANET"])
def test_table_on_the_synthetic_set(head, capsys, tmp_path):
    plot = tmp_path / "anchors.png"
    code = analyze_anchors.main(
        ["--config-file", CONFIGS[head], "--max-images", "60", "--plot", str(plot)]
    )
    out = capsys.readouterr().out
    assert code == 0
    lower, positive = (0.3, 0.7) if head == "RPN" else (0.4, 0.5)
    assert f"head: {head} on " in out
    assert f"IoU >= {positive} %" in out and f"IoU >= {lower} %" in out
    number = r"\s*([\d.]+)\s*\|"
    rows = re.findall(r"^\|\s*(\d+-\d+|all)\s*\|" + 5 * number, out, re.M)
    bins, total = rows[:-1], rows[-1]
    assert total[0] == "all" and sum(int(r[1]) for r in bins) == int(total[1]) > 100
    assert sum(float(r[2]) for r in bins) == pytest.approx(100.0, abs=0.5)
    for _, _, _, median_iou, at_positive, at_lower in rows:
        assert 0.0 <= float(median_iou) <= 1.0
        assert 0.0 <= float(at_positive) <= float(at_lower) <= 100.0
    assert re.search(r"^\| suggested \|", out, re.M)
    suggested = out.split("suggested (")[1].splitlines()[1].strip()
    cfg = load_config(CONFIGS[head], shlex.split(suggested))  # the suggestion is a valid config
    assert cfg.INPUT.MIN_SIZE_TEST >= 128
    assert plot.stat().st_size > 10_000


def _reference_anchors(cfg, head, height, width):
    """Every anchor of an image, written out as Detectron2 documents its grid: centres at
    ``(i + OFFSET) x stride`` of the padded input, sizes x aspect ratios (h / w) per level."""
    div = head.size_divisibility
    padded_h, padded_w = math.ceil(height / div) * div, math.ceil(width / div) * div
    offset = cfg.MODEL.ANCHOR_GENERATOR.OFFSET
    anchors = []
    for level, stride in enumerate(head.strides):
        for i in range(math.ceil(padded_h / stride)):
            for j in range(math.ceil(padded_w / stride)):
                cx, cy = (j + offset) * stride, (i + offset) * stride
                for size in cfg.MODEL.ANCHOR_GENERATOR.SIZES[level]:
                    for ratio in cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0]:
                        w = math.sqrt(size * size / ratio)
                        h = ratio * w
                        anchors.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return np.array(anchors)


def _reference_best_iou(boxes, anchors):
    best = []
    for x0, y0, x1, y1 in boxes:
        iw = np.clip(np.minimum(x1, anchors[:, 2]) - np.maximum(x0, anchors[:, 0]), 0, None)
        ih = np.clip(np.minimum(y1, anchors[:, 3]) - np.maximum(y0, anchors[:, 1]), 0, None)
        inter = iw * ih
        union = (x1 - x0) * (y1 - y0) + np.prod(anchors[:, 2:] - anchors[:, :2], axis=1) - inter
        best.append((inter / union).max())
    return np.array(best)


@pytest.mark.parametrize("head_name", ["RPN", "RETINANET"])
def test_best_iou_matches_a_readable_reference(head_name):
    cfg = setup_cfg(CONFIGS[head_name], ["INPUT.MIN_SIZE_TEST", 160, "INPUT.MAX_SIZE_TEST", 160])
    head = analyze_anchors.anchor_head(cfg)
    dicts = DatasetCatalog.get("synthetic_shapes_search_val")[:12]
    images = analyze_anchors.input_frame_boxes(cfg, dicts, train=False)
    assert images[0][0] == (160, 160)  # the test resize took the 128 px images to 160 px
    expected = np.concatenate(
        [_reference_best_iou(boxes, _reference_anchors(cfg, head, *hw)) for hw, boxes, _ in images]
    )
    every_anchor = analyze_anchors.coverage(cfg, head, images)
    nearest_cell = analyze_anchors.coverage(cfg, head, images, all_anchors=False)
    np.testing.assert_allclose(every_anchor.best_iou, expected, atol=1e-5)
    np.testing.assert_allclose(nearest_cell.best_iou, expected, atol=1e-5)
    n_anchors = len(_reference_anchors(cfg, head, 160, 160))
    assert every_anchor.anchors_per_image == nearest_cell.anchors_per_image == n_anchors


def test_errors_are_one_line(capsys):
    code = analyze_anchors.main(["--config-file", CONFIGS["RPN"], "--dataset", "no_such_set"])
    assert code == 2
    assert capsys.readouterr().err == "error: --dataset 'no_such_set' is not a registered dataset\n"
    code = analyze_anchors.main(
        ["--config-file", CONFIGS["RPN"], "MODEL.PROPOSAL_GENERATOR.NAME", "PrecomputedProposals"]
    )
    assert code == 2
    assert capsys.readouterr().err == (
        "error: MODEL.META_ARCHITECTURE 'GeneralizedRCNN' (proposal generator "
        "'PrecomputedProposals') matches no anchors to ground truth\n"
    )
