"""The ``ppo`` search method: a truncated-normal policy over θ, trained with clipped PPO.

Each round samples ``search.candidates`` points from the policy
(:class:`~paploss.search.proposers.policy.TruncatedNormalPolicy`) and, with
``search.score_mean``, adds the policy mean μ as a ``mean`` candidate; the PPO update learns from
the samples' rewards with the advantage baseline ``search.baseline`` (the round's mean reward,
the reward of μ, or fitness shaping by rank: :func:`centred_ranks`). Settings: ``policy.sigma`` (:class:`~paploss.search.settings.SigmaSchedule`)
and ``policy.ppo`` (:class:`~paploss.search.settings.PPOConfig`); the state is the policy's.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from paploss.search.proposers.base import (
    PROPOSER_REGISTRY,
    Candidate,
    Proposer,
    ScoredCandidate,
)
from paploss.search.proposers.policy import TruncatedNormalPolicy
from paploss.search.settings import SigmaSchedule

if TYPE_CHECKING:  # pragma: no cover
    from paploss.search.journal import RoundRecord
    from paploss.search.settings import SearchSettings
    from paploss.search.spaces import SearchSpace

__all__ = ["PPOProposer", "centred_ranks"]

logger = logging.getLogger(__name__)


@PROPOSER_REGISTRY.register()
class PPOProposer(Proposer):
    """The truncated-normal policy and its PPO update as a search method.

    Args:
        policy: the policy (its σ schedule, PPO settings and seed).
        candidates: samples per round.
        score_mean: also propose the policy mean μ (role ``mean``) every round.
        baseline: ``"round_mean"``, ``"policy_mean"`` or ``"rank"`` (see
            :class:`~paploss.search.settings.SearchLoopSettings`).
        rounds: the search's rounds (for log messages).
    """

    NAME = "ppo"

    def __init__(
        self,
        policy: TruncatedNormalPolicy,
        *,
        candidates: int,
        score_mean: bool = True,
        baseline: str = "round_mean",
        rounds: Optional[int] = None,
    ) -> None:
        self.policy = policy
        self.candidates = candidates
        self.score_mean = score_mean
        self.baseline = baseline
        self.rounds = rounds

    @classmethod
    def from_settings(cls, settings: "SearchSettings", space: "SearchSpace") -> "PPOProposer":
        """The policy mean starts at ``search.init`` of ``space`` (by default the identity
        functions, λ = 1)."""
        loop, policy = settings.search, settings.policy
        return cls(
            TruncatedNormalPolicy(
                space.initial_theta(loop.init),
                sigma_schedule=policy.sigma,
                ppo=policy.ppo,
                seed=loop.seed,
            ),
            candidates=loop.candidates,
            score_mean=loop.score_mean,
            baseline=loop.baseline,
            rounds=loop.rounds,
        )

    @property
    def round(self) -> int:
        return self.policy.round

    def propose(self) -> List[Candidate]:
        """``candidates`` samples of the policy, then μ (with ``score_mean``)."""
        thetas = self.policy.sample(self.candidates)
        proposed = [Candidate(_plain_theta(theta), "sample") for theta in thetas]
        if self.score_mean:
            proposed.append(Candidate(_plain_theta(self.policy.mean), "mean"))
        return proposed

    def observe(self, scored: Sequence[ScoredCandidate]) -> Dict[str, Any]:
        """One PPO update from the scored samples (the reward of μ as baseline with
        ``policy_mean``); returns :class:`~paploss.search.proposers.policy.UpdateStats`."""
        samples = [s for s in scored if s.role == "sample"]
        means = [s for s in scored if s.role == "mean"]
        thetas = np.asarray([s.theta for s in samples], dtype=np.float64)
        rewards = np.asarray([s.reward for s in samples], dtype=np.float64)
        baseline = None
        if self.baseline == "rank":
            rewards = centred_ranks(rewards)
        elif self.baseline == "policy_mean":
            if means:
                baseline = float(means[0].reward)
            else:
                logger.warning(
                    "round %d/%s: the policy mean was not scored; using the round mean as baseline",
                    self.policy.round + 1,
                    self.rounds if self.rounds is not None else "?",
                )
        return self.policy.update(thetas, rewards, baseline=baseline).to_dict()

    def state_dict(self) -> Dict[str, Any]:
        return self.policy.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.policy.load_state_dict(state)

    def point(self) -> Tuple[float, ...]:
        """The policy mean μ."""
        return _plain_theta(self.policy.mean)

    def describe(self) -> str:
        return f"sigma {self.policy.sigma:.4f}"

    def describe_update(self, stats: Mapping[str, Any]) -> str:
        return f"mean moved {stats['mean_shift_l2']:.4f}"

    @staticmethod
    def point_from_state(state: Mapping[str, Any]) -> Optional[Tuple[float, ...]]:
        """μ of a stored policy state."""
        logits = np.asarray(state.get("logit_mean", []), dtype=np.float64)
        return _plain_theta(np.clip(1.0 / (1.0 + np.exp(-logits)), 0.0, 1.0))

    @staticmethod
    def round_spread(record: "RoundRecord") -> Optional[float]:
        """σ of the round: from its update statistics, or its start state's σ schedule."""
        if record.update_stats and "sigma" in record.update_stats:
            return float(record.update_stats["sigma"])
        state = record.policy_state_start or {}
        schedule = (state.get("config") or {}).get("sigma_schedule")
        if not schedule:
            return None
        return SigmaSchedule(**schedule)(record.round)


def _plain_theta(theta: Any) -> Tuple[float, ...]:
    return tuple(float(v) for v in theta)


def centred_ranks(rewards: np.ndarray) -> np.ndarray:
    """``[N]`` fitness-shaped rewards: ranks scaled to [-0.5, 0.5], ties averaged, mean 0.

    The best reward maps to 0.5, the worst to -0.5, equal rewards to equal values; a single
    reward maps to 0.
    """
    from scipy.stats import rankdata

    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.size < 2:
        return np.zeros_like(rewards)
    return (rankdata(rewards) - 1.0) / (rewards.size - 1.0) - 0.5
