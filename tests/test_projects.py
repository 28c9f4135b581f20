"""The example projects: a PAP Faster R-CNN trained through its own script by config alone, and a
head loss registered from outside the package."""

import json
import math
import os
import subprocess
import sys


def test_example_project_trains_pap_heads_by_config(tmp_path):
    result = subprocess.run(
        [sys.executable, "projects/PAPByConfig/train.py",
         "--config-file", "projects/PAPByConfig/configs/pap_faster_rcnn.yaml",
         "SOLVER.MAX_ITER", "6", "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "()",
         "OUTPUT_DIR", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "PAPRPN" in log and "PAPFastRCNNOutputLayers" in log  # the model printed at start
    assert "loss_rpn_pap" in log and "loss_roi_pap" in log
    assert "copypaste: AP,AP50,AP75" in log
    assert os.path.isfile(tmp_path / "model_final.pth")


def test_custom_head_loss_project_registers_a_loss_by_name_and_trains_with_it(tmp_path):
    """projects/CustomHeadLoss registers "focal_giou" from outside the package; the config names
    it in MODEL.PAPLOSS.LOSS and both the RPN and the ROI head train with it."""
    project = "projects/CustomHeadLoss"
    result = subprocess.run(
        [sys.executable, f"{project}/train.py",
         "--config-file", f"{project}/configs/focal_giou_faster_rcnn.yaml",
         "SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "()",
         "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert log.count("(head_loss): FocalGIoUHeadLoss()") == 2  # the RPN's and the ROI head's
    assert "loss_rpn_focal_giou" in log and "loss_roi_focal_giou" in log
    metrics = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    last = metrics[-1]
    assert last["iteration"] == 3
    for head in ("rpn", "roi_heads"):
        assert math.isfinite(last[f"{head}/focal_cls"]) and last[f"{head}/focal_cls"] > 0
        assert math.isfinite(last[f"{head}/focal_box"])
    assert os.path.isfile(tmp_path / "model_final.pth")
