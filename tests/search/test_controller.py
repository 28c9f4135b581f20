"""Search controller: rounds of real proxy trainings, retries, kill + resume, journal safety."""

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from search_testing import cli_command, journal_snapshot, tiny_search_overrides, write_settings

from paploss.search.controller import SearchController, SearchError, round_seed
from paploss.search.journal import JournalError, SearchJournal
from paploss.search.settings import load_settings
from paploss.search.space import SearchSpace
from paploss.search.trial import TrialResult, TrialSpec, read_starts


def _settings(folder: Path, **kwargs: Any):
    return load_settings(None, tiny_search_overrides(folder, **kwargs))


def _wait_for(predicate, timeout_s: float, what: str, proc=None) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the search ended (code {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def _checkpointed(trial_folder: Path) -> bool:
    marker = trial_folder / "train" / "last_checkpoint"
    try:
        return marker.read_text().strip() not in ("", "model_final.pth")
    except OSError:
        return False


# ------------------------------------------------------------------------------ real trainings


def test_killed_search_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    # The reference: an uninterrupted search of 2 rounds x (2 samples + the policy mean).
    config = write_settings(tmp_path, tiny_search_overrides(tmp_path))
    reference = tmp_path / "reference"
    summary = SearchController(load_settings(str(config)), reference).run()
    assert summary.rounds_closed == 2 and summary.trials_run == 6
    with SearchJournal.open(str(reference / "journal.sqlite"), read_only=True) as journal:
        trials = journal.trials()
        assert [t.status for t in trials] == ["done"] * 6
        assert all(t.reward >= 0 and t.attempts == 1 for t in trials)
        assert len({t.reward for t in trials if t.round == 0}) > 1  # the losses make a difference
        assert [t.role for t in trials] == ["sample", "sample", "mean"] * 2
        seeds = [{t.seed for t in trials if t.round == r} for r in (0, 1)]
        assert seeds == [{round_seed(7, 0)}, {round_seed(7, 1)}] and seeds[0] != seeds[1]
        identity = SearchSpace(["RETINANET"]).identity_theta()
        assert np.allclose(journal.trial(0, 2).theta, identity)  # μ of round 0: the identity
        assert not np.allclose(journal.trial(1, 2).theta, identity)  # ... moved by PPO
        assert journal.get_round(1).policy_state_end["round"] == 2
    assert all(len(read_starts(reference / t.folder)) == 1 for t in trials)

    # The same search in a process that is SIGKILLed in round 1 while trial 1 trains (after
    # its first checkpoint), then resumed.
    killed = tmp_path / "killed"
    args = ["run", "--config", str(config), "--output", str(killed), "--no-report"]
    proc = subprocess.Popen(cli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    interrupted = killed / "trials" / "round001_trial01"
    try:
        _wait_for(lambda: _checkpointed(interrupted), 240, "round 1 trial 1 to checkpoint", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    kill_time = time.time()
    with SearchJournal.open(str(killed / "journal.sqlite")) as journal:  # writable: recovers
        finished_before = {(t.round, t.index) for t in journal.trials() if t.is_final}
        assert journal.open_round().round == 1
    assert {(0, 0), (0, 1), (0, 2), (1, 0)} <= finished_before and (1, 1) not in finished_before

    resumed = subprocess.run(
        cli_command("run", "--resume", "--output", str(killed), "--no-report"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming the search" in resumed.stderr

    assert journal_snapshot(killed / "journal.sqlite") == journal_snapshot(
        reference / "journal.sqlite"
    )
    for round_index, index in sorted(finished_before):
        starts = read_starts(killed / "trials" / f"round{round_index:03d}_trial{index:02d}")
        assert len(starts) == 1 and starts[0]["time"] < kill_time, "a finished trial ran again"
    starts = read_starts(interrupted)
    assert len(starts) == 2 and starts[1]["resumed_from"] > 0  # resumed from its checkpoint


# ------------------------------------------------------------------------------ fake trials


def scripted_trial(spec: TrialSpec) -> TrialResult:
    """A trial without training: reward -|θ - 0.3|²; index 1 always raises, index 2 fails once.

    Counts its calls in ``<output_dir>/calls``.
    """
    folder = Path(spec.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    calls_file = folder / "calls"
    calls = int(calls_file.read_text()) + 1 if calls_file.exists() else 1
    calls_file.write_text(str(calls))
    if spec.index == 1:
        raise RuntimeError(f"trial {spec.trial_id} cannot run")
    if spec.index == 2 and calls == 1:
        return TrialResult(spec.trial_id, "failed", None, reason="flaky", error="flaky failure")
    reward = -float(np.sum((np.asarray(spec.theta) - 0.3) ** 2))
    return TrialResult(spec.trial_id, "done", reward, {"AP": reward}, spec_digest=spec.digest())


def test_raising_trial_is_retried_then_failed_and_left_out(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        tiny_search_overrides(tmp_path, rounds=1, candidates=4)
        + ["search.max_attempts=2", "search.score_mean=false"],
    )
    SearchController(settings, tmp_path, trial_fn=scripted_trial).run()

    with SearchJournal.open(str(tmp_path / "journal.sqlite"), read_only=True) as journal:
        trials = journal.trials(round=0)
        update = journal.get_round(0).update_stats
    statuses = [(t.status, t.attempts) for t in trials]
    assert statuses == [("done", 1), ("failed", 2), ("done", 2), ("done", 1)]
    assert "RuntimeError: trial round000_trial01 cannot run" in trials[1].error
    assert trials[1].reward is None
    assert (tmp_path / "trials" / "round000_trial01" / "calls").read_text() == "2"
    assert update["num_samples"] == 3 and update["num_failed"] == 1


def test_round_without_any_scored_sample_stops_the_search(tmp_path: Path) -> None:
    settings = load_settings(
        None, tiny_search_overrides(tmp_path, rounds=1, candidates=1, search__score_mean=False)
    )

    def always_raises(spec: TrialSpec) -> TrialResult:
        raise RuntimeError("broken environment")

    with pytest.raises(SearchError, match="no sample could be scored.*broken environment"):
        SearchController(settings, tmp_path, trial_fn=always_raises).run()
    with SearchJournal.open(str(tmp_path / "journal.sqlite"), read_only=True) as journal:
        assert journal.open_round().round == 0  # nothing was updated from a failed round
    # Once the cause is fixed, resuming tries the failed trials again.
    summary = SearchController(settings, tmp_path, resume=True, trial_fn=scripted_trial).run()
    assert summary.rounds_closed == 1


# ------------------------------------------------------------------------------ journal safety


def test_existing_corrupt_or_foreign_journal_is_refused_and_untouched(tmp_path: Path) -> None:
    settings = _settings(tmp_path, rounds=1, candidates=2)
    path = tmp_path / "search" / "journal.sqlite"
    path.parent.mkdir()

    path.write_bytes(b"this is not a journal\n" * 10)
    before = path.read_bytes()
    with pytest.raises(SearchError, match="already holds a search.*--resume"):
        SearchController(settings, path.parent, trial_fn=scripted_trial).run()
    with pytest.raises(JournalError, match="not an SQLite database"):
        SearchController(settings, path.parent, resume=True, trial_fn=scripted_trial).run()
    assert path.read_bytes() == before

    path.unlink()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT)")
    before = path.read_bytes()
    with pytest.raises(JournalError, match="not a paploss search journal"):
        SearchController(settings, path.parent, resume=True, trial_fn=scripted_trial).run()
    assert path.read_bytes() == before


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path, rounds=1, candidates=2)
    SearchController(settings, tmp_path, trial_fn=scripted_trial).run()
    before = (tmp_path / "journal.sqlite").read_bytes()
    other = _settings(tmp_path, rounds=1, candidates=3)
    with pytest.raises(JournalError, match="other search settings.*search.candidates"):
        SearchController(other, tmp_path, resume=True, trial_fn=scripted_trial).run()
    assert (tmp_path / "journal.sqlite").read_bytes() == before
    # The saved copy of the settings is readable YAML naming the launcher too.
    saved = yaml.safe_load((tmp_path / "settings.yaml").read_text())
    assert saved["search"]["candidates"] == 2 and saved["launcher"]["kind"] == "debug"


# ------------------------------------------------------------------------------ local launcher


@pytest.mark.slow
def test_local_trials_keep_running_and_are_reattached_after_a_kill(tmp_path: Path) -> None:
    output = tmp_path / "search"
    args = ["run", "--output", str(output), "--no-report"]
    args += tiny_search_overrides(tmp_path, rounds=1, candidates=3, launcher="local")
    args += ["launcher.parallel=2", "search.score_mean=false"]
    proc = subprocess.Popen(cli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for(
            lambda: all(
                (output / "trials" / f"round000_trial{i:02d}" / "starts.jsonl").exists()
                for i in (0, 1)
            ),
            240,
            "two local trials to start",
            proc,
        )
    finally:
        proc.send_signal(signal.SIGKILL)  # the controller only: its trial processes live on
        proc.wait()
    with SearchJournal.open(str(output / "journal.sqlite")) as journal:
        jobs = {t.index: t.job_id for t in journal.trials()}
    assert jobs[0].startswith("local:") and jobs[1].startswith("local:")

    resumed = subprocess.run(
        cli_command("run", "--resume", "--output", str(output), "--no-report"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "re-attached 2 running trial job(s)" in resumed.stderr
    with SearchJournal.open(str(output / "journal.sqlite"), read_only=True) as journal:
        trials = journal.trials()
    assert [t.status for t in trials] == ["done"] * 3
    for trial in trials:
        assert len(read_starts(output / trial.folder)) == 1, "no trial trained twice"
    assert os.path.isdir(output / "jobs")
