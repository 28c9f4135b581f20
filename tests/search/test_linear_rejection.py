"""The rejection protocol over a shared linear predictor (``screening.rejection.predictions:
linear``): a fresh Fast R-CNN predictor trained on a trained detector's recorded box features,
scored on held-out images."""

import json
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.env import seed_all_rng
from search_testing import tiny_search_overrides

from paploss.engine import Trainer, setup_cfg
from paploss.losses.graph import BOX, CE_EXPRESSION, CLS, L1_EXPRESSION
from paploss.search.controller import SearchController
from paploss.search.screening import LinearPredictor, LinearRejectionProtocol, Screener
from paploss.search.screening.batch import build_screening_batches
from paploss.search.screening.graph_screener import GraphScreener, graph_head_loss
from paploss.search.settings import ScreeningSettings, SettingsError
from paploss.search.settings_loading import load_settings
from paploss.search.trials import TrialSpec
from paploss.search.trials.runner import TrialResult, run_trial
from paploss.search.trials.warm_start import WARM_START_TRIAL_ID

CONFIG = "configs/synthetic/graph_faster_rcnn.yaml"
RETINANET_CONFIG = "configs/synthetic/pap_retinanet_identity.yaml"
SEARCH_TRAIN = "synthetic_shapes_search_train"
SEARCH_VAL = "synthetic_shapes_search_val"
LINEAR = {
    "predictions": "linear",
    "num_images": 2,
    "val_images": 2,
    "steps": 60,
    "eval_every": 30,
    "logit_lr": 0.001,
    "box_lr": 0.001,
}
CE_L1 = {CLS.config_key: CE_EXPRESSION, BOX.config_key: L1_EXPRESSION}
EVERY_SCORE_DOWN = {CLS.config_key: "x", BOX.config_key: L1_EXPRESSION}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    """A detector trained for a few iterations with the stock losses (as a warm start is)."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("warm")
    cfg = setup_cfg(
        CONFIG,
        [
            "MODEL.PAPLOSS.LOSS",
            "stock",
            "DATASETS.TRAIN",
            (SEARCH_TRAIN,),
            "DATASETS.TEST",
            (),
            "SOLVER.IMS_PER_BATCH",
            2,
            "SOLVER.MAX_ITER",
            20,
            "SOLVER.STEPS",
            (),
            "SOLVER.WARMUP_ITERS",
            0,
            "OUTPUT_DIR",
            str(folder),
        ],
    )
    seed_all_rng(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return str(folder / "model_final.pth")


@pytest.fixture(scope="module")
def screener(weights) -> GraphScreener:
    return GraphScreener.build(
        ScreeningSettings.from_dict({"rejection": LINEAR}),
        setup_cfg(CONFIG),
        dataset=SEARCH_TRAIN,
        val_dataset=SEARCH_VAL,
        weights=weights,
    )


def test_linear_needs_a_warm_start_and_is_left_out_of_journals_while_default():
    overrides = [f"model.config={CONFIG}", "screening.rejection.predictions=linear"]
    with pytest.raises(
        SettingsError,
        match=r"^screening\.rejection\.predictions: linear needs .*proxy\.warm_start\.iterations",
    ):
        load_settings(None, overrides)
    settings = load_settings(None, overrides + ["proxy.warm_start.iterations=10"])
    rejection = settings.screening.rejection
    assert rejection.linear and rejection.val_images == 8
    assert settings.to_dict()["screening"]["rejection"]["predictions"] == "linear"
    load_settings(None, overrides + ["screening.rejection.enabled=false"])  # nothing to record
    default = ScreeningSettings().to_dict()["rejection"]
    assert "predictions" not in default and "val_images" not in default
    with pytest.raises(SettingsError, match=r"screening\.rejection\.predictions must be one of"):
        ScreeningSettings.from_dict({"rejection": {"predictions": "frozen"}})
    with pytest.raises(SettingsError, match=r"screening\.rejection\.val_images must be"):
        ScreeningSettings.from_dict({"rejection": {"val_images": 0}})


def test_linear_screens_only_the_roi_head_and_needs_the_checkpoint():
    settings = ScreeningSettings.from_dict({"rejection": LINEAR})
    cfg = setup_cfg(RETINANET_CONFIG)
    with pytest.raises(ValueError, match=r"predictions: linear screens only .*not RETINANET"):
        Screener.build(
            settings,
            cfg,
            dataset=SEARCH_TRAIN,
            heads=["RETINANET"],
            val_dataset=SEARCH_VAL,
            weights="model.pth",
        )
    with pytest.raises(ValueError, match=r"predictions: linear screens only .*not RPN"):
        build_screening_batches(
            cfg, dataset=SEARCH_TRAIN, num_images=1, seed=0, heads=["RPN"], features=True
        )
    with pytest.raises(ValueError, match=r"predictions: linear needs a trained detector"):
        GraphScreener.build(settings, setup_cfg(CONFIG), dataset=SEARCH_TRAIN)


def test_linear_predictor_is_initialised_like_detectron2_from_its_seed():
    layer = LinearPredictor(256, 4, class_specific=True, seed=3)
    again = LinearPredictor(256, 4, class_specific=True, seed=3)
    assert torch.equal(layer.cls_score.weight, again.cls_score.weight)
    assert abs(float(layer.cls_score.weight.detach().std()) - 0.01) < 0.001
    assert abs(float(layer.bbox_pred.weight.detach().std()) - 0.001) < 0.0001
    assert not layer.cls_score.bias.any() and not layer.bbox_pred.bias.any()
    logits, deltas = layer(torch.randn(5, 256))
    assert logits.shape == (5, 4) and deltas.shape == (5, 4, 4)
    assert LinearPredictor(256, 4, class_specific=False, seed=3)(torch.randn(5, 256))[1].shape == (
        5,
        4,
    )


def test_linear_protocol_trains_the_layer_on_recorded_features(screener):
    protocol = screener.protocol
    assert isinstance(protocol, LinearRejectionProtocol)
    batch = protocol.batch
    assert batch.features is not None and batch.held_out is not None
    assert batch.features.shape == (batch.ranking.logits.shape[0], 256)
    assert batch.held_out.features.shape[0] == batch.held_out.ranking.logits.shape[0]
    assert batch.ranking.num_positives > 0 and batch.held_out.num_images == 2

    # The candidate's loss reaches the layer's weights through its predictions.
    layer = protocol.predictor()
    logits, deltas = layer(batch.features)
    head_loss = graph_head_loss(screener.cfg, CE_L1)
    protocol.loss(logits, batch.ranking.positive_deltas(deltas), head_loss).backward()
    assert float(layer.cls_score.weight.grad.abs().sum()) > 0
    assert float(layer.bbox_pred.weight.grad.abs().sum()) > 0

    (ce,) = screener.reject_score(CE_L1).values()
    (down,) = screener.reject_score(EVERY_SCORE_DOWN).values()
    assert ce.ap_before == down.ap_before == protocol.ap_before  # the same fresh layer
    assert ce.ap_after != ce.ap_before and ce.loss_last < ce.loss_first
    assert down.score < ce.score
    assert json.loads(json.dumps(screener.screen(CE_L1, key="ce").metrics()))["score"] == ce.score


def real_warm_start_fake_trials(spec: TrialSpec) -> TrialResult:
    """The warm start trained for real; candidates get a reward without training."""
    if spec.trial_id == WARM_START_TRIAL_ID:
        return run_trial(spec)
    Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
    return TrialResult(spec.trial_id, "done", 1.0, {"AP": 1.0}, spec_digest=spec.digest())


@pytest.mark.slow
def test_a_graph_search_screens_with_the_linear_protocol_on_its_warm_start(tmp_path: Path):
    overrides = tiny_search_overrides(tmp_path, rounds=1, candidates=2) + [
        f"model.config={CONFIG}",
        "search.method=evolution",
        "search.score_mean=false",
        "search.max_proposals=3",
        "evolution.population_size=2",
        "evolution.tournament_size=2",
        "proxy.warm_start.iterations=2",
        "proxy.warm_start.ims_per_batch=2",
        "screening.rejection.enabled=true",
        "screening.rejection.min_ap_gain=-100",
        *[f"screening.rejection.{key}={value}" for key, value in LINEAR.items()],
    ]
    settings = load_settings(None, overrides)
    output = tmp_path / "search"
    SearchController(settings, output, trial_fn=real_warm_start_fake_trials).run()
    from paploss.search.journal import SearchJournal

    with SearchJournal.open(str(output / "journal.sqlite"), read_only=True) as journal:
        trials = journal.trials()
    screened = [t.metrics["screening"] for t in trials if t.metrics["screening"]["rejection"]]
    assert screened
    for record in screened:
        result = record["rejection"]["ROI_HEADS"]
        assert len(result["curve"]) == 2 and result["ap_before"] >= 0.0
