"""The ``cmaes`` method, ``search.init`` and the winner's-curse recheck (``search.recheck``):
CMA-ES starts where ``search.init`` says and resumes exactly from its stored history; a recheck
retrains the best candidates with another seed and the best is the best mean."""

import json
import logging
import zlib
from pathlib import Path
from typing import List

import numpy as np
import pytest
from search_testing import journal_snapshot, tiny_search_overrides

from paploss.heads import register_pap_heads
from paploss.search.controller import SearchController, SearchError, round_seed
from paploss.search.journal import SearchJournal
from paploss.search.proposers import CMAESProposer, PPOProposer, ScoredCandidate
from paploss.search.recheck import candidate_key, declared_best
from paploss.search.reports import export_config, format_status
from paploss.search.settings import SettingsError
from paploss.search.settings_loading import load_settings
from paploss.search.spaces import SearchSpace
from paploss.search.trials import TrialResult, TrialSpec

REPO_ROOT = Path(__file__).resolve().parents[2]


def noisy_quadratic_trial(spec: TrialSpec) -> TrialResult:
    """A trial without training: reward -|θ - 0.3|² plus a seed- and θ-dependent draw in
    [0, 0.05), like a proxy reward's training noise."""
    if spec.trial_id in STOP_AT:
        STOP_AT.remove(spec.trial_id)
        raise Interrupt(f"killed while {spec.trial_id} trains")
    Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
    noise = zlib.crc32(f"{spec.seed} {spec.theta}".encode()) % 1000 / 20000.0
    reward = -float(np.sum((np.asarray(spec.theta) - 0.3) ** 2)) + noise
    return TrialResult(spec.trial_id, "done", reward, {"AP": reward}, spec_digest=spec.digest())


class Interrupt(BaseException):
    """Stands for a killed controller."""


STOP_AT: List[str] = []


def _cmaes_overrides(tmp_path: Path) -> List[str]:
    return tiny_search_overrides(tmp_path, rounds=3, candidates=4) + [
        "search.method=cmaes",
        "search.init=published",
        "search.recheck={top: 2, seeds: 2}",
        "cmaes.sigma=0.05",
    ]


def test_cmaes_starts_at_init_rechecks_the_best_and_resumes_exactly(tmp_path: Path) -> None:
    settings = load_settings(None, _cmaes_overrides(tmp_path))
    stored = settings.journal_settings()
    assert stored["cmaes"] == {"sigma": 0.05, "lr_adapt": False}
    assert stored["search"]["recheck"] == {"top": 2, "seeds": 2}

    reference = tmp_path / "reference"
    summary = SearchController(settings, reference, trial_fn=noisy_quadratic_trial).run()
    assert summary.rounds_closed == 3
    with SearchJournal.open(str(reference / "journal.sqlite"), read_only=True) as journal:
        trials, rounds = journal.trials(), journal.rounds()
        best = declared_best(journal)
        status = format_status(journal)
        exported = export_config(journal, tmp_path / "best.yaml")
    space = SearchSpace(("RETINANET",))

    # Round 0's distribution mean is the published start; 4 samples + the mean per round.
    round0_mean = [t for t in trials if t.round == 0 and t.role == "mean"][0]
    np.testing.assert_allclose(round0_mean.theta, space.published_theta(), atol=1e-12)
    assert [t.role for t in trials if t.round < 3] == (["sample"] * 4 + ["mean"]) * 3
    assert [r.policy_state_end["config"]["sigma"] for r in rounds[:3]] == [0.05] * 3
    assert [len(r.policy_state_end["history"]) for r in rounds] == [1, 2, 3, 3, 3]

    # Two recheck rounds after the 3 search rounds, each retraining the 2 best distinct
    # candidates with a seed of its own; the method's state does not change in them.
    done = [t for t in trials if t.round < 3 and t.status == "done"]
    top2 = sorted(done, key=lambda t: -t.reward)[:2]
    for recheck_round in (3, 4):
        rechecks = [t for t in trials if t.round == recheck_round]
        assert [t.role for t in rechecks] == ["recheck", "recheck"]
        assert [t.overrides for t in rechecks] == [t.overrides for t in top2]
        assert {t.seed for t in rechecks} == {round_seed(7, recheck_round)}
        assert rounds[recheck_round].policy_state_end == rounds[2].policy_state_end

    # The best is the candidate with the best mean over its 3 rewards, computed by hand.
    means = {}
    for original in top2:
        rewards = [t.reward for t in trials if candidate_key(t) == candidate_key(original)]
        assert len(rewards) == 3
        means[candidate_key(original)] = np.mean(rewards)
    winner = max(means, key=means.get)
    assert best is not None and best.how == "recheck"
    assert candidate_key(best.trial) == winner
    assert best.mean_reward == pytest.approx(means[winner], abs=1e-12)
    assert summary.best is not None and candidate_key(summary.best) == winner
    assert summary.best_how is not None and summary.best_how.startswith("best by recheck")
    assert "best by recheck" in status and "3 closed of 3 planned" in status
    assert "best by recheck" in Path(exported.path).read_text()

    # Killed in a search round and again in a recheck round, then resumed each time.
    killed = tmp_path / "killed"
    for stop in ("round001_trial02", "round004_trial01"):  # a search round, a recheck round
        STOP_AT[:] = [stop]
        with pytest.raises(Interrupt):
            SearchController(
                settings, killed, resume=killed.exists(), trial_fn=noisy_quadratic_trial
            ).run()
    SearchController(settings, killed, resume=True, trial_fn=noisy_quadratic_trial).run()
    assert journal_snapshot(killed / "journal.sqlite") == journal_snapshot(
        reference / "journal.sqlite"
    )


def test_cmaes_state_replays_its_history_exactly() -> None:
    space = SearchSpace(("RETINANET",))
    start = space.published_theta()

    def proposer() -> CMAESProposer:
        return CMAESProposer(start, sigma=0.1, candidates=4, seed=3)

    running = proposer()
    for _ in range(3):
        candidates = running.propose()
        resumed = proposer()
        resumed.load_state_dict(json.loads(json.dumps(running.state_dict())))
        assert resumed.propose() == candidates  # mid-round: the same samples and mean
        scored = [
            ScoredCandidate(c.theta, c.role, -float(np.sum(np.square(c.theta))), "done", i)
            for i, c in enumerate(candidates)
            if i != 1  # one sample failed: it gets the round's worst value
        ]
        stats = running.observe(scored)
        assert stats["num_unscored"] == 1
        assert all(0.0 <= v <= 1.0 for c in candidates for v in c.theta)
    resumed = proposer()
    resumed.load_state_dict(json.loads(json.dumps(running.state_dict())))
    assert resumed.propose() == running.propose()
    assert resumed.round == running.round == 3

    other = CMAESProposer(start, sigma=0.2, candidates=4, seed=3)
    with pytest.raises(ValueError, match="other settings"):
        other.load_state_dict(running.state_dict())
    with pytest.raises(ValueError, match="at least 4"):
        CMAESProposer(start, sigma=0.1, candidates=3, seed=0)


def test_a_changed_library_is_warned_about_and_the_stored_samples_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    start = SearchSpace(("RETINANET",)).identity_theta()
    running = CMAESProposer(start, sigma=0.1, candidates=4, seed=0)
    candidates = running.propose()
    state = running.state_dict()
    state["asked"][0] = [0.5] * len(start)  # as if another library version had asked this
    resumed = CMAESProposer(start, sigma=0.1, candidates=4, seed=0)
    with caplog.at_level(logging.WARNING):
        resumed.load_state_dict(state)
    assert "asks other samples" in caplog.text
    assert resumed.propose()[0].theta == tuple([0.5] * len(start))
    assert resumed.propose()[1:4] == candidates[1:4]


def test_search_init_is_resolved_and_checked(tmp_path: Path) -> None:
    space = SearchSpace(("RETINANET",))
    published = space.published_theta()
    assert published[-1] == pytest.approx((np.log10(4.1231) + 1) / 2)
    # A config file: relative to the settings file, and its values are the start.
    (tmp_path / "configs").mkdir()
    settings_file = tmp_path / "configs" / "search.yaml"
    model = REPO_ROOT / "configs" / "synthetic" / "pap_retinanet_identity.yaml"
    settings_file.write_text(
        f"model: {{config: {model}}}\n"
        f"search: {{init: {REPO_ROOT / 'configs' / 'synthetic' / 'pap_retinanet_published.yaml'}}}\n"
    )
    settings = load_settings(str(settings_file))
    np.testing.assert_allclose(space.initial_theta(settings.search.init), published, atol=1e-12)
    (tmp_path / "configs" / "relative.yaml").write_text(
        f"model: {{config: {model}}}\nsearch: {{init: search.yaml}}\n"
    )
    assert load_settings(str(tmp_path / "configs" / "relative.yaml")).search.init == str(
        settings_file
    )
    with pytest.raises(SettingsError, match=r"search.init must be one of identity, published or"):
        load_settings(None, [f"model.config={model}", "search.init=publishd"])
    register_pap_heads("InitTestArchitecture", ["INIT_TEST"])  # a project's head
    with pytest.raises(ValueError, match="the INIT_TEST head has no published parameters"):
        SearchSpace(("INIT_TEST",)).initial_theta("published")
    # Journals of searches without the keys keep their stored settings.
    stored = load_settings(None, [f"model.config={model}"]).journal_settings()
    assert "init" not in stored["search"] and "recheck" not in stored["search"]
    assert "cmaes" not in stored


def test_ppo_starts_at_init_and_graph_methods_refuse_it(tmp_path: Path) -> None:
    overrides = tiny_search_overrides(tmp_path) + ["search.init=published"]
    settings = load_settings(None, overrides)
    space = SearchSpace(("RETINANET",))
    proposer = PPOProposer.from_settings(settings, space)
    np.testing.assert_allclose(proposer.point(), space.published_theta(), atol=1e-9)

    graph = load_settings(
        None,
        overrides
        + [
            f"model.config={REPO_ROOT / 'configs' / 'synthetic' / 'graph_faster_rcnn.yaml'}",
            "search.method=evolution",
            "search.score_mean=false",
        ],
    )
    with pytest.raises(SearchError, match="starts from random graphs; remove search.init"):
        SearchController(graph, tmp_path / "graph", trial_fn=noisy_quadratic_trial).run()


def test_a_cmaes_search_resumes_from_its_journal_alone(tmp_path: Path) -> None:
    """``paploss-search run --resume`` without ``--config`` rebuilds the settings from the journal:
    the ``cmaes`` section included (else its stored settings would not match)."""
    from paploss.search.cli import _settings_from_journal
    from paploss.search.controller import SearchOutput

    settings = load_settings(None, _cmaes_overrides(tmp_path) + ["search.rounds=1"])
    output = tmp_path / "search"
    SearchController(settings, output, trial_fn=noisy_quadratic_trial).run()
    resumed = _settings_from_journal(SearchOutput(output), [])
    assert resumed.cmaes.sigma == 0.05
    assert resumed.journal_settings() == settings.journal_settings()
