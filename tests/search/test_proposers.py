"""Search methods: a second method plugs into the same controller, screening, launchers, journal
and reports through the Proposer interface; the ppo method is the policy and its PPO update."""

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pytest
from search_testing import journal_snapshot, tiny_search_overrides

from paploss.search.controller import SearchController, SearchError
from paploss.search.journal import SearchJournal
from paploss.search.proposers import (
    PROPOSER_REGISTRY,
    Candidate,
    PPOProposer,
    Proposer,
    ScoredCandidate,
    TruncatedNormalPolicy,
    journal_proposer,
    proposer_class,
)
from paploss.search.proposers.ppo import centred_ranks
from paploss.search.reports import export_config, format_status
from paploss.search.settings_loading import load_settings
from paploss.search.spaces import SearchSpace
from paploss.search.trials import TrialResult, TrialSpec


@PROPOSER_REGISTRY.register()
class HillClimbProposer(Proposer):
    """A second search method, as small as one can be: samples around the best point so far
    (a (1 + λ) evolution strategy) and scores that point itself as the ``mean``."""

    NAME = "test_hill_climb"

    def __init__(self, dim: int, candidates: int, seed: int) -> None:
        self._round = 0
        self._center = [0.5] * dim
        self._best: Optional[float] = None
        self._candidates = candidates
        self._rng = np.random.default_rng(seed)

    @classmethod
    def from_settings(cls, settings: Any, space: SearchSpace) -> "HillClimbProposer":
        return cls(space.dim, settings.search.candidates, settings.search.seed)

    @property
    def round(self) -> int:
        return self._round

    def propose(self) -> List[Candidate]:
        center = np.asarray(self._center)
        steps = 0.1 * self._rng.standard_normal((self._candidates, center.size))
        samples = [Candidate(tuple(np.clip(center + step, 0.0, 1.0)), "sample") for step in steps]
        return samples + [Candidate(tuple(self._center), "mean")]

    def observe(self, scored: Sequence[ScoredCandidate]) -> Dict[str, Any]:
        best = max((s for s in scored if s.role == "sample"), key=lambda s: s.reward)
        moved = self._best is None or best.reward > self._best
        if moved:
            self._center, self._best = [float(v) for v in best.theta], best.reward
        self._round += 1
        return {"best_reward": self._best, "moved": moved}

    def state_dict(self) -> Dict[str, Any]:
        return {
            "format": self.NAME,
            "round": self._round,
            "center": self._center,
            "best": self._best,
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != self.NAME:
            raise ValueError("not a hill-climb state")
        self._round, self._center, self._best = state["round"], state["center"], state["best"]
        self._rng.bit_generator.state = state["rng"]

    def point(self) -> Tuple[float, ...]:
        return tuple(self._center)

    @staticmethod
    def point_from_state(state: Mapping[str, Any]) -> Optional[Tuple[float, ...]]:
        return tuple(state["center"])


def quadratic_trial(spec: TrialSpec) -> TrialResult:
    """A trial without training: reward -|θ - 0.3|²."""
    if spec.trial_id in STOP_AT:
        STOP_AT.remove(spec.trial_id)
        raise Interrupt(f"killed while {spec.trial_id} trains")
    Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
    reward = -float(np.sum((np.asarray(spec.theta) - 0.3) ** 2))
    return TrialResult(spec.trial_id, "done", reward, {"AP": reward}, spec_digest=spec.digest())


class Interrupt(BaseException):
    """Stands for a killed controller."""


STOP_AT: List[str] = []


def test_a_second_method_plugs_into_the_search_and_resumes_exactly(tmp_path: Path) -> None:
    overrides = tiny_search_overrides(tmp_path, rounds=3, candidates=3)
    settings = load_settings(None, overrides + [f"search.method={HillClimbProposer.NAME}"])
    assert settings.journal_settings()["search"]["method"] == HillClimbProposer.NAME

    reference = tmp_path / "reference"
    summary = SearchController(settings, reference, trial_fn=quadratic_trial).run()
    assert summary.rounds_closed == 3
    with SearchJournal.open(str(reference / "journal.sqlite"), read_only=True) as journal:
        trials, rounds = journal.trials(), journal.rounds()
        assert journal.settings["search"]["method"] == HillClimbProposer.NAME
        status = format_status(journal)
        exported = export_config(journal, tmp_path / "mean.yaml", which="mean")
    # Screened (the equivalence check is on), trained, stored like any search's candidates.
    assert [t.role for t in trials] == (["sample"] * 3 + ["mean"]) * 3
    assert all("screening" in t.metrics for t in trials)
    assert {t.status for t in trials} <= {"done", "duplicate"}
    assert [r.policy_state_end["round"] for r in rounds] == [1, 2, 3]
    best = [r.update_stats["best_reward"] for r in rounds]
    assert best == sorted(best) and rounds[-1].update_stats["reward_max"] <= best[-1]
    assert summary.final_mean == rounds[-1].policy_state_end["center"]
    assert "test_hill_climb" not in status and len(status.splitlines()) > 3
    assert exported.round == 2 and "round 2" in Path(exported.path).read_text()

    # The same search killed while a trial of round 1 trains, then resumed by a new controller.
    killed = tmp_path / "killed"
    STOP_AT[:] = ["round001_trial01"]
    with pytest.raises(Interrupt):
        SearchController(settings, killed, trial_fn=quadratic_trial).run()
    SearchController(settings, killed, resume=True, trial_fn=quadratic_trial).run()
    assert journal_snapshot(killed / "journal.sqlite") == journal_snapshot(
        reference / "journal.sqlite"
    )


def test_an_unknown_method_is_named_before_anything_is_written(tmp_path: Path) -> None:
    settings = load_settings(None, tiny_search_overrides(tmp_path) + ["search.method=annealing"])
    with pytest.raises(SearchError, match=r"search.method: unknown search method 'annealing'"):
        SearchController(settings, tmp_path / "search", trial_fn=quadratic_trial).run()
    assert not (tmp_path / "search").exists()
    assert proposer_class("ppo") is PPOProposer
    assert journal_proposer({"search": {"rounds": 2}}) is PPOProposer  # journals before the key


def _ppo_and_its_policy(settings: Any) -> Tuple[PPOProposer, TruncatedNormalPolicy]:
    """The ppo method of one RetinaNet head and a policy built alone from the same settings."""
    space = SearchSpace(["RETINANET"])
    policy = TruncatedNormalPolicy(
        space.identity_theta(),
        sigma_schedule=settings.policy.sigma,
        ppo=settings.policy.ppo,
        seed=settings.search.seed,
    )
    return PPOProposer.from_settings(settings, space), policy


def test_the_ppo_method_samples_and_updates_as_its_policy(tmp_path: Path) -> None:
    settings = load_settings(None, tiny_search_overrides(tmp_path, rounds=2, candidates=4))
    proposer, policy = _ppo_and_its_policy(settings)
    for _ in range(2):
        candidates = proposer.propose()
        thetas = policy.sample(4)
        assert [c.role for c in candidates] == ["sample"] * 4 + ["mean"]
        assert np.array_equal([c.theta for c in candidates[:4]], thetas)
        assert np.array_equal(candidates[4].theta, policy.mean)
        rewards = -np.sum((thetas - 0.3) ** 2, axis=1)
        scored = [
            ScoredCandidate(c.theta, c.role, float(r), "done") for c, r in zip(candidates, rewards)
        ]
        scored.append(ScoredCandidate(candidates[4].theta, "mean", 0.5, "done"))
        stats = proposer.observe(scored)
        assert stats == policy.update(thetas, rewards).to_dict()  # round mean: μ's reward unused
        assert proposer.state_dict() == policy.state_dict()
    assert proposer.round == 2 and proposer.describe() == f"sigma {policy.sigma:.4f}"
    assert np.allclose(PPOProposer.point_from_state(proposer.state_dict()), policy.mean)


def test_centred_ranks_are_hand_computed_fitness_shaping() -> None:
    assert np.allclose(centred_ranks(np.array([3.0, 10.0, -1.0])), [0.0, 0.5, -0.5])
    # ties share the mean of their ranks; the shaped rewards sum to zero
    shaped = centred_ranks(np.array([1.0, 1.0, 0.0, 7.0, 2.0]))
    assert np.allclose(shaped, [-0.125, -0.125, -0.5, 0.5, 0.25])
    assert abs(shaped.sum()) < 1e-12
    assert np.array_equal(centred_ranks(np.array([4.0])), [0.0])


def test_rank_advantages_update_the_policy_as_its_shaped_rewards(tmp_path: Path) -> None:
    settings = load_settings(
        None, tiny_search_overrides(tmp_path, rounds=2, candidates=5) + ["search.baseline=rank"]
    )
    proposer, policy = _ppo_and_its_policy(settings)
    candidates = proposer.propose()
    thetas = policy.sample(5)
    # one outlier reward: rank shaping ignores how far it lies from the others
    rewards = np.array([0.1, 0.3, 0.2, 95.0, 0.0])
    scored = [
        ScoredCandidate(c.theta, c.role, float(r), "done") for c, r in zip(candidates, rewards)
    ]
    scored.append(ScoredCandidate(candidates[-1].theta, "mean", 0.5, "done"))
    stats = proposer.observe(scored)
    assert np.allclose(centred_ranks(rewards), [-0.25, 0.25, 0.0, 0.5, -0.5])
    expected = policy.update(thetas, np.array([-0.25, 0.25, 0.0, 0.5, -0.5]))
    assert stats == expected.to_dict()
    assert proposer.state_dict() == policy.state_dict()
