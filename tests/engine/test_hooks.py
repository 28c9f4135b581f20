"""Training hooks and the sampler of paploss.engine: exact resume (random states, sampler position;
tools/train_net.py --resume ends where an uninterrupted run ends) and the early stop of invalid
trainings."""

import itertools
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.engine import SimpleTrainer

from paploss.engine import (
    ConstantLossError,
    InvalidTrainingHook,
    NonFiniteTrainingError,
    RandomStateHook,
    Trainer,
    get_random_state,
    set_random_state,
    setup_cfg,
)
from paploss.search.settings import EarlyStopSettings
from paploss.search.trials.proxy_config import early_stop_hook

RETINANET_CONFIG = "configs/synthetic/pap_retinanet_identity.yaml"
SEARCH_TRAIN = "synthetic_shapes_search_train"


def test_random_state_round_trip(tmp_path: Path) -> None:
    state = get_random_state()
    first = (np.random.rand(), torch.rand(1).item(), random.random())
    set_random_state(state)
    assert (np.random.rand(), torch.rand(1).item(), random.random()) == first
    # Checkpoints hold it: only types that torch.load(weights_only=True) accepts.
    torch.save(state, tmp_path / "state.pt")
    set_random_state(torch.load(tmp_path / "state.pt", weights_only=True))
    assert (np.random.rand(), torch.rand(1).item(), random.random()) == first


def test_early_stop_fires_on_nan_in_a_real_training(tmp_path):
    """An absurd learning rate: the weights explode after the first step and the predictions of
    the second forward overflow to NaN/inf. The hook stops the training there with a
    FloatingPointError (a diverged trial), before the PAP loss rejects its inputs with a
    ValueError (which would count as a crash)."""
    cfg = setup_cfg(
        RETINANET_CONFIG,
        [
            "SOLVER.IMS_PER_BATCH", 2,
            "SOLVER.BASE_LR", 1e30,
            "SOLVER.WARMUP_ITERS", 0,
            "SOLVER.MAX_ITER", 5,
            "DATASETS.TRAIN", (SEARCH_TRAIN,),
            "DATASETS.TEST", (),
            "OUTPUT_DIR", str(tmp_path),
        ],
    )  # fmt: skip
    trainer = Trainer(cfg)
    trainer.register_hooks([InvalidTrainingHook()])
    trainer.resume_or_load(resume=False)
    with pytest.raises(NonFiniteTrainingError, match="NaN or infinite") as info:
        trainer.train()
    assert isinstance(info.value, FloatingPointError)
    assert info.value.iteration == 1 == trainer.iter


class _ToyModel(torch.nn.Module):
    """Returns a loss that is constant (or varies, with ``varying``) whatever the weights."""

    def __init__(self, varying: bool = False):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.varying = varying
        self.calls = 0

    def forward(self, data):
        self.calls += 1
        offset = 0.1 * (self.calls % 3) if self.varying else 0.0
        return {"loss": 0.0 * self.weight.sum() + 1.0 + offset}


def _train_toy(model, hook, iterations=20):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SimpleTrainer(model, itertools.repeat([{}]), optimizer)
    trainer.register_hooks([hook])
    trainer.train(0, iterations)
    return trainer


def test_early_stop_fires_on_a_constant_loss():
    with pytest.raises(ConstantLossError, match="constant") as info:
        _train_toy(_ToyModel(), InvalidTrainingHook(window=5))
    assert isinstance(info.value, FloatingPointError) and info.value.iteration == 4


def test_early_stop_lets_a_varying_loss_train():
    trainer = _train_toy(_ToyModel(varying=True), InvalidTrainingHook(window=5), iterations=12)
    assert trainer.iter == 12  # finished


def test_early_stop_hook_settings():
    assert early_stop_hook(EarlyStopSettings(enabled=False)) is None
    hook = early_stop_hook(EarlyStopSettings(window=7))
    assert isinstance(hook, InvalidTrainingHook) and hook.window == 7
    with pytest.raises(ValueError, match="window"):
        InvalidTrainingHook(window=-2)


# Short runs: 12 iterations of 4 images, a checkpoint every 4, no evaluation during training.
RESUME_OPTS = [
    "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "5", "SOLVER.STEPS", "(6,)",
    "SOLVER.CHECKPOINT_PERIOD", "4", "SOLVER.MAX_ITER", "12", "TEST.EVAL_PERIOD", "0",
    "DATASETS.TEST", "('synthetic_shapes_search_val',)",
]  # fmt: skip


def _train_net(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "tools/train_net.py", "--num-threads", "1", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def _last_metrics(folder: Path) -> dict:
    with open(folder / "metrics.json") as handle:
        return [json.loads(line) for line in handle if '"total_loss"' in line][-1]


@pytest.mark.parametrize(
    "config, seed",
    [
        ("configs/synthetic/retinanet_stock.yaml", "-1"),
        pytest.param(RETINANET_CONFIG, "0", marks=pytest.mark.slow),
    ],
    ids=["stock_random_seed", "pap_seed0"],
)
def test_train_net_resume_ends_as_an_uninterrupted_run(tmp_path: Path, config: str, seed: str):
    """A run killed after its checkpoint at iteration 8 and resumed with --resume ends with the
    weights of the run that was never interrupted: the stream of images, the augmentations, the
    random numbers (SEED -1: a seed drawn at start, kept in the checkpoint), the loss normalisers,
    the optimizer and the schedule all continue where they were."""
    whole = tmp_path / "whole"
    _train_net("--config-file", config, *RESUME_OPTS, "SEED", seed, "OUTPUT_DIR", str(whole))

    interrupted = tmp_path / "interrupted"
    shutil.copytree(whole, interrupted)
    (interrupted / "model_final.pth").unlink()
    (interrupted / "last_checkpoint").write_text("model_0000007.pth")
    (interrupted / "metrics.json").unlink()
    log = _train_net(
        "--config-file", config, "--resume", *RESUME_OPTS, "SEED", seed,
        "OUTPUT_DIR", str(interrupted),
    )  # fmt: skip
    assert "Starting training from iteration 8" in log

    # Losses are logged as medians over the last 20 iterations: those of the resumed run cover 4.
    resumed_metrics, whole_metrics = _last_metrics(interrupted), _last_metrics(whole)
    assert resumed_metrics["iteration"] == whole_metrics["iteration"] == 11
    assert resumed_metrics["lr"] == whole_metrics["lr"]
    reference = torch.load(whole / "model_final.pth", weights_only=False)["model"]
    resumed = torch.load(interrupted / "model_final.pth", weights_only=False)["model"]
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[key], resumed[key]) for key in reference)
    state = torch.load(whole / "model_0000007.pth", weights_only=False)["trainer"]["hooks"]
    assert set(state["RandomStateHook"]) == {"random_state", "sampler_seed", "module_attributes"}


def test_trainer_installs_the_exact_resume_hook_before_the_checkpointer(tmp_path: Path):
    cfg = setup_cfg(RETINANET_CONFIG, [*RESUME_OPTS, "OUTPUT_DIR", str(tmp_path)])
    trainer = Trainer(cfg)
    names = [type(hook).__name__ for hook in trainer._hooks]
    assert names.index("RandomStateHook") < names.index("PeriodicCheckpointer")
    assert trainer.train_sampler is not None and trainer.train_sampler.start_index == 0
    assert isinstance(trainer._hooks[names.index("RandomStateHook")], RandomStateHook)
