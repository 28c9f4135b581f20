"""End to end: tools/train_net.py trains, evaluates with COCO AP, resumes exactly, evaluates only;
--num-threads."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from paploss.engine import Trainer, setup_cfg

SHORT = [
    "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "5", "SOLVER.STEPS", "()",
    "DATASETS.TEST", "('synthetic_shapes_search_val',)", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
]  # fmt: skip


def _train_net(*args):
    result = subprocess.run(
        [sys.executable, "tools/train_net.py", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def _copypaste_metrics(log):
    names = re.findall(r"copypaste: (AP,AP50,AP75.*)", log)[-1].split(",")
    values = re.findall(r"copypaste: ([\d.nan]+,[\d.nan]+,.*)", log)[-1].split(",")
    return dict(zip(names, (float(v) for v in values)))


def test_train_evaluate_resume_and_eval_only(tmp_path):
    out = str(tmp_path / "run")
    config = "configs/synthetic/retinanet_stock.yaml"
    log = _train_net("--config-file", config, *SHORT, "SOLVER.MAX_ITER", "20",
                     "SOLVER.CHECKPOINT_PERIOD", "10", "OUTPUT_DIR", out)  # fmt: skip
    metrics = _copypaste_metrics(log)
    assert set(metrics) >= {"AP", "AP50", "AP75"}
    assert all(0.0 <= metrics[k] <= 100.0 for k in ("AP", "AP50", "AP75"))
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    with open(os.path.join(out, "metrics.json")) as f:
        iterations = [json.loads(line)["iteration"] for line in f if '"total_loss"' in line]
    assert iterations[-1] == 19

    log = _train_net("--config-file", config, "--resume", *SHORT, "SOLVER.MAX_ITER", "25",
                     "SOLVER.CHECKPOINT_PERIOD", "10", "OUTPUT_DIR", out)  # fmt: skip
    assert "Starting training from iteration 20" in log

    log = _train_net("--config-file", config, "--eval-only", *SHORT, "OUTPUT_DIR", out,
                     "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"))  # fmt: skip
    assert "Starting training" not in log
    assert set(_copypaste_metrics(log)) >= {"AP", "AP50", "AP75"}


def test_resume_restores_the_exact_optimizer_state(tmp_path):
    opts = [
        *SHORT,
        "SOLVER.CHECKPOINT_PERIOD",
        "8",
        "OUTPUT_DIR",
        str(tmp_path),
        "TEST.EVAL_PERIOD",
        "0",
    ]
    cfg = setup_cfg("configs/synthetic/retinanet_stock.yaml", [*opts, "SOLVER.MAX_ITER", "8"])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    saved = torch.load(os.path.join(str(tmp_path), "model_final.pth"), weights_only=False)
    saved_optimizer = saved["trainer"]["_trainer"]["optimizer"]
    assert len(saved_optimizer["state"]) > 0  # momentum buffers are in the checkpoint
    assert saved["trainer"]["iteration"] == 7

    cfg = setup_cfg("configs/synthetic/retinanet_stock.yaml", [*opts, "SOLVER.MAX_ITER", "12"])
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 8
    state = resumed.optimizer.state_dict()["state"]
    assert state.keys() == saved_optimizer["state"].keys()
    for key, buffers in saved_optimizer["state"].items():
        torch.testing.assert_close(state[key]["momentum_buffer"], buffers["momentum_buffer"])
    scheduler_state = saved["trainer"]["hooks"]["LRScheduler"]
    assert resumed.scheduler.state_dict()["last_epoch"] == scheduler_state["last_epoch"]


def test_missing_config_file_is_named():
    with pytest.raises(FileNotFoundError, match="no_such_config.yaml"):
        setup_cfg("configs/no_such_config.yaml")


def test_unknown_config_key_is_named(tmp_path):
    with pytest.raises(
        ValueError, match="command-line overrides: Non-existent key: MODEL.PAPLOSS.NO"
    ):
        setup_cfg("configs/synthetic/retinanet_stock.yaml", ["MODEL.PAPLOSS.NO_SUCH_KEY", "1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        '_BASE_: "%s"\nMODEL:\n  PAPLOSS:\n    LOSSES: "pap"\n'
        % os.path.abspath("configs/synthetic/retinanet_stock.yaml")
    )
    with pytest.raises(ValueError, match=r"bad.yaml'.*MODEL.PAPLOSS.LOSSES"):
        setup_cfg(str(bad))


def _load_train_net():
    spec = importlib.util.spec_from_file_location("train_net", "tools/train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_num_threads_sets_torch_and_child_processes(monkeypatch):
    train_net = _load_train_net()
    args = train_net.argument_parser().parse_args(
        ["--num-threads", "1", "--config-file", "configs/synthetic/retinanet_stock.yaml"]
    )
    assert args.num_threads == 1
    saved = torch.get_num_threads()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "7")
    try:
        torch.set_num_threads(2)
        train_net.set_num_threads(args.num_threads)
        assert torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "1"
        train_net.set_num_threads(None)  # not given: left as it is
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(saved)
    assert train_net.argument_parser().parse_args([]).num_threads is None
