"""Successive halving inside a search round (``search.halving``): settings, the partial trial's
identity, the controller's partial wave, selection and full wave, and its resume."""

import json
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
from search_testing import MODEL_CONFIG, journal_snapshot, tiny_search_overrides

from paploss.search.controller import SearchController
from paploss.search.journal import SearchJournal
from paploss.search.reports.status import format_status
from paploss.search.reports.summary import settings_summary
from paploss.search.settings import ProxySettings, SearchLoopSettings, SettingsError
from paploss.search.settings_loading import load_settings
from paploss.search.trials import TrialResult, TrialSpec

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_halving_is_validated_and_left_out_of_the_journal_while_off() -> None:
    assert "halving" not in SearchLoopSettings().to_dict()
    assert SearchLoopSettings(halving=0.5).to_dict()["halving"] == 0.5
    for bad in (1.0, -0.5, True, "half"):
        with pytest.raises(SettingsError, match=r"^search.halving must be 0 \(off\) or a share"):
            SearchLoopSettings(halving=bad)
    base = [f"model.config={MODEL_CONFIG}", "proxy.iterations=10"]
    with pytest.raises(SettingsError, match="search.halving: 0.95 of proxy.iterations .10."):
        load_settings(None, base + ["search.halving=0.95"])
    settings = load_settings(None, base + ["search.halving=0.3"])
    assert settings.search.partial_iterations(10) == 3  # not 4: 0.3 * 10 rounds up to 3.0...04
    assert SearchLoopSettings(halving=0.5).partial_iterations(7) == 4
    assert SearchLoopSettings().partial_iterations(10) is None
    assert "successive halving: every trial trains 3 of 10 iterations" in " ".join(
        settings_summary(settings)
    )


def test_a_partial_spec_is_another_result_of_the_same_trial_folder() -> None:
    full = TrialSpec("t", 0, 0, (0.5,), {}, "model.yaml", 0, ProxySettings(), "out")
    partial = TrialSpec(
        "t", 0, 0, (0.5,), {}, "model.yaml", 0, ProxySettings(), "out", stop_after=150
    )
    assert "stop_after" not in full.identity()  # the digests of earlier trials stay as they were
    assert partial.identity() == {**full.identity(), "stop_after": 150}
    assert partial.digest() != full.digest() and partial.folder_digest() == full.digest()
    assert partial.full() == full and partial.result_file == "result_partial.json"
    assert full.result_file == "result.json" and full.config_opts() == partial.config_opts()
    own = TrialResult("t", "done", 1.0, spec_digest=partial.digest())
    assert own.mismatch(partial) is None and own.mismatch(full) is not None


# ------------------------------------------------------------------------------ controller


class _Killed(BaseException):
    """Stands for the controller's process being killed (not caught like a trial's error)."""


def _full_reward(spec: TrialSpec) -> float:
    return -float(np.sum((np.asarray(spec.theta) - 0.3) ** 2))


def halving_trial(spec: TrialSpec) -> TrialResult:
    """A trial without training: the partial reward is ``-index`` (the policy mean, the last
    trial, scores worst), the full one -|θ - 0.3|². Trial 1's first partial training fails.
    ``<search>/kill`` holding ``"<round> <index> <partial|full>"`` kills the controller there
    (once). Counts its calls in ``<output_dir>/calls_<stage>``."""
    folder = Path(spec.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stage = "full" if spec.stop_after is None else "partial"
    kill = folder.parents[1] / "kill"
    if kill.exists() and kill.read_text() == f"{spec.round} {spec.index} {stage}":
        kill.unlink()
        raise _Killed()
    calls_file = folder / f"calls_{stage}"
    calls = int(calls_file.read_text()) + 1 if calls_file.exists() else 1
    calls_file.write_text(str(calls))
    if stage == "partial" and spec.index == 1 and calls == 1:
        return TrialResult(spec.trial_id, "failed", None, reason="flaky", spec_digest=spec.digest())
    reward = _full_reward(spec) if stage == "full" else float(-spec.index)
    return TrialResult(spec.trial_id, "done", reward, {"AP": reward}, spec_digest=spec.digest())


def _halving_settings(folder: Path, rounds: int, candidates: int):
    overrides = tiny_search_overrides(folder, rounds=rounds, candidates=candidates)
    return load_settings(None, overrides + ["search.halving=0.5", "search.max_attempts=2"])


def test_the_better_half_and_the_policy_mean_continue_the_others_keep_their_partial_reward(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _halving_settings(tmp_path, rounds=1, candidates=5)
    with caplog.at_level("INFO", logger="paploss.search"):
        SearchController(settings, tmp_path, trial_fn=halving_trial).run()

    with SearchJournal.open(str(tmp_path / "journal.sqlite"), read_only=True) as journal:
        trials = journal.trials(round=0)
        stats = journal.get_round(0).update_stats
        table = format_status(journal, show_trials=True)
    assert table.count("partial reward (stopped after 6 iterations)") == 2
    assert [t.role for t in trials] == ["sample"] * 5 + ["mean"]
    assert all(t.metrics["partial_reward"] == -t.index for t in trials)
    assert all(t.metrics["partial_iterations"] == 6 for t in trials)  # of proxy.iterations=12
    halving = [t.metrics["halving"] for t in trials]
    # ceil(5/2) = 3 samples by partial reward, and the mean despite the lowest partial reward
    assert halving == ["continued"] * 3 + ["stopped"] * 2 + ["continued"]
    assert [t.status for t in trials] == ["done"] * 6
    for trial in trials:
        full = trial.metrics["halving"] == "continued"
        expected = -float(np.sum((np.asarray(trial.theta) - 0.3) ** 2)) if full else -trial.index
        assert trial.reward == pytest.approx(expected)
        calls = tmp_path / trial.folder
        assert (calls / "calls_partial").read_text() == ("2" if trial.index == 1 else "1")
        assert (calls / "calls_full").exists() == full
    assert stats["num_stopped"] == 2 and stats["num_samples"] == 5
    messages = [r.getMessage() for r in caplog.records]
    assert (
        "round 1/1: halving: 4 of 6 continue (partial rewards 0.0000, -1.0000, -2.0000, "
        "-5.0000; stopped -3.0000, -4.0000)" in messages
    )
    assert any(m.startswith("round 1/1: partial trainings done 1/6") for m in messages)


@pytest.mark.parametrize(
    "kill", ["0 2 partial", "0 1 full", "1 3 full"], ids=["partial_wave", "full_wave", "round1"]
)
def test_a_search_killed_between_or_in_its_waves_resumes_to_the_same_journal(
    tmp_path: Path, kill: str
) -> None:
    reference = tmp_path / "reference"
    SearchController(_halving_settings(tmp_path, 2, 3), reference, trial_fn=halving_trial).run()

    output = tmp_path / "killed"
    output.mkdir()
    (output / "kill").write_text(kill)
    with pytest.raises(_Killed):
        SearchController(_halving_settings(tmp_path, 2, 3), output, trial_fn=halving_trial).run()
    assert not (output / "kill").exists()
    SearchController(
        _halving_settings(tmp_path, 2, 3), output, resume=True, trial_fn=halving_trial
    ).run()
    assert journal_snapshot(output / "journal.sqlite") == journal_snapshot(
        reference / "journal.sqlite"
    )
    with SearchJournal.open(str(output / "journal.sqlite"), read_only=True) as journal:
        assert sum(t.metrics.get("halving") == "stopped" for t in journal.trials()) == 2


@pytest.mark.slow
def test_continued_trials_of_a_real_search_score_as_in_a_search_without_halving(
    tmp_path: Path,
) -> None:
    """Real proxy trainings: a continued trial (partial training, evaluation, then the rest of
    the schedule from its checkpoint) gets exactly the reward of the same trial in a search
    without halving; the stopped sample keeps its partial reward and loses its checkpoints."""
    overrides = tiny_search_overrides(tmp_path, rounds=1, candidates=2)
    plain = tmp_path / "plain"
    SearchController(load_settings(None, overrides), plain).run()
    halved = tmp_path / "halved"
    SearchController(load_settings(None, overrides + ["search.halving=0.5"]), halved).run()

    with SearchJournal.open(str(plain / "journal.sqlite"), read_only=True) as journal:
        reference = {t.index: t for t in journal.trials()}
    with SearchJournal.open(str(halved / "journal.sqlite"), read_only=True) as journal:
        trials = journal.trials()
    assert [t.status for t in trials] == ["done"] * 3
    assert [t.metrics["halving"] for t in trials].count("stopped") == 1
    for trial in trials:
        assert trial.theta == reference[trial.index].theta
        folder = halved / trial.folder
        partial = json.loads((folder / "result_partial.json").read_text())
        assert partial["reward"] == trial.metrics["partial_reward"]
        assert not list((folder / "train").glob("*.pth")), "no checkpoint is left behind"
        if trial.metrics["halving"] == "continued":
            assert trial.reward == reference[trial.index].reward
        else:
            assert trial.reward == trial.metrics["partial_reward"]
            assert not (folder / "result.json").exists()
    assert trials[2].metrics["halving"] == "continued"  # the policy mean


def test_better_half_keeps_the_higher_rewards_ties_by_position():
    from paploss.search.steps.halving import better_half

    assert better_half([0.2, 0.9, 0.5]) == [1, 2]  # ceil(3/2) = 2, best first
    assert better_half([0.3, 0.3, 0.1, 0.3]) == [0, 1]  # a tie goes to the earlier trial
    assert better_half([0.0]) == [0]
    assert better_half([]) == []
