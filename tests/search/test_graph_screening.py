"""Screening of graph candidates with the search's own rejection protocol, equivalence registry
and early-stop hook (used read-only, unchanged)."""

import json

import pytest
import torch

from paploss.engine import Trainer, setup_cfg
from paploss.losses.graph import CE_EXPRESSION, GIOU_EXPRESSION, parse
from paploss.modeling.graph_loss import GraphHeadLoss
from paploss.search.proposers.graph_evolution import GraphCandidate
from paploss.search.screening import RejectionProtocol
from paploss.search.screening.graph_screener import GraphScreener, graph_head_loss
from paploss.search.settings import ScreeningSettings
from paploss.search.trials.proxy_config import early_stop_hook

CONFIG = "configs/synthetic/graph_faster_rcnn.yaml"
SEARCH_TRAIN = "synthetic_shapes_search_train"
#: Small but representative: 4 images, 50 Adam steps.
QUICK = {"rejection": {"num_images": 4, "steps": 50, "min_ap_gain": 5.0}}
NEG_CE = f"neg({CE_EXPRESSION})"


def _candidate(cls, box, index):
    return GraphCandidate(parse(cls), parse(box), index=index)


@pytest.fixture(scope="module")
def cfg():
    return setup_cfg(CONFIG)


@pytest.fixture(scope="module")
def screener(cfg):
    torch.set_num_threads(1)
    return GraphScreener.build(ScreeningSettings.from_dict(QUICK), cfg, dataset=SEARCH_TRAIN)


def test_candidate_head_loss_is_the_trained_one(cfg):
    candidate = _candidate("mul(neg(y),log(x))", "sub(1,div(i,u))", 0)
    head_loss = graph_head_loss(cfg, candidate)
    assert isinstance(head_loss, GraphHeadLoss) and head_loss.head == "ROI_HEADS"
    assert str(head_loss.cls_graph) == "mul(neg(y),log(x))"
    assert str(head_loss.box_graph) == "sub(1,div(i,u))"
    assert head_loss.loss_key == "loss_roi_graph"


def test_search_rejection_protocol_scores_graph_losses_unchanged(screener):
    batch = screener.protocol.batch
    assert batch.head == "ROI_HEADS" and batch.ranking.num_positives > 0
    settings = screener.settings.rejection
    direct = RejectionProtocol(batch, settings).run(
        GraphHeadLoss(cls=CE_EXPRESSION, box=GIOU_EXPRESSION)
    )
    decision = screener.screen(_candidate(CE_EXPRESSION, GIOU_EXPRESSION, 0), key="ce")
    assert decision.status == "accepted" and not decision.invalid
    result = decision.rejection["ROI_HEADS"]
    assert result.gain >= 5.0 and result.ap_after > result.ap_before
    assert result.gain == pytest.approx(direct.gain, abs=1e-6)
    assert json.loads(json.dumps(decision.metrics()))["status"] == "accepted"


def test_ascending_losses_are_rejected_not_duplicates(screener):
    decision = screener.screen(_candidate(NEG_CE, f"neg({GIOU_EXPRESSION})", 1), key="neg")
    assert decision.status == "rejected" and not decision.invalid
    assert decision.rejection["ROI_HEADS"].gain < 5.0
    assert decision.reward == screener.settings.rejection.rejected_reward


def test_equivalent_candidates_are_duplicates(screener):
    screener.screen(_candidate(CE_EXPRESSION, GIOU_EXPRESSION, 0), key="ce")
    rewritten = "neg(add(mul(log(x),y),mul(log(sub(1,x)),sub(1,y))))"
    decision = screener.screen(_candidate(rewritten, GIOU_EXPRESSION, 2), key="rewritten")
    assert decision.status == "duplicate" and decision.duplicate_of == "ce"
    assert decision.rejection == {}  # not optimised again


def test_invalid_candidates_are_rejected_before_the_protocol(screener):
    decision = screener.screen(_candidate("div(x,x)", GIOU_EXPRESSION, 3))
    assert decision.status == "rejected" and decision.invalid
    assert decision.reason == "no cls gradient reaches the predictions"
    assert decision.rejection == {} and decision.fingerprint is None
    assert json.loads(json.dumps(decision.metrics()))["invalid"] is True


def test_invalid_training_stops_at_the_first_iteration(tmp_path):
    """A classification graph that overflows: Detectron2's check and the search's early-stop hook
    stop the training at iteration 0 with a FloatingPointError (a diverged trial)."""
    overflow = "square(square(square(square(recip(sub(x,x))))))"
    cfg = setup_cfg(
        CONFIG,
        [
            "MODEL.PAPLOSS.GRAPH.CLS", overflow,
            "SOLVER.IMS_PER_BATCH", 2,
            "SOLVER.MAX_ITER", 5,
            "DATASETS.TRAIN", (SEARCH_TRAIN,),
            "DATASETS.TEST", (),
            "OUTPUT_DIR", str(tmp_path),
        ],
    )  # fmt: skip
    trainer = Trainer(cfg)
    trainer.register_hooks([early_stop_hook(ScreeningSettings().early_stop)])
    trainer.resume_or_load(resume=False)
    with pytest.raises(FloatingPointError):
        trainer.train()
    assert trainer.iter == 0
