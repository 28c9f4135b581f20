"""The example project trains a PAP Faster R-CNN through its own script, by config alone."""

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
