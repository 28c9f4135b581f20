"""The graph search's rejection score options (``screening.rejection.score``) and its cheap proxy
(``proxy.warm_start.reinit`` / ``freeze``: a warm-started training of the box predictor only)."""

import copy
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import FrozenBatchNorm2d
from detectron2.utils.env import seed_all_rng

from paploss.engine import Trainer, setup_cfg
from paploss.losses.graph import BOX, CE_EXPRESSION, CLS, L1_EXPRESSION
from paploss.search.screening.graph_screener import GraphScreener
from paploss.search.screening.rejection import RejectionResult
from paploss.search.settings import (
    ProxySettings,
    ScreeningSettings,
    SettingsError,
    WarmStartSettings,
)
from paploss.search.trials.proxy import ProxyTrainer, freeze_modules

CONFIG = "configs/synthetic/graph_faster_rcnn.yaml"
SEARCH_TRAIN = "synthetic_shapes_search_train"
NEGATIVES_DOWN_ONLY = "neg(mul(sub(1,y),log(sub(1,x))))"
REINIT = ("roi_heads.box_predictor",)
FREEZE = ("backbone", "proposal_generator")


def _result(curve, ap_before=10.0, score_kind="final"):
    return RejectionResult(
        head="ROI_HEADS",
        ap_before=ap_before,
        ap_after=curve[-1][1],
        gain=curve[-1][1] - ap_before,
        loss_first=1.0,
        loss_last=0.5,
        curve=tuple(curve),
        seconds=0.0,
        score_kind=score_kind,
    )


def test_auc_gain_is_the_area_under_the_gain_curve_per_step():
    at_once = _result([(5, 60.0), (10, 60.0)], score_kind="auc")
    assert at_once.gain == 50.0
    assert at_once.auc_gain == pytest.approx((0.5 * 50 * 5 + 50 * 5) / 10)
    slow = _result([(5, 10.0), (10, 60.0)], score_kind="auc")
    assert slow.gain == 50.0 and slow.auc_gain == pytest.approx(0.5 * 50 * 5 / 10)
    uneven = _result([(4, 30.0), (10, 40.0)])  # the last interval is longer
    assert uneven.auc_gain == pytest.approx((0.5 * 20 * 4 + 0.5 * (20 + 30) * 6) / 10)
    assert uneven.score == uneven.gain and slow.score == slow.auc_gain
    assert slow.to_dict()["score"] == slow.auc_gain


def test_new_settings_are_validated_and_left_out_while_default():
    with pytest.raises(SettingsError, match=r"screening\.rejection\.score must be one of"):
        ScreeningSettings.from_dict({"rejection": {"score": "area"}})
    with pytest.raises(SettingsError, match=r"auc needs the curve.*eval_every"):
        ScreeningSettings.from_dict({"rejection": {"score": "auc"}})
    assert "score" not in ScreeningSettings().to_dict()["rejection"]
    auc = ScreeningSettings.from_dict({"rejection": {"score": "auc", "eval_every": 5}})
    assert auc.to_dict()["rejection"]["score"] == "auc"

    with pytest.raises(SettingsError, match=r"proxy\.warm_start\.reinit needs a warm start"):
        WarmStartSettings(reinit=REINIT)
    with pytest.raises(SettingsError, match=r"proxy\.warm_start\.freeze must be module names"):
        WarmStartSettings(iterations=10, freeze=("backbone.",))
    warm = ProxySettings(warm_start=WarmStartSettings(iterations=10))
    assert set(warm.to_dict()["warm_start"]) == {
        "iterations",
        "ims_per_batch",
        "loss",
        "opts",
        "seed",
    }
    cheap = ProxySettings.from_dict(
        {"warm_start": {"iterations": 10, "reinit": list(REINIT), "freeze": list(FREEZE)}}
    )
    assert cheap.warm_start.reinit == REINIT and cheap.warm_start.freeze == FREEZE
    assert cheap.to_dict()["warm_start"]["freeze"] == list(FREEZE)


def test_auc_score_rejects_a_loss_that_teaches_slowly():
    """With small steps (no saturation) CE on the negatives only gains much less than CE."""
    torch.set_num_threads(1)
    rejection = {
        "num_images": 2,
        "steps": 10,
        "eval_every": 5,
        "logit_lr": 0.01,
        "box_lr": 0.002,
        "score": "auc",
    }
    settings = ScreeningSettings.from_dict({"rejection": rejection})
    screener = GraphScreener.build(settings, setup_cfg(CONFIG), dataset=SEARCH_TRAIN)
    ce = {CLS.config_key: CE_EXPRESSION, BOX.config_key: L1_EXPRESSION}
    negatives_only = {CLS.config_key: NEGATIVES_DOWN_ONLY, BOX.config_key: L1_EXPRESSION}
    (ce_result,) = screener.reject_score(ce).values()
    (negatives_result,) = screener.reject_score(negatives_only).values()
    assert ce_result.score == ce_result.auc_gain
    assert ce_result.auc_gain > negatives_result.auc_gain + 1.0
    threshold = (ce_result.auc_gain + negatives_result.auc_gain) / 2
    strict = GraphScreener(
        ScreeningSettings.from_dict({"rejection": {**rejection, "min_ap_gain": threshold}}),
        screener.protocol.batch,
        cfg=screener.cfg,
    )
    assert strict.screen(ce, key="ce").status == "accepted"
    decision = strict.screen(negatives_only, key="negatives")
    assert decision.status == "rejected" and decision.score == pytest.approx(
        negatives_result.auc_gain
    )


def _proxy_cfg(tmp_path: Path, weights: str):
    return setup_cfg(
        CONFIG,
        [
            "DATASETS.TRAIN",
            (SEARCH_TRAIN,),
            "SOLVER.IMS_PER_BATCH",
            2,
            "SOLVER.MAX_ITER",
            2,
            "SOLVER.STEPS",
            (),
            "SOLVER.WARMUP_ITERS",
            0,
            "SOLVER.BASE_LR",
            0.05,
            "SOLVER.CHECKPOINT_PERIOD",
            100,
            "MODEL.WEIGHTS",
            weights,
            "SEED",
            0,
            "OUTPUT_DIR",
            str(tmp_path / "train"),
        ],
    )


def _state(model, prefixes, inside=True):
    return {
        name: value.clone()
        for name, value in model.state_dict().items()
        if any(name.startswith(p + ".") for p in prefixes) == inside
    }


def test_cheap_proxy_reinitialises_and_freezes_named_modules(tmp_path: Path):
    torch.set_num_threads(1)
    # The warm-start checkpoint: another initialisation of the same model, one BN stat changed.
    seed_all_rng(1)
    cfg = _proxy_cfg(tmp_path, "")
    warm = Trainer.build_model(cfg)
    DetectionCheckpointer(warm, str(tmp_path)).save("warm")
    checkpoint = copy.deepcopy(warm.state_dict())
    cfg = _proxy_cfg(tmp_path, str(tmp_path / "warm.pth"))
    Path(cfg.OUTPUT_DIR).mkdir()

    seed_all_rng(0)
    built = Trainer.build_model(cfg).state_dict()  # what the trial's model is built with
    seed_all_rng(0)
    trainer = ProxyTrainer(cfg, reinit=REINIT, freeze=FREEZE)
    trainer.resume_or_load(resume=True)
    model = trainer.model
    loaded = {name: value.clone() for name, value in model.state_dict().items()}
    for name, value in _state(model, REINIT).items():
        assert torch.equal(value, built[name]), name
        if name.endswith("weight"):  # (biases start at 0 in both)
            assert not torch.equal(value, checkpoint[name]), name
    for name, value in _state(model, REINIT, inside=False).items():
        assert torch.equal(value, checkpoint[name]), name
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules())
    trained = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert trained and all(p.requires_grad for p in trained)  # the optimizer has no frozen one

    trainer.train()
    after = model.state_dict()
    for name, value in _state(model, FREEZE).items():
        assert torch.equal(value, loaded[name]), name
    assert not torch.equal(
        after["roi_heads.box_predictor.cls_score.weight"],
        loaded["roi_heads.box_predictor.cls_score.weight"],
    )

    # A trial resumed from its own checkpoint keeps what it trained (no new initialisation).
    resumed = ProxyTrainer(cfg, reinit=REINIT, freeze=FREEZE)
    resumed.resume_or_load(resume=True)
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, after[name]), name


def test_unknown_modules_are_named():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"freeze: the model has no module \['backbone'\]"):
        freeze_modules(model, ["backbone"])
    assert freeze_modules(model, ["0"]) == 6
    assert not any(p.requires_grad for p in model.parameters())
