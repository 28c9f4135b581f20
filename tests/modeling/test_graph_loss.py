"""LOSS "graph": the Fast R-CNN head trained with loss graphs read from config."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from fvcore.nn import giou_loss

from paploss.engine import Trainer, load_config
from paploss.losses.graph import CE_EXPRESSION, GIOU_EXPRESSION
from paploss.modeling import record_rankings
from paploss.modeling.graph_loss import GraphHeadLoss

from .utils import build_train_model, make_cfg

CONFIG = "configs/synthetic/graph_faster_rcnn.yaml"


def test_config_defaults_and_shipped_config_are_the_reference_expressions():
    cfg = load_config(CONFIG)
    assert cfg.MODEL.PAPLOSS.LOSS == "graph"
    assert cfg.MODEL.PAPLOSS.GRAPH.CLS == CE_EXPRESSION
    assert cfg.MODEL.PAPLOSS.GRAPH.BOX == GIOU_EXPRESSION
    defaults = load_config("configs/synthetic/faster_rcnn_stock.yaml").MODEL.PAPLOSS.GRAPH
    assert (defaults.CLS, defaults.BOX, defaults.BOX_WEIGHT) == (
        CE_EXPRESSION,
        GIOU_EXPRESSION,
        1.0,
    )


def test_graph_loss_equals_hand_written_ce_and_giou_on_a_real_batch(synthetic_batch):
    model = build_train_model(CONFIG)
    with record_rankings(model) as rankings, EventStorage(0):
        losses = model(synthetic_batch)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_roi_graph"}  # stock RPN
    ranking = rankings["ROI_HEADS"]
    assert ranking.num_positives > 0 and set(rankings) == {"ROI_HEADS"}
    head_loss = model.roi_heads.box_predictor.head_loss
    loss_cls, loss_box = head_loss.losses(ranking)

    valid = ranking.labels >= 0
    num_classes = ranking.num_classes
    one_hot = F.one_hot(ranking.labels[valid], num_classes + 1)[:, :num_classes].float()
    logits = ranking.logits[valid]
    reference_cls = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="sum") / len(
        logits
    )
    reference_box = giou_loss(ranking.pred_boxes, ranking.gt_boxes, reduction="mean")
    torch.testing.assert_close(loss_cls, reference_cls, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_box, reference_box, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["loss_roi_graph"], reference_cls + reference_box)

    graph_grads = torch.autograd.grad(loss_cls + loss_box, ranking.logits, retain_graph=True)
    reference_grads = torch.autograd.grad(reference_cls + reference_box, ranking.logits)
    torch.testing.assert_close(graph_grads[0], reference_grads[0], rtol=1e-4, atol=1e-7)


def test_box_weight_and_scalars(synthetic_batch):
    model = build_train_model(CONFIG, "MODEL.PAPLOSS.GRAPH.BOX_WEIGHT", "2.5")
    with record_rankings(model) as rankings, EventStorage(0) as storage:
        losses = model(synthetic_batch)
    parts = {k: storage.history(f"roi_heads/graph_{k}").latest() for k in ("cls", "box")}
    expected = parts["cls"] + 2.5 * parts["box"]
    assert losses["loss_roi_graph"].item() == pytest.approx(expected, rel=1e-5)
    assert (
        rankings["ROI_HEADS"].num_positives == storage.history("roi_heads/num_positives").latest()
    )


def test_pap_rpn_keeps_stock_losses_and_retinanet_is_refused(synthetic_batch):
    model = build_train_model(CONFIG, "MODEL.PROPOSAL_GENERATOR.NAME", "PAPRPN")
    assert model.proposal_generator.head_loss.is_stock
    with EventStorage(0):
        losses = model(synthetic_batch)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_roi_graph"}
    cfg = make_cfg("configs/synthetic/pap_retinanet_identity.yaml", "MODEL.PAPLOSS.LOSS", "graph")
    with pytest.raises(ValueError, match="RetinaNet is not supported") as info:
        build_model(cfg)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("MODEL.PAPLOSS.GRAPH.CLS", "lg(x)", r"^MODEL.PAPLOSS.GRAPH.CLS: unknown operator 'lg'"),
        ("MODEL.PAPLOSS.GRAPH.CLS", "mul(y,y)", r"^MODEL.PAPLOSS.GRAPH.CLS: .*predictions"),
        ("MODEL.PAPLOSS.GRAPH.BOX", "sub(1,div(i,u)", r"^MODEL.PAPLOSS.GRAPH.BOX: expected"),
        ("MODEL.PAPLOSS.GRAPH.BOX", "log(x)", r"^MODEL.PAPLOSS.GRAPH.BOX: unknown input 'x'"),
        ("MODEL.PAPLOSS.GRAPH.BOX_WEIGHT", "-1.0", r"^MODEL.PAPLOSS.GRAPH.BOX_WEIGHT must be"),
    ],
)
def test_bad_values_give_one_line_errors_naming_the_key(key, value, match):
    with pytest.raises(ValueError, match=match) as info:
        build_model(make_cfg(CONFIG, key, value))
    assert "\n" not in str(info.value)


def test_built_without_config():
    head_loss = GraphHeadLoss(cls="mul(neg(y),log(x))", box="sub(1,div(i,u))", box_weight=0.5)
    assert str(head_loss.cls_graph) == "mul(neg(y),log(x))" and not head_loss.is_stock
    with pytest.raises(ValueError, match=r"^box: unknown operator"):
        GraphHeadLoss(cls=CE_EXPRESSION, box="iou(i,u)")


def test_loss_falls_on_a_fixed_batch(synthetic_batch):
    """30 steps of the config's optimizer on one batch of four images, without warm-up."""
    cfg = make_cfg(CONFIG, "SOLVER.WARMUP_ITERS", "0")
    model = build_train_model(CONFIG, "SOLVER.WARMUP_ITERS", "0")
    optimizer = Trainer.build_optimizer(cfg, model)
    totals = []
    with EventStorage(0) as storage:
        for iteration in range(30):
            storage.iter = iteration
            losses = model(synthetic_batch)
            total = sum(losses.values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            totals.append(losses["loss_roi_graph"].item())
    assert all(torch.isfinite(torch.tensor(totals)))
    assert sum(totals[-5:]) < 0.9 * sum(totals[:5]), totals


def test_train_net_trains_the_config_directly(tmp_path):
    result = subprocess.run(
        [
            sys.executable, "tools/train_net.py", "--num-threads", "1", "--config-file", CONFIG,
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "0",
            "SOLVER.STEPS", "()", "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(str(tmp_path), "metrics.json")) as f:
        records = [json.loads(line) for line in f]
    graph_losses = [r["loss_roi_graph"] for r in records if "loss_roi_graph" in r]
    assert graph_losses and all(torch.isfinite(torch.tensor(graph_losses)))
    assert os.path.isfile(os.path.join(str(tmp_path), "model_final.pth"))
