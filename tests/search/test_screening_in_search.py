"""Screening inside the search: rejected and duplicate candidates, resume, settings, reports."""

import json
from pathlib import Path
from typing import Any, List

import numpy as np
import pytest
import yaml
from search_testing import REPO_ROOT, tiny_search_overrides

from paploss.search.controller import SearchController
from paploss.search.journal import JournalError, NewTrial, SearchJournal, TrialRecord
from paploss.search.proposers import TruncatedNormalPolicy
from paploss.search.reports import format_status, plot_rewards, round_summaries
from paploss.search.reports.summary import settings_summary
from paploss.search.screening import Screener
from paploss.search.settings import ScreeningSettings, SettingsError
from paploss.search.settings_loading import load_settings
from paploss.search.trials import TrialResult, TrialSpec

DEFAULT_CONFIG = REPO_ROOT / "configs" / "search" / "default.yaml"
#: The tiny searches screen with the equivalence check only (see search_testing.TINY_SCREENING):
#: which candidates are duplicates then does not depend on the rejection protocol.
REJECTION = "screening.rejection.enabled=true"

CALLS: List[str] = []


def counted_trial(spec: TrialSpec) -> TrialResult:
    """A trial without training (reward -|θ - 0.3|²) that records every call in ``CALLS``."""
    CALLS.append(spec.trial_id)
    Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
    reward = -float(np.sum((np.asarray(spec.theta) - 0.3) ** 2))
    return TrialResult(spec.trial_id, "done", reward, {"AP": reward}, spec_digest=spec.digest())


class Interrupt(BaseException):
    """Stands for a killed controller (not an ``Exception``: nothing records it as a failure)."""


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    CALLS.clear()


def _settings(folder: Path, *extra: str, **kwargs: Any):
    return load_settings(None, tiny_search_overrides(folder, **kwargs) + list(extra))


def _trials(folder: Path):
    with SearchJournal.open(str(folder / "journal.sqlite"), read_only=True) as journal:
        return journal.trials(), journal.rounds()


# ------------------------------------------------------------------------------ rejection


def test_rejected_candidates_are_stored_not_trained_and_still_update_the_policy(
    tmp_path: Path,
) -> None:
    # No candidate can gain 10^9 AP points: every sample is rejected; the policy mean is exempt.
    settings = _settings(
        tmp_path,
        REJECTION,
        "screening.rejection.min_ap_gain=1.0e+9",
        "screening.rejection.rejected_reward=-1.5",
        rounds=2,
        candidates=2,
    )
    summary = SearchController(settings, tmp_path / "search").run()

    trials, rounds = _trials(tmp_path / "search")
    assert [(t.round, t.role, t.status) for t in trials] == [
        (0, "sample", "rejected"),
        (0, "sample", "rejected"),
        (0, "mean", "done"),
        (1, "sample", "rejected"),
        (1, "sample", "rejected"),
        (1, "mean", "done"),
    ]
    for trial in trials[:2] + trials[3:5]:
        assert trial.reward == -1.5 and trial.folder is None and trial.job_id is None
        assert trial.attempts == 0 and trial.is_final
        screening = trial.metrics["screening"]
        assert screening["status"] == "rejected" and screening["score"] < 1.0e9
        assert set(screening["rejection"]) == {"RETINANET"}
        assert len(screening["fingerprint"]) == 64
    mean = trials[2]
    assert mean.metrics["screening"]["exempt"] and mean.metrics["screening"]["rejection"] == {}
    assert mean.metrics["screening"]["fingerprint"] and mean.reward >= 0
    # Only the two policy means were trained: no folder, no job for a rejected candidate.
    assert summary.trials_run == 2
    folders = sorted(p.name for p in (tmp_path / "search" / "trials").iterdir())
    assert folders == ["round000_trial02", "round001_trial02"]
    spec = json.loads((tmp_path / "search" / mean.folder / "spec.json").read_text())
    assert spec["early_stop"] == {
        "enabled": True,
        "window": 50,
        "tolerance": 1e-6,
        "check_predictions": True,
    }
    # The PPO update ran on the rejected samples with their reward.
    assert [r.status for r in rounds] == ["closed", "closed"]
    stats = rounds[0].update_stats
    assert stats["num_samples"] == 2 and stats["num_rejected"] == 2
    assert stats["reward_mean"] == -1.5 and stats["num_duplicates"] == 0
    assert rounds[1].policy_state_end["round"] == 2

    with SearchJournal.open(str(tmp_path / "search" / "journal.sqlite"), read_only=True) as j:
        status = format_status(j, show_trials=True)
        summaries = round_summaries(j)
        png = plot_rewards(j, tmp_path / "rewards.png")
    assert "screening: 4 rejected, 0 duplicate(s) of 4 samples" in status
    round_rows = [line.split() for line in status.splitlines() if line.split()[1:2] == ["closed"]]
    assert [row[3] for row in round_rows] == ["1/0/0/2/0", "1/0/0/2/0"]
    rejected_rows = [line for line in status.splitlines() if " rejected " in line]
    assert len(rejected_rows) == 4
    assert all("AP gain " in line and "AUC" not in line for line in rejected_rows)
    assert summaries[0].statuses == ["rejected", "rejected"]
    assert Path(png).read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "score, shown", [("final", "AP gain 3.25 < 5"), ("auc", "AP gain AUC 3.25 < 5")]
)
def test_a_rejected_trial_names_the_rejection_score(score, shown):
    from paploss.search.reports.status import _screening_note
    from paploss.search.settings import rejection_score_name

    trial = TrialRecord(
        round=0, index=1, role="sample", theta=[], overrides={}, seed=0, status="rejected",
        reward=0.0, metrics={"screening": {"score": 3.25}}, attempts=0, error=None, job_id=None,
        folder=None, created_at=0.0, started_at=None, finished_at=None,
    )  # fmt: skip
    assert _screening_note(trial, rejection_score_name(score), 5.0) == shown


# ------------------------------------------------------------------------------ duplicates


def _patch_sampling(monkeypatch: pytest.MonkeyPatch, plan) -> None:
    """``plan(policy, samples)`` may change the samples of a round (or raise)."""
    original = TruncatedNormalPolicy.sample

    def sample(self, n):
        return plan(self, original(self, n))

    monkeypatch.setattr(TruncatedNormalPolicy, "sample", sample)


def _nudged(theta) -> np.ndarray:
    """θ moved by far less than the fingerprint's rounding (inside the unit box)."""
    theta = np.asarray(theta, dtype=np.float64)
    return np.where(theta < 0.5, theta + 1e-9, theta - 1e-9)


def test_candidate_equal_below_rounding_is_a_duplicate_and_not_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def plan(policy, samples):
        samples = np.array(samples)
        samples[1] = _nudged(samples[0])
        return samples

    _patch_sampling(monkeypatch, plan)
    settings = _settings(tmp_path, rounds=1, candidates=3)
    summary = SearchController(settings, tmp_path, trial_fn=counted_trial).run()

    trials, rounds = _trials(tmp_path)
    assert [t.status for t in trials] == ["done", "duplicate", "done", "done"]
    original, duplicate = trials[0], trials[1]
    assert duplicate.theta != original.theta and duplicate.overrides != original.overrides
    assert duplicate.reward == original.reward and duplicate.folder is None
    screening = duplicate.metrics["screening"]
    assert screening["duplicate_of"] == [0, 0]
    assert screening["duplicate_of_trial"] == "round000_trial00"
    assert screening["original_status"] == "done"
    assert screening["fingerprint"] == original.metrics["screening"]["fingerprint"]
    assert screening["rejection"] == {}  # rejection disabled: the equivalence check only
    # Three proxy runs (two samples and the mean), not four.
    assert sorted(CALLS) == ["round000_trial00", "round000_trial02", "round000_trial03"]
    assert summary.trials_run == 3
    stats = rounds[0].update_stats
    assert stats["num_samples"] == 3 and stats["num_duplicates"] == 1
    with SearchJournal.open(str(tmp_path / "journal.sqlite"), read_only=True) as journal:
        status = format_status(journal, show_trials=True)
    assert "duplicate of round000_trial00" in status
    assert "screening: 0 rejected, 1 duplicate(s) of 3 samples" in status


def test_resume_rebuilds_the_registry_and_never_screens_a_stored_candidate_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"stop_sampling": True, "stop_trial": None}
    stored: List[np.ndarray] = []

    def plan(policy, samples):
        samples = np.array(samples)
        if policy.round == 0:
            stored.append(samples[0].copy())
        elif state["stop_sampling"]:
            raise Interrupt("killed before round 1 was sampled")
        else:
            samples[0] = _nudged(stored[0])  # equivalent to round 0's first sample
        return samples

    def trial_fn(spec: TrialSpec) -> TrialResult:
        if spec.trial_id == state["stop_trial"]:
            state["stop_trial"] = None
            raise Interrupt("killed while the trial trains")
        return counted_trial(spec)

    _patch_sampling(monkeypatch, plan)
    settings = _settings(tmp_path, rounds=2, candidates=2, search__score_mean=False)

    # 1. Killed after round 0 closed, before round 1 was sampled.
    with pytest.raises(Interrupt):
        SearchController(settings, tmp_path, trial_fn=trial_fn).run()
    trials, rounds = _trials(tmp_path)
    assert [r.status for r in rounds] == ["closed"] and len(trials) == 2

    # 2. Resumed by a new controller (a fresh registry): the equivalent candidate is found from
    # the journal. Killed again while round 1's other sample trains.
    state.update(stop_sampling=False, stop_trial="round001_trial01")
    screened = []
    screen = Screener.screen

    def counting_screen(self, overrides, key):
        screened.append(key)
        return screen(self, overrides, key=key)

    monkeypatch.setattr(Screener, "screen", counting_screen)
    with pytest.raises(Interrupt):
        SearchController(settings, tmp_path, resume=True, trial_fn=trial_fn).run()
    assert screened == [(1, 0), (1, 1)]
    trials, rounds = _trials(tmp_path)
    assert rounds[-1].status == "open"
    first, duplicate = trials[0], trials[2]
    assert (duplicate.round, duplicate.index, duplicate.status) == (1, 0, "duplicate")
    assert duplicate.reward == first.reward  # known at once: the original is from round 0
    assert duplicate.metrics["screening"]["duplicate_of"] == [0, 0]
    assert trials[3].status == "running"

    # 3. Resumed again: the stored decisions stand, nothing is screened again.
    screened.clear()
    SearchController(settings, tmp_path, resume=True, trial_fn=trial_fn).run()
    assert screened == []
    trials, rounds = _trials(tmp_path)
    assert [(t.round, t.status) for t in trials] == [
        (0, "done"),
        (0, "done"),
        (1, "duplicate"),
        (1, "done"),
    ]
    assert [r.status for r in rounds] == ["closed", "closed"]
    assert "round001_trial00" not in CALLS  # the duplicate never trained
    assert rounds[1].update_stats["num_duplicates"] == 1


def test_duplicates_of_candidates_of_the_same_round_wait_for_their_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def plan(policy, samples):
        samples = np.array(samples)
        samples[2] = _nudged(samples[0])  # its original trains
        samples[3] = _nudged(samples[1])  # its original fails
        return samples

    def failing_first(spec: TrialSpec) -> TrialResult:
        if spec.trial_id == "round000_trial01":
            raise RuntimeError("cannot run")
        return counted_trial(spec)

    _patch_sampling(monkeypatch, plan)
    settings = _settings(tmp_path, "search.max_attempts=1", rounds=1, candidates=4)
    SearchController(settings, tmp_path, trial_fn=failing_first).run()
    trials, rounds = _trials(tmp_path)
    assert [t.status for t in trials] == ["done", "failed", "duplicate", "failed", "done"]
    assert trials[2].reward == trials[0].reward and trials[2].finished_at is not None
    assert trials[3].reward is None and trials[3].folder is None
    assert "equivalent to round000_trial01" in trials[3].error
    assert sorted(CALLS) == ["round000_trial00", "round000_trial04"]
    assert rounds[0].update_stats["num_samples"] == 2  # the failed ones are left out


# ------------------------------------------------------------------------------ settings


def test_default_settings_screen_with_every_technique(tmp_path: Path) -> None:
    settings = load_settings(str(DEFAULT_CONFIG))
    assert settings.screening == ScreeningSettings()
    screening = settings.screening
    assert screening.rejection.enabled and screening.equivalence.enabled
    assert screening.early_stop.enabled and screening.screens_candidates
    # The file writes every key out: the same as the defaults.
    written = yaml.safe_load(DEFAULT_CONFIG.read_text())["screening"]
    assert ScreeningSettings.from_dict(written).to_dict() == written
    assert any(line.startswith("screening: rejection below") for line in settings_summary(settings))
    assert settings.journal_settings()["screening"] == ScreeningSettings().to_dict()
    assert settings.to_dict()["screening"]["early_stop"]["window"] == 50
    off = _settings(
        tmp_path,
        "screening.rejection.enabled=false",
        "screening.equivalence.enabled=false",
        "screening.early_stop.enabled=false",
    )
    assert not off.screening.screens_candidates
    assert "screening: off" in settings_summary(off)


@pytest.mark.parametrize(
    "override, message",
    [
        ("screening.rejection.min_gain=1", r"unknown screening\.rejection setting.*min_gain"),
        ("screening.equivalnce={}", r"unknown screening setting.*equivalnce"),
        ("screening.early_stop.window=-1", r"screening\.early_stop\.window must be"),
        ("screening.rejection.steps=0", r"screening\.rejection\.steps must be an integer >= 1"),
        ("screening.rejection.optimizer=lbfgs", r"screening\.rejection\.optimizer must be one"),
        ("screening=5", r"screening must be a mapping"),
        ("screening.rejection=true", r"screening\.rejection must be a mapping"),
    ],
)
def test_bad_screening_settings_name_the_key(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        _settings(tmp_path, override)


def test_resume_with_other_screening_settings_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path, rounds=1, candidates=1)
    SearchController(settings, tmp_path, trial_fn=counted_trial).run()
    other = _settings(tmp_path, "screening.rejection.min_ap_gain=2.0", rounds=1, candidates=1)
    with pytest.raises(JournalError, match="other search settings.*screening.rejection"):
        SearchController(other, tmp_path, resume=True, trial_fn=counted_trial).run()


def test_journal_from_before_screening_still_reports(tmp_path: Path) -> None:
    settings = _settings(tmp_path).journal_settings()
    del settings["screening"]
    path = tmp_path / "journal.sqlite"
    with SearchJournal.create(str(path), settings) as journal:
        journal.begin_round(0, {"round": 0}, [NewTrial(theta=[0.5], overrides={}, seed=1)])
        journal.update_trial(0, 0, status="done", reward=1.0)
    with SearchJournal.open(str(path), read_only=True) as journal:
        status = format_status(journal, show_trials=True)
    assert "screening:" not in status and "1/0/0/0/0" in status
