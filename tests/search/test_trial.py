"""Trial runner: real tiny proxy trainings (done, reused, resumed exactly, diverged, failed)."""

import dataclasses
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from search_testing import tiny_val_dataset

from paploss.search.settings import EarlyStopSettings, ProxySettings, SettingsError
from paploss.search.spaces import SearchSpace
from paploss.search.trials import (
    TrialResult,
    TrialSpec,
    load_result,
    read_starts,
    run_trial,
)
from paploss.search.trials.proxy_config import proxy_config_opts

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_CONFIG = str(REPO_ROOT / "configs" / "synthetic" / "pap_retinanet_identity.yaml")
MASK_RCNN_CONFIG = str(REPO_ROOT / "configs" / "synthetic" / "pap_mask_rcnn_mask_iou.yaml")
# Tiny proxy: a few iterations of 2 images; every box is kept at test time so that even an
# almost untrained detector gets a (small, non-zero) AP.
TINY = ProxySettings(
    iterations=10,
    ims_per_batch=2,
    checkpoint_period=100,
    opts={"SOLVER.WARMUP_ITERS": 2, "MODEL.RETINANET.SCORE_THRESH_TEST": 0.0},
)


def _spec(
    folder: Path,
    proxy: ProxySettings = TINY,
    theta_shift: float = 0.0,
    early_stop: EarlyStopSettings = EarlyStopSettings(),
    config_file: str = MODEL_CONFIG,
    heads: tuple = ("RETINANET",),
) -> TrialSpec:
    space = SearchSpace(heads)
    theta = np.clip(space.identity_theta() + theta_shift, 0, 1)
    return TrialSpec(
        trial_id=folder.name,
        round=0,
        index=0,
        theta=tuple(theta.tolist()),
        overrides=space.to_overrides(theta),
        config_file=config_file,
        seed=1234,
        proxy=proxy,
        output_dir=str(folder),
        early_stop=early_stop,
    )


def _final_weights(folder: Path) -> dict:
    return torch.load(folder / "train" / "model_final.pth", weights_only=False)["model"]


def test_trial_trains_scores_and_reuses_its_result(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "trial")
    result = run_trial(spec)

    assert result.status == "done", result.error
    assert result.reward == pytest.approx(result.metrics["AP"]) and result.reward > 0
    assert {"AP50", "AP75", "train_s", "eval_s", "total_s"} <= set(result.metrics)
    assert result.metrics["iterations"] == 10 and result.metrics["resumed_from"] == 0
    folder = Path(spec.output_dir)
    stored = load_result(folder)
    assert (stored.status, stored.reward, stored.reused) == ("done", result.reward, True)
    assert json.loads((folder / "spec.json").read_text())["digest"] == spec.digest()
    assert not list((folder / "train").glob("*.pth")), "checkpoints are removed after the result"
    assert (folder / "log.txt").stat().st_size > 0

    again = run_trial(spec)
    assert again.reused and again.reward == result.reward
    assert len(read_starts(folder)) == 1, "a finished trial does not train again"

    # The folder serves this trial only.
    other = dataclasses.replace(_spec(tmp_path / "trial", theta_shift=0.05))
    refused = run_trial(other)
    assert refused.status == "failed" and "another trial" in refused.reason


def test_trial_resumes_exactly_from_its_last_checkpoint(tmp_path: Path) -> None:
    proxy = dataclasses.replace(TINY, checkpoint_period=4, keep_checkpoints=True)
    whole = run_trial(_spec(tmp_path / "whole", proxy))
    assert whole.status == "done", whole.error

    # The same trial, interrupted after its checkpoint at iteration 8 (as a job killed by a
    # time-out or a preemption leaves it), then run again.
    folder = tmp_path / "interrupted"
    shutil.copytree(tmp_path / "whole", folder)
    for name in ("result.json", "train/model_final.pth"):
        (folder / name).unlink()
    (folder / "train" / "last_checkpoint").write_text("model_0000007.pth")
    resumed = run_trial(_spec(folder, proxy))

    assert resumed.status == "done" and not resumed.reused
    assert [s["resumed_from"] for s in read_starts(folder)] == [0, 8]
    assert resumed.metrics["iterations"] == 2
    assert resumed.reward == whole.reward
    reference, weights = _final_weights(tmp_path / "whole"), _final_weights(folder)
    assert all(torch.equal(reference[key], weights[key]) for key in reference)


@pytest.mark.parametrize("early_stop", [EarlyStopSettings(), None], ids=["hook", "no_hook"])
def test_nan_loss_is_diverged_with_the_penalty(tmp_path: Path, early_stop) -> None:
    """The weights explode in the first step: the early-stop hook stops the training as soon as
    the head receives NaN/inf predictions; without the hook, the PAP loss's input check (a
    ValueError) or Detectron2's NaN-loss check ends it. Either way the trial *diverged*."""
    proxy = dataclasses.replace(
        TINY, diverged_reward=-1.0, opts={"SOLVER.BASE_LR": 1.0e6, "SOLVER.WARMUP_ITERS": 0}
    )
    spec = _spec(tmp_path / "nan", proxy, early_stop=early_stop)
    result = run_trial(spec)

    assert result.status == "diverged" and result.reward == -1.0, result.error
    assert "NaN" in result.reason, result.reason
    if early_stop is not None:
        assert "predictions became NaN or infinite at iteration" in result.reason
    assert result.metrics["iterations"] < proxy.iterations and "AP" not in result.metrics
    assert load_result(spec.output_dir).status == "diverged"  # stored: never trained again


def test_constant_loss_is_diverged(tmp_path: Path) -> None:
    # A tolerance this loose calls any loss constant once the window is full.
    early_stop = EarlyStopSettings(window=3, tolerance=1.0e9)
    result = run_trial(_spec(tmp_path / "constant", early_stop=early_stop))

    assert result.status == "diverged" and result.reward == 0.0
    assert result.reason.startswith("total loss constant"), result.reason
    assert result.metrics["iterations"] == 2


def test_early_stop_settings_are_part_of_the_trial(tmp_path: Path) -> None:
    folder = tmp_path / "trial"
    default = _spec(folder)
    assert _spec(folder, early_stop=EarlyStopSettings(window=7)).digest() != default.digest()
    assert _spec(folder, early_stop=None).digest() != default.digest()
    assert default.identity()["early_stop"]["window"] == 50


def test_a_failing_trial_is_reported_not_stored(tmp_path: Path) -> None:
    proxy = dataclasses.replace(TINY, train_dataset="no_such_dataset")
    spec = _spec(tmp_path / "broken", proxy)
    result = run_trial(spec)

    assert result.status == "failed" and result.reward is None and not result.scored
    assert "no_such_dataset" in result.reason and "Traceback" in result.error
    assert load_result(spec.output_dir) is None  # running it again retries it
    assert run_trial(spec).status == "failed"


def test_a_trial_imports_its_modules_first(tmp_path: Path) -> None:
    (tmp_path / "failing_project.py").write_text("raise RuntimeError('no GPU here')\n")
    plain = _spec(tmp_path / "trial")
    spec = dataclasses.replace(plain, imports=("failing_project",), python_path=(str(tmp_path),))
    assert "imports" not in plain.identity()  # the digests of trials without imports stay
    assert spec.identity()["imports"] == ["failing_project"] and spec.digest() != plain.digest()
    result = run_trial(spec)
    assert result.status == "failed" and result.reward is None
    assert result.reason == (
        "ModuleImportError: model.imports: importing 'failing_project' failed "
        "(RuntimeError: no GPU here)"
    )
    assert read_starts(tmp_path / "trial") == []  # nothing trained
    missing = dataclasses.replace(_spec(tmp_path / "other"), imports=("no_such_project",))
    assert "no module named 'no_such_project'" in run_trial(missing).reason


def test_result_round_trip_and_proxy_checks() -> None:
    result = TrialResult("t", "done", 1.5, {"AP": 1.5, "APl": float("nan")}, spec_digest="x")
    assert TrialResult.from_dict(json.loads(json.dumps(result.to_dict()))).reward == 1.5
    with pytest.raises(ValueError, match="not a trial result"):
        TrialResult.from_dict({"status": "done"})

    with pytest.raises(ValueError, match="must not set SOLVER.MAX_ITER"):
        ProxySettings(opts={"SOLVER.MAX_ITER": 5}).validate()
    with pytest.raises(ValueError, match="divisible"):
        ProxySettings(ims_per_batch=3, num_gpus=2).validate()
    opts = proxy_config_opts(ProxySettings(iterations=200), seed=3, output_dir="out")
    assert opts[opts.index("SOLVER.STEPS") + 1] == (150, 185)
    assert opts[opts.index("SEED") + 1] == 3


def test_a_result_proves_whose_it_is(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "round000_trial00")
    own = TrialResult(spec.trial_id, "done", 1.5, spec_digest=spec.digest())
    assert own.mismatch(spec) is None
    other_trial = dataclasses.replace(own, trial_id="round000_trial01")
    assert "round000_trial01" in other_trial.mismatch(spec)
    other_settings = dataclasses.replace(own, spec_digest="f" * 64)
    assert "spec digest ffffffffffff" in other_settings.mismatch(spec)
    assert "carries no spec digest" in dataclasses.replace(own, spec_digest=None).mismatch(spec)
    # The digest covers what the trial trains: θ, the proxy, the seed, the model config's content.
    assert own.mismatch(dataclasses.replace(spec, seed=spec.seed + 1)) is not None
    assert own.mismatch(dataclasses.replace(spec, output_dir=str(tmp_path / "moved"))) is None
    with pytest.raises(ValueError, match="proxy.iterations must be an integer >= 1, got True"):
        ProxySettings(iterations=True).validate()


def test_concurrent_runs_of_one_trial_train_once(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "twice")
    results = []
    threads = [threading.Thread(target=lambda: results.append(run_trial(spec))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.reused for r in results) == [False, True]
    assert results[0].reward == results[1].reward
    assert len(read_starts(spec.output_dir)) == 1


def _coco_ap_of_the_evaluation(train_dir: Path, val_entry: list, task: str) -> float:
    """COCO AP (0-100) recomputed with pycocotools from the detections the evaluation wrote."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    name, json_file, _ = val_entry
    detections = json.loads(
        (train_dir / "inference" / name / "coco_instances_results.json").read_text()
    )
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(json_file)
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections), task)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return 100.0 * float(evaluation.stats[0])


def test_a_mask_rcnn_trial_is_scored_by_mask_ap_on_request(tmp_path: Path) -> None:
    """``proxy.reward_task: segm``: the reward is the mask AP of the evaluation, the box AP is
    kept beside it."""
    val_entry = tiny_val_dataset(tmp_path, num_images=20)
    proxy = ProxySettings(
        iterations=10,
        ims_per_batch=2,
        checkpoint_period=100,
        val_dataset=val_entry[0],
        reward_task="segm",
        opts={"SOLVER.WARMUP_ITERS": 2, "MODEL.PAPLOSS.DATASETS": [val_entry]},
        keep_checkpoints=False,
    )
    spec = _spec(
        tmp_path / "mask",
        proxy,
        config_file=MASK_RCNN_CONFIG,
        heads=("RPN", "ROI_HEADS"),
    )
    result = run_trial(spec)

    assert result.status == "done", result.error
    train_dir = Path(spec.output_dir) / "train"
    segm_ap = _coco_ap_of_the_evaluation(train_dir, val_entry, "segm")
    bbox_ap = _coco_ap_of_the_evaluation(train_dir, val_entry, "bbox")
    assert segm_ap > 0 and segm_ap != pytest.approx(bbox_ap)
    assert result.reward == pytest.approx(segm_ap, abs=1e-6)
    assert result.metrics["AP"] == result.reward and "segm/AP" not in result.metrics
    assert result.metrics["bbox/AP"] == pytest.approx(bbox_ap, abs=1e-6)
    # the same trial scored by box AP is another trial (another digest)
    box_spec = _spec(tmp_path / "mask", dataclasses.replace(proxy, reward_task="bbox"))
    assert box_spec.digest() != _spec(tmp_path / "mask", proxy).digest()


def test_mask_ap_reward_of_a_model_without_masks_fails_naming_the_key(tmp_path: Path) -> None:
    proxy = dataclasses.replace(TINY, reward_task="segm")
    result = run_trial(_spec(tmp_path / "retinanet", proxy))
    assert result.status == "failed" and not read_starts(tmp_path / "retinanet")
    assert result.reason.startswith(
        "SettingsError: proxy.reward_task: 'segm' (mask AP) needs a model with a mask branch, "
        "but MODEL.MASK_ON is False"
    ), result.reason
    with pytest.raises(SettingsError, match="proxy.reward_task must be one of .'bbox', 'segm'."):
        ProxySettings(reward_task="keypoints")


def test_a_partial_training_continued_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    """Successive halving: a trial trained to ``stop_after`` (a prefix of the full schedule),
    evaluated, then continued from its checkpoint ends with the weights and reward of a trial
    trained without a stop."""
    proxy = dataclasses.replace(TINY, iterations=6, checkpoint_period=4, keep_checkpoints=True)
    whole = run_trial(_spec(tmp_path / "whole", proxy))
    assert whole.status == "done", whole.error

    folder = tmp_path / "halved"
    full = _spec(folder, proxy)
    partial = dataclasses.replace(full, stop_after=3)
    assert "stop_after" not in full.identity() and partial.identity()["stop_after"] == 3
    assert partial.digest() != full.digest() and partial.folder_digest() == full.digest()
    first = run_trial(partial)
    assert first.status == "done" and first.spec_digest == partial.digest(), first.error
    assert first.metrics["iterations"] == 3 and first.reward != whole.reward
    assert load_result(folder) is None and load_result(folder, partial=True).reward == first.reward
    assert (folder / "train" / "model_0000002.pth").is_file(), "the checkpoint at the stop"
    assert not (folder / "train" / "model_final.pth").exists()
    assert run_trial(partial).reused  # a partial result is reused like a full one

    second = run_trial(full)
    assert second.status == "done" and second.spec_digest == full.digest(), second.error
    assert [s["resumed_from"] for s in read_starts(folder)] == [0, 3]
    assert second.metrics["iterations"] == 3 and second.reward == whole.reward
    reference, weights = _final_weights(tmp_path / "whole"), _final_weights(folder)
    assert all(torch.equal(reference[key], weights[key]) for key in reference)
    assert json.loads((folder / "spec.json").read_text())["digest"] == full.digest()
    with pytest.raises(ValueError, match="stop_after must be an integer in .1, 5."):
        dataclasses.replace(full, stop_after=6)
