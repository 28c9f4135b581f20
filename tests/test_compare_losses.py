"""``experiments/compare_losses.py``, the loss table: the Mask R-CNN and Deformable DETR rows
(configs that merge, one optimiser and schedule per detector, the right training script, mask AP
read and tabled) and one short training of each through the driver."""

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Dict, List

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT / "projects" / "DeformableDETR"
for folder in (ROOT / "experiments", PROJECT):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import compare_losses  # noqa: E402
import deformable_detr  # noqa: E402, F401  (registers PAPDeformableDETR's config keys)

from paploss.engine import load_config  # noqa: E402

#: Config keys that make a detector's optimiser and schedule in the table.
OPTIMISER_KEYS = (
    "SOLVER.BASE_LR",
    "SOLVER.MOMENTUM",
    "SOLVER.WEIGHT_DECAY",
    "SOLVER.WARMUP_ITERS",
    "SOLVER.WARMUP_FACTOR",
    "SOLVER.MAX_ITER",
    "SOLVER.STEPS",
    "SOLVER.IMS_PER_BATCH",
    "SOLVER.CLIP_GRADIENTS.ENABLED",
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE",
    "DATASETS.TRAIN",
    "DATASETS.TEST",
    "INPUT.MIN_SIZE_TRAIN",
)
DETR_OPTIMISER_KEYS = (
    "MODEL.DEFORMABLE_DETR.OPTIMIZER.BACKBONE_LR_FACTOR",
    "MODEL.DEFORMABLE_DETR.OPTIMIZER.LINEAR_PROJ_LR_FACTOR",
    "MODEL.DEFORMABLE_DETR.OPTIMIZER.CLIP_MAX_NORM",
)


def _args(output: str = "out", **kwargs) -> argparse.Namespace:
    values = dict(
        output=output, rows="all", match=None, seeds=1, first_seed=0, clip="on", device=None,
        opts=[], test_set="synthetic_shapes_val", table_rows=compare_losses.ROWS,
    )  # fmt: skip
    values.update(kwargs)
    return argparse.Namespace(**values)


def _jobs(detector: str, clip: str = "on") -> List["compare_losses.Job"]:
    args = _args(detectors=[detector], clip=clip)
    iterations = compare_losses.parse_iterations([])
    return compare_losses.build_jobs(args, iterations, compare_losses.parse_batch([]))


def _merged(job, args) -> Dict[str, object]:
    """The config a job trains (its file and every override of its command), as key: value."""
    command = compare_losses.training_command(job, args)
    config = command[command.index("--config-file") + 1]
    opts = command[command.index("--config-file") + 2 :]
    cfg = load_config(os.path.join(str(ROOT), config), opts)
    keys = OPTIMISER_KEYS + (DETR_OPTIMISER_KEYS if job.row.detector == "deformable_detr" else ())
    merged = {}
    for key in keys:
        node = cfg
        for part in key.split("."):
            node = node[part]
        merged[key] = node
    return merged


def test_the_table_has_deformable_detr_and_mask_rcnn_rows():
    rows = {(row.detector, row.name) for row in compare_losses.ROWS if row.group == "main"}
    detr = {name for detector, name in rows if detector == "deformable_detr"}
    assert detr == {
        "stock (focal + L1 + GIoU)",
        "pap identity + L1",
        "pap published (RetinaNet's functions, λ 4.12) + L1",
        "rs + L1",
    }
    mask = {name for detector, name in rows if detector == "mask_rcnn"}
    assert len(mask) == 4 and any("mask_iou" in name for name in mask)
    # the rows of the other detectors keep their places (stored results carry the order)
    detectors = [row.detector for row in compare_losses.ROWS]
    assert detectors[-8:] == ["mask_rcnn"] * 4 + ["deformable_detr"] * 4


@pytest.mark.parametrize("detector", ["mask_rcnn", "deformable_detr"])
@pytest.mark.parametrize("clip", ["on", "off"])
def test_rows_of_a_detector_merge_and_share_one_optimiser_and_schedule(detector, clip):
    """Every row's config exists and merges with the table's overrides, and every row of the
    detector trains with the same optimiser, clipping, schedule, batch and data."""
    args = _args(clip=clip)
    jobs = _jobs(detector, clip)
    assert len(jobs) == 4
    merged = [_merged(job, args) for job in jobs]
    for job, values in zip(jobs[1:], merged[1:]):
        differing = {k: (merged[0][k], v) for k, v in values.items() if merged[0][k] != v}
        assert not differing, (job.row.name, differing)
    values = merged[0]
    if detector == "deformable_detr":  # the project's tiny schedule and published clipping
        assert values["SOLVER.MAX_ITER"] == 2000 and values["SOLVER.IMS_PER_BATCH"] == 4
        assert tuple(values["SOLVER.STEPS"]) == (1600,)
        clip_max_norm = values["MODEL.DEFORMABLE_DETR.OPTIMIZER.CLIP_MAX_NORM"]
        assert clip_max_norm == (0.1 if clip == "on" else 0.0)
        assert not values["SOLVER.CLIP_GRADIENTS.ENABLED"]  # the project's optimizer refuses it
    else:  # the Faster R-CNN rows' schedule
        frcnn = _merged(_jobs("faster_rcnn", clip)[0], args)
        assert values == frcnn
        assert values["SOLVER.MAX_ITER"] == 300 and values["SOLVER.IMS_PER_BATCH"] == 8
        assert values["SOLVER.CLIP_GRADIENTS.ENABLED"] == (clip == "on")


def test_each_detector_trains_with_its_script():
    args = _args()
    script = {
        detector: compare_losses.training_command(_jobs(detector)[0], args)[1]
        for detector in compare_losses.DETECTORS
    }
    assert script["deformable_detr"] == str(PROJECT / "train_net.py")
    for detector in ("retinanet", "faster_rcnn", "mask_rcnn"):
        assert script[detector] == str(ROOT / "tools" / "train_net.py")


def test_batch_and_iterations_per_detector():
    assert compare_losses.parse_batch(["deformable_detr=2"])["deformable_detr"] == 2
    assert set(compare_losses.parse_batch(["6"]).values()) == {6}
    assert compare_losses.parse_iterations([])["mask_rcnn"] == 300
    with pytest.raises(SystemExit, match="--batch: unknown detector 'detr'"):
        compare_losses.parse_batch(["detr=2"])


def _write_metrics(folder: Path, masks: bool, ap: float) -> None:
    records = [{"iteration": i, "time": 0.5, "total_loss": 1.0} for i in (19, 39)]
    final = {"iteration": 39, "bbox/AP": ap, "bbox/AP50": 2 * ap, "bbox/AP75": ap / 2}
    if masks:
        final.update({"segm/AP": ap + 1, "segm/AP50": 2 * ap, "segm/AP75": ap})
    records.append(final)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_mask_ap_is_read_and_tabled_for_mask_rcnn_only(tmp_path):
    _write_metrics(tmp_path / "mask", True, 10.0)
    _write_metrics(tmp_path / "detr", False, 20.0)
    mask = compare_losses._read_metrics(str(tmp_path / "mask"), masks=True)
    assert mask["mask AP"] == 11.0 and mask["AP"] == 10.0 and mask["s/iter"] == 0.5
    with pytest.raises(ValueError, match="segm/AP"):  # a Mask R-CNN run without mask AP
        compare_losses._read_metrics(str(tmp_path / "detr"), masks=True)
    detr = compare_losses._read_metrics(str(tmp_path / "detr"), masks=False)
    assert "mask AP" not in detr
    records = [
        {"detector": d, "row": "r", "order": i, "group": "main", "clip": True, "seed": 0,
         "iterations": 10, "status": "ok", **metrics}
        for i, (d, metrics) in enumerate([("mask_rcnn", mask), ("deformable_detr", detr)])
    ]  # fmt: skip
    table = compare_losses.markdown_table(compare_losses.summarise(records))
    assert "| mask AP |" in table
    assert "| Mask R-CNN | r | 10.00 ± 0.00 | 20.00 ± 0.00 | 5.00 ± 0.00 | 11.00 ± 0.00 |" in table
    assert "| Deformable DETR | r | 20.00 ± 0.00 | 40.00 ± 0.00 | 10.00 ± 0.00 | – |" in table


@pytest.mark.slow
def test_one_deformable_detr_and_one_mask_rcnn_row_train_through_the_driver(tmp_path):
    """A few iterations of the PAP rows of both detectors, evaluated on the small search split
    (10 detections per image, to keep the mask evaluation short)."""
    summary = compare_losses.main(
        ["--detectors", "deformable_detr", "mask_rcnn", "--seeds", "1", "--jobs", "2",
         "--match", r"pap identity \+ L1|pap identity, box quality", "--iterations", "10",
         "--batch", "2", "--test-set", "synthetic_shapes_search_val",
         "--output", str(tmp_path), "--opts", "TEST.DETECTIONS_PER_IMAGE", "10"]
    )  # fmt: skip
    by_detector = {entry["detector"]: entry for entry in summary}
    assert set(by_detector) == {"deformable_detr", "mask_rcnn"}
    for detector, entry in by_detector.items():
        assert entry["seeds"] == [0] and not entry["not_ok"], entry
        assert math.isfinite(entry["AP"]["mean"])
    assert math.isfinite(by_detector["mask_rcnn"]["mask AP"]["mean"])
    assert "mask AP" not in by_detector["deformable_detr"]
    table = (tmp_path / "table.md").read_text()
    assert "| Deformable DETR | pap identity + L1 |" in table and "| Mask R-CNN |" in table
    record = json.loads(
        next((tmp_path / "runs").rglob("pap_identity_l1/seed0/result.json")).read_text()
    )
    assert record["command"][0].endswith(os.path.join("DeformableDETR", "train_net.py"))
    assert record["batch"] == 2
