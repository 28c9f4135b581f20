"""Search controller: rounds of real proxy trainings, retries, kill + resume, journal safety."""

import logging
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import cloudpickle
import numpy as np
import pytest
import yaml
from search_testing import (
    cli_command,
    dead_pid,
    journal_snapshot,
    peak_overlap,
    tiny_search_overrides,
    write_settings,
)
from submitit.core.utils import cloudpickle_dump

from paploss.search.controller import SearchController, SearchError, round_seed
from paploss.search.journal import JournalError, SearchJournal
from paploss.search.settings import SettingsError
from paploss.search.settings_loading import load_settings
from paploss.search.spaces import SearchSpace
from paploss.search.trials import TrialResult, TrialSpec, load_result, read_starts

# Local jobs unpickle the trial functions in a fresh interpreter where this test module is not
# importable: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


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


def training_intervals(output: Path) -> Dict[str, List[Tuple[float, float]]]:
    """Per trial folder: (start, end) of each training run that ended with the stored result.

    A training starts when its trial records the start (``starts.jsonl``) and ends when it
    stores ``result.json``; this test's trainings are never interrupted.
    """
    intervals = {}
    for folder in sorted((output / "trials").iterdir()):
        result = load_result(folder)
        assert result is not None, f"{folder.name} has no result"
        intervals[folder.name] = [(s["time"], result.finished_at) for s in read_starts(folder)]
    return intervals


def _reward(spec: TrialSpec) -> float:
    return -float(np.sum((np.asarray(spec.theta) - 0.3) ** 2))


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
        return TrialResult(
            spec.trial_id, "failed", None, reason="flaky", error="flaky", spec_digest=spec.digest()
        )
    reward = _reward(spec)
    return TrialResult(spec.trial_id, "done", reward, {"AP": reward}, spec_digest=spec.digest())


def crash_once_trial(spec: TrialSpec) -> TrialResult:
    """A job trial that dies on its first call after printing a warning, then succeeds."""
    folder = Path(spec.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    calls_file = folder / "calls"
    calls = int(calls_file.read_text()) + 1 if calls_file.exists() else 1
    calls_file.write_text(str(calls))
    if calls == 1:
        print("UserWarning: torch.meshgrid: in an upcoming release ...", file=sys.stderr)
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return TrialResult(
        spec.trial_id, "done", _reward(spec), {"AP": _reward(spec)}, spec_digest=spec.digest()
    )


def counted_trial(spec: TrialSpec) -> TrialResult:
    """:func:`crash_once_trial` that never crashes: counts its calls, returns its own result."""
    folder = Path(spec.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    calls_file = folder / "calls"
    calls_file.write_text(str(int(calls_file.read_text()) + 1 if calls_file.exists() else 1))
    return TrialResult(
        spec.trial_id, "done", _reward(spec), {"AP": _reward(spec)}, spec_digest=spec.digest()
    )


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
    assert trials[2].error is None
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


def test_a_mask_ap_reward_without_a_mask_branch_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, rounds=1, candidates=2, proxy__reward_task="segm")
    with pytest.raises(SettingsError) as info:
        SearchController(settings, tmp_path / "search", trial_fn=scripted_trial).run()
    message = str(info.value)
    assert message.startswith("proxy.reward_task: 'segm' (mask AP) needs a model with a mask")
    assert "MODEL.MASK_ON is False" in message and "pap_retinanet_identity.yaml" in message
    assert "\n" not in message and not (tmp_path / "search").exists()


def test_resume_without_a_journal_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path, rounds=1, candidates=2)
    killed_early = tmp_path / "killed_before_its_journal"
    killed_early.mkdir()
    for folder in (tmp_path / "mistyped", killed_early):
        with pytest.raises(SearchError, match="no search to resume.*without --resume"):
            SearchController(settings, folder, resume=True, trial_fn=scripted_trial).run()
    assert not (tmp_path / "mistyped").exists() and not list(killed_early.iterdir())


def test_a_module_of_model_imports_that_fails_stops_the_search_in_one_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "broken_project.py").write_text("import no_such_dependency_xyz\n")
    settings = load_settings(
        None,
        tiny_search_overrides(tmp_path, rounds=1)
        + [f"model.python_path=[{tmp_path}]", "model.imports=[broken_project]"],
    )
    with pytest.raises(SearchError) as info:
        SearchController(settings, tmp_path / "search", trial_fn=scripted_trial).run()
    assert str(info.value) == (
        "model.imports: importing 'broken_project' failed "
        "(ModuleNotFoundError: No module named 'no_such_dependency_xyz')"
    )
    assert not (tmp_path / "search" / "journal.sqlite").exists()


# ------------------------------------------------------------------------------ local launcher


def test_a_result_of_another_trial_is_refused_and_the_trial_runs_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = tiny_search_overrides(tmp_path, rounds=1, candidates=2)
    overrides += ["search.score_mean=false", "search.max_attempts=1"]
    output = tmp_path / "search"

    def broken(spec: TrialSpec) -> TrialResult:
        raise RuntimeError("broken environment")

    # A round whose trials all failed stays open ...
    with pytest.raises(SearchError, match="no sample could be scored"):
        SearchController(load_settings(None, overrides), output, trial_fn=broken).run()
    # ... and is made to look like one a killed controller leaves: both trials running as local
    # jobs that are gone, under whose ids (process ids come back) result files of another trial
    # lie: one of trial 1, one of trial 1 with other settings.
    planted = [
        TrialResult("round000_trial01", "done", 99.0, {"AP": 99.0}, spec_digest="0" * 64),
        TrialResult("round000_trial01", "done", 98.0, {"AP": 98.0}, spec_digest="f" * 64),
    ]
    (output / "jobs").mkdir(exist_ok=True)
    with SearchJournal.open(str(output / "journal.sqlite")) as journal:
        for index, result in enumerate(planted):
            pid = dead_pid()
            cloudpickle_dump(("success", result), output / "jobs" / f"{pid}_0_result.pkl")
            journal.update_trial(
                0, index, status="running", job_id=f"local:{pid}", attempts=0, error=None
            )

    settings = load_settings(None, overrides + ["launcher.kind=local", "launcher.parallel=2"])
    with caplog.at_level(logging.WARNING, logger="paploss.search"):
        SearchController(settings, output, resume=True, trial_fn=counted_trial).run()

    refusals = [r.getMessage() for r in caplog.records if "not this trial's" in r.getMessage()]
    assert len(refusals) == 2, refusals
    assert "the result of round000_trial01 (spec digest 000000000000)" in refusals[0]
    assert "is not that of round000_trial00" in refusals[0]
    assert (
        "spec digest ffffffffffff" in refusals[1] and "not that of round000_trial01" in refusals[1]
    )
    with SearchJournal.open(str(output / "journal.sqlite"), read_only=True) as journal:
        trials = journal.trials()
        update = journal.get_round(0).update_stats
    assert [t.status for t in trials] == ["done", "done"]
    assert [t.reward for t in trials] == pytest.approx(
        [-float(np.sum((np.asarray(t.theta) - 0.3) ** 2)) for t in trials]
    )
    assert update["reward_max"] < 0  # the planted rewards never reached the policy
    assert [t.attempts for t in trials] == [1, 1]  # a refused result is no attempt of the trial
    assert all((output / t.folder / "calls").read_text() == "1" for t in trials)


def test_a_crashed_job_is_retried_with_the_cause_as_its_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = tiny_search_overrides(tmp_path, rounds=1, candidates=1, launcher="local")
    overrides += ["search.score_mean=false", "search.max_attempts=2"]
    with caplog.at_level(logging.WARNING, logger="paploss.search"):
        SearchController(
            load_settings(None, overrides), tmp_path / "search", trial_fn=crash_once_trial
        ).run()
    (retry,) = [r.getMessage() for r in caplog.records if "launching it again" in r.getMessage()]
    assert re.fullmatch(
        r"trials/round000_trial00: job \d+ ended without a result \(process ended\); "
        r"launching it again \(1 of 2 attempts used\)",
        retry,
    ), retry
    with SearchJournal.open(str(tmp_path / "search" / "journal.sqlite"), read_only=True) as journal:
        (trial,) = journal.trials()
    assert (trial.status, trial.attempts, trial.error) == ("done", 2, None)


@pytest.mark.slow
def test_local_trials_keep_running_and_are_reattached_after_a_kill(tmp_path: Path) -> None:
    output = tmp_path / "search"
    args = ["run", "--output", str(output), "--no-report"]
    args += tiny_search_overrides(tmp_path, rounds=1, candidates=3, launcher="local")
    # ppo: three samples (the default search's cmaes needs four)
    args += ["launcher.parallel=2", "search.score_mean=false", "search.method=ppo"]
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
    intervals = training_intervals(output)
    assert all(len(runs) == 1 for runs in intervals.values()), "no trial trained twice"
    # The third trial waited for one of the two re-attached ones: never 3 trainings at once.
    assert peak_overlap([run for runs in intervals.values() for run in runs]) == 2
    assert os.path.isdir(output / "jobs")


#: When the chaos test kills its controller: ``(what the controller run must have logged, or None
#: for its start-up; the most seconds to wait after that)``, in the order a search passes them;
#: the delays are drawn at random.
_KILL_POINTS = [
    (None, 3.0),  # while it starts, before its journal exists
    ("search space:", 2.0),  # while it sets up the screening and screens round 0
    ("to train of", 8.0),  # while round 0 trains
    ("resuming, ", 6.0),  # a resumed controller, while it re-attaches and waits
    ("trials done", 0.0),  # right after a trial was recorded
    ("closed:", 0.0),  # right after round 0 closed (sampling, screening round 1)
    (None, 6.0),  # while a resumed controller starts
    ("screened", 0.0),  # round 1 screened, before it is stored
    ("to train of", 8.0),  # while round 1 trains
    ("trials done", 3.0),  # after a trial of round 1 was recorded
    ("closed:", 0.0),  # right after round 1 closed
    ("resuming, ", 8.0),  # while round 2 trains
]


@pytest.mark.slow
def test_search_killed_at_random_points_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    """SIGKILLs of the controller at random moments of every phase (start-up, screening, trials,
    the close of a round), each followed by the resume command of docs/search.md (or by a new
    start when it died before its journal existed). The trainings run on as local jobs meanwhile. The
    journal must end equal to that of an uninterrupted run, no trial may train twice, and never
    more than ``launcher.parallel`` trainings may run at once.
    """
    parallel = 2
    # Eight rounds: enough phases after the last planned kill that the search cannot end first.
    overrides = tiny_search_overrides(tmp_path, rounds=8, candidates=2, launcher="local")
    overrides += [f"launcher.parallel={parallel}", "proxy.iterations=20"]
    overrides += ["proxy.checkpoint_period=5"]
    config = write_settings(tmp_path, overrides)

    start = time.monotonic()
    reference = tmp_path / "reference"
    run = subprocess.run(
        cli_command("run", "--config", str(config), "--output", str(reference), "--no-report"),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    uninterrupted_s = time.monotonic() - start

    output, log = tmp_path / "chaos", tmp_path / "chaos.log"
    log.touch()
    rng = random.Random(11)
    kills: List[str] = []  # where each kill struck: the killed controller's last log line
    lives = 0
    start = time.monotonic()
    while True:
        if (output / "journal.sqlite").exists():
            args = ["run", "--resume", "--output", str(output), "--no-report"]
        else:
            args = ["run", "--config", str(config), "--output", str(output), "--no-report"]
        offset = log.stat().st_size
        with open(log, "a") as handle:
            proc = subprocess.Popen(cli_command(*args), stdout=handle, stderr=handle)
        lives += 1

        def logged() -> List[str]:
            with open(log) as handle:
                handle.seek(offset)
                return [line for line in handle.read().splitlines() if line.strip()]

        if len(kills) == len(_KILL_POINTS):
            assert proc.wait(timeout=1200) == 0, log.read_text()[-3000:]
            break
        pattern, most_s = _KILL_POINTS[len(kills)]
        deadline = time.monotonic() + 300
        while pattern is not None and not any(pattern in line for line in logged()):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        try:  # the search may finish meanwhile (only near its end)
            proc.wait(timeout=rng.uniform(0.5 if pattern is None else 0.0, most_s))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            lines = logged()
            kills.append(lines[-1][11:100] if lines else "(start-up, nothing logged yet)")
            continue
        assert proc.returncode == 0, log.read_text()[-3000:]
        break
    interrupted_s = time.monotonic() - start

    assert len(kills) >= 10, kills
    assert journal_snapshot(output / "journal.sqlite") == journal_snapshot(
        reference / "journal.sqlite"
    )
    intervals = training_intervals(output)
    retrained = sorted(name for name, runs in intervals.items() if len(runs) != 1)
    assert not retrained, f"trained more than once: {retrained}"
    peak = peak_overlap([run for runs in intervals.values() for run in runs])
    assert peak <= parallel
    jobs = len(list((output / "jobs").glob("*_submitted.pkl")))
    print(
        f"\n{len(kills)} kills in {lives} controller runs; {jobs} trial jobs for "
        f"{len(intervals)} trainings ({jobs - len(intervals)} launched again, none trained "
        f"twice); peak {peak} trainings at once (parallel {parallel}); uninterrupted "
        f"{uninterrupted_s:.0f} s, interrupted {interrupted_s:.0f} s"
    )
    for index, line in enumerate(kills):
        print(f"  kill {index + 1}: after {line}")
