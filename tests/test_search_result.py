"""``experiments/search_result.py``: the loss table's detector of a searched model (Deformable
DETR included) and the verdict against the detector's identity-PAP row (no training here)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT / "projects" / "DeformableDETR"
for folder in (ROOT / "experiments", PROJECT):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import deformable_detr  # noqa: E402, F401  (registers PAPDeformableDETR's config keys)
import search_result  # noqa: E402

from paploss.engine import load_config  # noqa: E402


@pytest.mark.parametrize(
    "config, detector",
    [
        (ROOT / "configs/synthetic/pap_retinanet_searched.yaml", "retinanet"),
        (ROOT / "configs/synthetic/pap_faster_rcnn_identity.yaml", "faster_rcnn"),
        (ROOT / "configs/synthetic/pap_mask_rcnn.yaml", "mask_rcnn"),
        (PROJECT / "configs/deformable_detr_tiny_pap.yaml", "deformable_detr"),
    ],
)
def test_the_searched_model_names_its_loss_table_detector(tmp_path, config, detector):
    (tmp_path / "model_config.yaml").write_text(load_config(str(config)).dump())
    assert search_result.searched_detector(str(tmp_path)) == detector


def _row(name, mean, std):
    return {"group": "main", "row": name, "seeds": 3, "AP": {"mean": mean, "std": std}}


def test_the_verdict_compares_with_the_detectors_identity_row():
    summary = [
        _row("stock (focal + L1 + GIoU)", 19.0, 0.5),
        _row("pap identity + L1", 19.5, 0.4),
        _row("rs + L1", 27.0, 1.0),
        _row("searched (best)", 28.0, 0.6),
    ]
    first, second = search_result.verdict(summary, "searched (best)")
    assert first.startswith("searched 28.00 vs pap identity + L1 19.50: +8.50 AP (more than")
    assert second == "searched vs the best other row (rs + L1, 27.00): +1.00 AP"


def test_without_an_identity_row_there_is_no_verdict():
    summary = [_row("stock", 19.0, 0.5), _row("searched (best)", 28.0, 0.6)]
    assert search_result.verdict(summary, "searched (best)") == [
        "verdict: not enough finished trainings to compare"
    ]
