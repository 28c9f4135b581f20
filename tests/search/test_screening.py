"""Tests of the screening: loss-rejection protocol, gradient-equivalence check."""

import numpy as np
import pytest
import torch

from paploss.engine import setup_cfg
from paploss.losses import PAPFunctions, published_grad_scale
from paploss.modeling import PAPHeadLoss
from paploss.search.screening import (
    EquivalenceRegistry,
    GradientProbes,
    Screener,
    candidate_head_losses,
    gradient_fingerprint,
)
from paploss.search.screening.batch import build_screening_batches
from paploss.search.settings import ScreeningSettings
from paploss.search.spaces import SearchSpace

RETINANET_CONFIG = "configs/synthetic/pap_retinanet_identity.yaml"
FASTER_RCNN_CONFIG = "configs/synthetic/pap_faster_rcnn_identity.yaml"
SEARCH_TRAIN = "synthetic_shapes_search_train"
#: Small but representative: 4 images, 50 Adam steps.
QUICK = {"rejection": {"num_images": 4, "steps": 50, "min_ap_gain": 5.0}}


def _overrides(head, functions, grad_scale=1.0):
    """Config overrides of one head from ``{name: knots}``."""
    out = {f"MODEL.PAPLOSS.{head}.FUNCTIONS.{name}": knots for name, knots in functions.items()}
    out[f"MODEL.PAPLOSS.{head}.GRAD_SCALE"] = grad_scale
    return out


def _flat_h2():
    """Identity functions except H2 flat at 0 up to x = 0.9999: logits get (almost) no gradient."""
    functions = PAPFunctions.identity().to_dict()
    functions["H2"] = [[0.25, 0.0], [0.5, 0.0], [0.75, 0.0], [0.9999, 0.0]]
    return functions


@pytest.fixture(scope="module")
def retinanet_cfg():
    return setup_cfg(RETINANET_CONFIG)


@pytest.fixture(scope="module")
def screener(retinanet_cfg):
    torch.set_num_threads(1)
    return Screener.build(ScreeningSettings.from_dict(QUICK), retinanet_cfg, dataset=SEARCH_TRAIN)


@pytest.fixture(scope="module")
def space(retinanet_cfg):
    return SearchSpace.from_config(retinanet_cfg)


# ---------------------------------------------------------------------------- settings


def test_settings_defaults_and_from_dict():
    defaults = ScreeningSettings.from_dict(None)
    assert defaults == ScreeningSettings()
    assert defaults.rejection.enabled and defaults.equivalence.enabled
    assert defaults.early_stop.enabled
    settings = ScreeningSettings.from_dict(
        {"rejection": {"steps": 7, "enabled": False}, "early_stop": {"window": 3}}
    )
    assert settings.rejection.steps == 7 and not settings.rejection.enabled
    assert settings.early_stop.window == 3 and settings.equivalence == defaults.equivalence
    assert ScreeningSettings.from_dict(settings.to_dict()) == settings


@pytest.mark.parametrize(
    "data, match",
    [
        ({"rejecton": {}}, "unknown screening setting"),
        ({"rejection": {"stepz": 3}}, "screening.rejection setting"),
        ({"rejection": {"steps": 0}}, "screening.rejection.steps"),
        ({"rejection": {"optimizer": "lbfgs"}}, "optimizer"),
        ({"equivalence": {"significant_digits": 0}}, "significant_digits"),
        ({"early_stop": {"window": -1}}, "early_stop.window"),
    ],
)
def test_settings_errors_name_the_key(data, match):
    with pytest.raises(ValueError, match=match):
        ScreeningSettings.from_dict(data)


def test_candidate_head_losses_from_search_space_overrides():
    cfg = setup_cfg(FASTER_RCNN_CONFIG, ["MODEL.PAPLOSS.QUALITY", "iou"])
    space = SearchSpace.from_config(cfg)
    theta = space.identity_theta()
    theta[space.groups["ROI_HEADS.lambda"]] = 1.0
    theta[space.groups["RPN.H2"]] = 0.9
    screener = Screener(ScreeningSettings.from_dict({"rejection": {"enabled": False}}), cfg=cfg)
    losses = screener.head_losses(space.to_overrides(theta))
    assert list(losses) == ["RPN", "ROI_HEADS"]
    assert all(isinstance(loss, PAPHeadLoss) for loss in losses.values())
    assert losses["RPN"].grad_scale == pytest.approx(1.0)
    assert losses["ROI_HEADS"].grad_scale == pytest.approx(10.0)
    assert losses["RPN"].quality_type == "iou"  # the model's config, not a default
    identity = PAPFunctions.identity()
    for name, function in losses["ROI_HEADS"].functions.items():
        assert torch.allclose(function.knots_y, identity[name].knots_y)
    assert not torch.allclose(losses["RPN"].functions.H2.knots_y, identity.H2.knots_y)
    only_roi = screener.head_losses(space.to_overrides(theta), heads=["ROI_HEADS"])
    assert list(only_roi) == ["ROI_HEADS"]
    bad = space.to_overrides(theta)
    bad["MODEL.PAPLOSS.RPN.FUNCTIONS.H1"] = [[0.5, 0.2], [0.4, 0.4], [0.6, 0.6], [0.8, 0.8]]
    with pytest.raises(ValueError, match=r"MODEL.PAPLOSS.RPN.FUNCTIONS: H1"):
        candidate_head_losses(cfg, bad, ["RPN"])


# ---------------------------------------------------------------------------- rejection


def test_batch_matches_the_head(screener):
    batch = screener.protocols["RETINANET"].batch
    summary = batch.summary()
    assert summary["images"] == 4 and summary["positives"] > 0 and summary["gt_boxes"] > 0
    assert batch.ranking.logits.shape == (batch.num_entries // 4, 4)
    assert batch.ranking.deltas.shape == (batch.ranking.logits.shape[0], 4)
    # every ground truth box has a positive anchor (low-quality matches are allowed)
    assert summary["positives"] >= summary["gt_boxes"]


def test_perfect_predictions_have_ap_100(screener):
    protocol = screener.protocols["RETINANET"]
    ranking = protocol.batch.ranking
    rows = ranking.positive_rows
    logits = torch.full_like(ranking.logits, -10.0)
    logits[rows, ranking.labels[rows]] = 10.0
    perfect = ranking.with_predictions(logits, ranking.gt_deltas)
    assert torch.allclose(perfect.pred_boxes, ranking.gt_boxes, atol=1e-3)
    assert protocol.average_precision(perfect.logits, perfect.deltas) == pytest.approx(
        100.0, abs=1e-6
    )
    assert protocol.ap_before < 5.0


def test_flat_h2_candidate_is_rejected(screener):
    decision = screener.screen(_overrides("RETINANET", _flat_h2()), key="flat_h2")
    assert decision.status == "rejected" and decision.journal_status == "rejected"
    assert decision.reward == screener.settings.rejection.rejected_reward
    assert decision.score < screener.settings.rejection.min_ap_gain
    metrics = decision.metrics()
    assert metrics["rejection"]["RETINANET"]["gain"] == pytest.approx(decision.score)


def test_decreasing_i1_is_rejected(screener):
    """A decreasing I1 cannot be built through the API (knots are checked to be monotone), so
    its knot buffers are overwritten after construction: I1(u) = 1 - u, the localisation term
    then pushes boxes away from their ground truth."""
    identity = _overrides("RETINANET", PAPFunctions.identity().to_dict())
    head_loss = screener.head_losses(identity)["RETINANET"]
    functions = head_loss.functions
    with torch.no_grad():
        functions.I1.knots_y.copy_(1 - functions.I1.knots_y)
    assert float(functions.I1(torch.tensor(0.9))) == pytest.approx(0.1)
    result = screener.protocols["RETINANET"].run(head_loss)
    assert result.gain < screener.settings.rejection.min_ap_gain


@pytest.mark.parametrize("name", ["identity", "published"])
def test_identity_and_published_pass(screener, name):
    if name == "identity":
        overrides = _overrides("RETINANET", PAPFunctions.identity().to_dict())
    else:
        overrides = _overrides(
            "RETINANET",
            PAPFunctions.published("retinanet").to_dict(),
            published_grad_scale("retinanet"),
        )
    decision = screener.screen(overrides, key=name)
    assert decision.status == "accepted" and decision.journal_status == "pending"
    result = decision.rejection["RETINANET"]
    assert result.gain > 50.0 and result.loss_last < result.loss_first
    assert decision.reward is None


def test_faster_rcnn_heads_are_screened_on_their_own_batches():
    cfg = setup_cfg(FASTER_RCNN_CONFIG)
    settings = ScreeningSettings.from_dict(
        {"rejection": {"num_images": 2, "steps": 5}, "equivalence": {"enabled": False}}
    )
    screener = Screener.build(settings, cfg, dataset=SEARCH_TRAIN)
    rpn, roi = screener.protocols["RPN"].batch, screener.protocols["ROI_HEADS"].batch
    assert rpn.num_classes == 1 and roi.num_classes == 4
    assert roi.ranking.deltas.shape == (roi.ranking.logits.shape[0], 4, 4)  # per-class regression
    assert all(int(classes.max()) == 0 for classes in rpn.gt_classes)  # class-agnostic AP
    space = SearchSpace.from_config(cfg)
    decision = screener.screen(space.to_overrides(space.identity_theta()), key=0)
    assert set(decision.rejection) == {"RPN", "ROI_HEADS"} and decision.fingerprint is None
    assert decision.score == min(r.gain for r in decision.rejection.values())


def test_batches_are_deterministic(retinanet_cfg):
    first = build_screening_batches(retinanet_cfg, dataset=SEARCH_TRAIN, num_images=2, seed=3)
    second = build_screening_batches(retinanet_cfg, dataset=SEARCH_TRAIN, num_images=2, seed=3)
    assert torch.equal(first["RETINANET"].ranking.logits, second["RETINANET"].ranking.logits)
    assert torch.equal(first["RETINANET"].ranking.labels, second["RETINANET"].ranking.labels)


# ---------------------------------------------------------------------------- equivalence


def test_candidates_differing_below_rounding_are_duplicates(screener, space):
    rng = np.random.default_rng(0)
    theta = rng.uniform(0.05, 0.95, size=space.dim)
    nudged = theta + rng.choice([-1e-7, 1e-7], size=space.dim)
    a, b = space.to_overrides(theta), space.to_overrides(nudged)
    assert a != b
    assert screener.fingerprint(a) == screener.fingerprint(b)

    registry = EquivalenceRegistry()
    assert registry.register(screener.fingerprint(a).digest, (0, 1)) is None
    assert registry.register(screener.fingerprint(b).digest, (2, 5)) == (0, 1)
    assert registry.lookup(screener.fingerprint(a).digest) == (0, 1) and len(registry) == 1

    first = screener.screen(a, key="first")
    second = screener.screen(b, key="second")
    assert first.status in ("accepted", "rejected")
    assert second.status == "duplicate" and second.duplicate_of == "first"
    assert second.rejection == {}  # not screened, let alone trained
    assert screener.screen(a, key="first").status == first.status  # re-screening is no duplicate


def test_clearly_different_candidates_get_different_fingerprints(screener, space):
    identity = _overrides("RETINANET", PAPFunctions.identity().to_dict())
    fingerprints = {
        "identity": screener.fingerprint(identity),
        "lambda": screener.fingerprint({**identity, "MODEL.PAPLOSS.RETINANET.GRAD_SCALE": 2.0}),
        "published": screener.fingerprint(
            _overrides("RETINANET", PAPFunctions.published("retinanet").to_dict())
        ),
        "flat_h2": screener.fingerprint(_overrides("RETINANET", _flat_h2())),
    }
    rng = np.random.default_rng(1)
    for i in range(4):
        fingerprints[f"random{i}"] = screener.fingerprint(
            space.to_overrides(rng.uniform(size=space.dim))
        )
    digests = [f.digest for f in fingerprints.values()]
    assert len(set(digests)) == len(digests)


def test_fingerprint_rounds_to_significant_digits():
    probes = GradientProbes(num_samples=3, num_entries=16, num_positives=3, seed=0)
    params = {"RETINANET": PAPHeadLoss(functions=PAPFunctions.identity())}
    fingerprint = gradient_fingerprint(params, probes, significant_digits=2)
    ((head, values),) = fingerprint.values
    assert head == "RETINANET" and len(values) == 3
    for pair in values:
        for value in pair:
            assert value > 0 and float(f"{value:.1e}") == value
    assert gradient_fingerprint(params, probes, significant_digits=2) == fingerprint


def test_rejection_protocol_requires_batches():
    with pytest.raises(ValueError, match="no batch"):
        Screener(ScreeningSettings())
    screener = Screener(ScreeningSettings.from_dict({"rejection": {"enabled": False}}))
    overrides = _overrides("RETINANET", PAPFunctions.identity().to_dict())
    decision = screener.screen(overrides, key=0)
    assert decision.status == "accepted" and decision.fingerprint and decision.score is None
    assert not screener.protocols
