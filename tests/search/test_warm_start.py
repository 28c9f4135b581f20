"""The proxy's warm start: one stock-loss training of the searched model, reused by every trial."""

import json
from pathlib import Path

import pytest
import torch
from search_testing import MODEL_CONFIG, tiny_search_overrides

from paploss.search.controller import SearchController
from paploss.search.settings import ProxySettings, SettingsError
from paploss.search.settings_loading import load_settings
from paploss.search.trials import TrialSpec
from paploss.search.trials.warm_start import WARM_START_FOLDER, warm_start_spec


def test_warm_start_settings_are_validated_with_the_key_named() -> None:
    assert not ProxySettings().warm_start.enabled
    with pytest.raises(SettingsError, match=r"proxy\.warm_start\.iterations must be"):
        load_settings(None, [f"model.config={MODEL_CONFIG}", "proxy.warm_start.iterations=-1"])
    with pytest.raises(SettingsError, match=r"proxy\.warm_start\.opts must not set MODEL\.WEIGHTS"):
        load_settings(None, ["proxy.warm_start.opts.MODEL.WEIGHTS=x.pth"])
    with pytest.raises(SettingsError, match=r"proxy\.opts must not set MODEL\.WEIGHTS"):
        load_settings(None, ["proxy.warm_start.iterations=10", "proxy.opts.MODEL.WEIGHTS=x.pth"])
    with pytest.raises(SettingsError, match=r"unknown proxy\.warm_start setting"):
        load_settings(None, ["proxy.warm_start.steps=10"])


def test_warm_start_spec_trains_the_stock_loss_with_the_proxy_data(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        [
            f"model.config={MODEL_CONFIG}",
            "proxy.warm_start.iterations=30",
            "proxy.warm_start.ims_per_batch=2",
            "proxy.warm_start.opts.SOLVER.BASE_LR=0.001",
            "proxy.opts.SOLVER.WARMUP_ITERS=5",
        ],
    )
    assert warm_start_spec(ProxySettings(), "model.yaml", str(tmp_path)) is None
    spec = warm_start_spec(settings.proxy, "model.yaml", str(tmp_path / "w"))
    opts = dict(zip(spec.config_opts()[::2], spec.config_opts()[1::2]))
    assert opts["SOLVER.MAX_ITER"] == 30 and opts["SOLVER.IMS_PER_BATCH"] == 2
    assert opts["MODEL.PAPLOSS.LOSS"] == "stock" and opts["SOLVER.BASE_LR"] == 0.001
    assert opts["SOLVER.WARMUP_ITERS"] == 5 and "MODEL.WEIGHTS" not in opts
    assert opts["DATASETS.TRAIN"] == (settings.proxy.train_dataset,)
    assert spec.proxy.keep_checkpoints and spec.early_stop is None


def test_trials_start_from_init_weights_which_are_not_their_identity() -> None:
    spec = TrialSpec("t", 0, 0, (0.5,), {}, "model.yaml", 0, ProxySettings(), "out")
    warm = TrialSpec(
        "t", 0, 0, (0.5,), {}, "model.yaml", 0, ProxySettings(), "out", init_weights="w.pth"
    )
    assert "MODEL.WEIGHTS" not in spec.config_opts()
    assert warm.config_opts()[-2:] == ["MODEL.WEIGHTS", "w.pth"]
    assert warm.digest() == spec.digest()


def test_search_trains_the_warm_start_once_and_every_trial_starts_from_it(tmp_path: Path) -> None:
    overrides = tiny_search_overrides(tmp_path, rounds=1, candidates=2)
    overrides += ["proxy.warm_start.iterations=6", "proxy.warm_start.ims_per_batch=2"]
    settings = load_settings(None, overrides)
    output = tmp_path / "search"
    SearchController(settings, output).run()
    warm = output / WARM_START_FOLDER
    result = json.loads((warm / "result.json").read_text())
    assert result["status"] == "done"
    weights = warm / "train" / "model_final.pth"
    assert weights.is_file()  # kept for later rounds and a resumed search
    logs = sorted((output / "trials").glob("*/log.txt"))
    assert len(logs) == 3  # two samples and the policy mean
    for log in logs:
        assert f"Loading from {weights}" in log.read_text()
    state = torch.load(weights, map_location="cpu")["model"]
    assert any("cls_score" in key for key in state)
