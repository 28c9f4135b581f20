"""Searches whose trials run as real Slurm array jobs (localhost cluster), through submitit."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from search_testing import (
    MODEL_CONFIG,
    REPO_ROOT,
    cli_command,
    tiny_search_overrides,
    tiny_val_dataset,
    write_settings,
)

from paploss.search.journal import SearchJournal
from paploss.search.launchers import TrialLauncher
from paploss.search.settings import ProxySettings
from paploss.search.spaces import SearchSpace
from paploss.search.trials import TrialSpec, read_starts, run_trial

pytestmark = pytest.mark.slurm


def test_two_round_search_on_slurm_then_train_the_export(slurm_cluster, tmp_path: Path) -> None:
    overrides = tiny_search_overrides(tmp_path, rounds=2, candidates=2, launcher="slurm")
    config = write_settings(tmp_path, overrides)
    output = tmp_path / "search"
    slurm_flags = ["--time", "10", "--cpus", "1", "--mem", "2", "--sbatch", "comment=paploss-e2e"]
    result = subprocess.run(
        cli_command("run", "--config", str(config), "--output", str(output), *slurm_flags),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    with SearchJournal.open(str(output / "journal.sqlite"), read_only=True) as journal:
        trials = journal.trials()
        assert [t.status for t in trials] == ["done"] * 6
        assert [r.status for r in journal.rounds()] == ["closed", "closed"]
    # One job array per round, one array task per trial.
    arrays = []
    for round_index in (0, 1):
        job_ids = [t.job_id for t in trials if t.round == round_index]
        assert all(job_id.startswith("slurm:") for job_id in job_ids)
        array_ids = {job_id[len("slurm:") :].split("_")[0] for job_id in job_ids}
        tasks = [job_id.split("_")[1] for job_id in job_ids]
        assert len(array_ids) == 1 and tasks == ["0", "1", "2"]
        arrays += array_ids
    assert arrays[0] != arrays[1]
    script = (output / "jobs" / f"{arrays[0]}_submission.sh").read_text()
    for flag in ("--array=0-2", "--cpus-per-task=1", "--mem=2G", "--time=10", "--requeue"):
        assert flag in script
    assert "--comment=paploss-e2e" in script
    # Each trial ran once, inside its Slurm array task.
    for trial in trials:
        (start,) = read_starts(output / trial.folder)
        assert start["job_id"] == trial.job_id[len("slurm:") :]

    # The exported config trains with tools/train_net.py.
    exported = output / "best.yaml"
    assert exported.is_file()
    val_entry = tiny_val_dataset(tmp_path)
    train = subprocess.run(
        [
            sys.executable, "tools/train_net.py", "--config-file", str(exported),
            "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2",
            "DATASETS.TEST", f"('{val_entry[0]}',)",
            "MODEL.PAPLOSS.DATASETS", repr([val_entry]),
            "OUTPUT_DIR", str(tmp_path / "train"),
        ],  # fmt: skip
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert (tmp_path / "train" / "model_final.pth").is_file()


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def test_timed_out_trial_is_requeued_and_resumes_from_its_checkpoint(
    slurm_cluster, tmp_path: Path
) -> None:
    space = SearchSpace(["RETINANET"])
    theta = np.clip(space.identity_theta() + 0.05, 0, 1)
    val_entry = tiny_val_dataset(tmp_path)
    proxy = ProxySettings(
        iterations=60,
        ims_per_batch=2,
        checkpoint_period=10,
        val_dataset=val_entry[0],
        opts={
            "SOLVER.WARMUP_ITERS": 2,
            "MODEL.RETINANET.SCORE_THRESH_TEST": 0.0,
            "MODEL.PAPLOSS.DATASETS": [val_entry],
        },
    )

    def spec(folder: Path) -> TrialSpec:
        return TrialSpec(
            trial_id=folder.name,
            round=0,
            index=0,
            theta=tuple(theta.tolist()),
            overrides=space.to_overrides(theta),
            config_file=MODEL_CONFIG,
            seed=11,
            proxy=proxy,
            output_dir=str(folder),
        )

    launcher = TrialLauncher(
        "slurm",
        tmp_path / "jobs",
        timeout_min=10,
        cpus_per_task=1,
        mem_gb=2,
        poll_interval_s=0.3,
        scheduler_poll_s=0.5,
        result_grace_s=5.0,
    )
    folder = tmp_path / "requeued"
    (handle,) = launcher.submit(run_trial, [spec(folder)])
    marker = folder / "train" / "last_checkpoint"
    _wait_for(lambda: marker.exists() and marker.read_text() != "", 240, "a first checkpoint")
    handle.job._interrupt(timeout=True)  # the signal Slurm sends before the time limit
    (outcome,) = launcher.wait([handle], timeout_s=400)
    assert outcome.ok, outcome.error
    assert outcome.result.status == "done", outcome.result.error

    starts = read_starts(folder)
    assert len(starts) == 2 and starts[0]["resumed_from"] == 0 and starts[1]["resumed_from"] >= 10
    assert starts[0]["job_id"] == starts[1]["job_id"] == handle.job_id
    assert handle.job.submission().function.requeues == 1

    # Exact resume: the same reward as the same trial run without interruption.
    reference = run_trial(spec(tmp_path / "uninterrupted"))
    assert reference.status == "done" and outcome.result.reward == reference.reward
