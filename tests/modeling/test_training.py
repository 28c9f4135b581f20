"""PAP models train: the loss falls under the config's own optimizer, and a short training on the
synthetic set reaches a non-zero COCO AP on held-out images."""

import json
import os

import pytest
import torch
from detectron2.utils.events import EventStorage

from paploss.engine import Trainer, setup_cfg, train_and_evaluate

from .utils import build_train_model, make_cfg

PAP_CONFIGS = [
    "configs/synthetic/pap_retinanet_identity.yaml",
    "configs/synthetic/pap_retinanet_published.yaml",
    "configs/synthetic/pap_faster_rcnn_identity.yaml",
    "configs/synthetic/pap_faster_rcnn_published.yaml",
]


#: Steps of the fixed-batch check. Identity functions without gradient clipping move the
#: RetinaNet ranking only after ~20 steps from a cold start (the loss stays at ~0.999, then falls).
FIXED_BATCH_STEPS = {"configs/synthetic/pap_retinanet_identity.yaml": 80}


@pytest.mark.parametrize("config_file", PAP_CONFIGS)
def test_loss_falls_on_a_fixed_batch(synthetic_batch, config_file):
    """40 steps of the config's optimizer on one batch of four images, without warm-up.

    Faster R-CNN adds the ground-truth boxes to the proposals here: the published recipe's
    R-CNN head (no ground-truth proposals) has only 0-2 positives in a batch this early in
    training, a set that changes from step to step, so its loss is not comparable between steps.
    """
    opts = ["SOLVER.WARMUP_ITERS", "0"]
    if "faster_rcnn" in config_file:
        opts += ["MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", "True"]
    cfg = make_cfg(config_file, *opts)
    model = build_train_model(config_file, *opts)
    optimizer = Trainer.build_optimizer(cfg, model)
    totals = []
    with EventStorage(0) as storage:
        for iteration in range(FIXED_BATCH_STEPS.get(config_file, 40)):
            storage.iter = iteration
            total = sum(model(synthetic_batch).values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            totals.append(total.item())
    first, last = sum(totals[:5]) / 5, sum(totals[-5:]) / 5
    assert all(torch.isfinite(torch.tensor(totals)))
    assert last < 0.95 * first, totals


@pytest.mark.parametrize(
    "config_file, iterations, opts",
    [
        # The published RetinaNet functions learn much faster than the identity ones, whose AP is
        # still 0 after a few hundred iterations at batch 4.
        ("configs/synthetic/pap_retinanet_published.yaml", 200, []),
        # With gradient clipping: without it, the published recipe (all RoIs, no ground-truth
        # proposals) learns next to nothing in 150 iterations from scratch (seed 0: 0.0007 AP,
        # with clipping 5.75 AP; stock Faster R-CNN 4.89 / 5.71).
        ("configs/synthetic/pap_faster_rcnn_identity.yaml", 150,
         ["SOLVER.CLIP_GRADIENTS.ENABLED", True]),
    ],
)  # fmt: skip
def test_short_training_reaches_a_non_zero_ap(tmp_path, config_file, iterations, opts):
    cfg = setup_cfg(
        config_file,
        [
            "SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", iterations, "SOLVER.WARMUP_ITERS", 20,
            "SOLVER.STEPS", (), "SOLVER.CHECKPOINT_PERIOD", 10 * iterations, "SEED", 0,
            "DATASETS.TEST", ("synthetic_shapes_search_val",),
            "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0, "OUTPUT_DIR", str(tmp_path), *opts,
        ],
    )  # fmt: skip
    results = train_and_evaluate(cfg)
    assert results["bbox"]["AP"] > 0 and results["bbox"]["AP50"] > 0.5, results
    with open(os.path.join(str(tmp_path), "metrics.json")) as f:
        records = [json.loads(line) for line in f]
    losses = [r["total_loss"] for r in records if "total_loss" in r]
    assert len(losses) >= 5 and all(torch.isfinite(torch.tensor(losses)))
