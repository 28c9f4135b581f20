"""The ``cmaes`` search method: CMA-ES over θ, on the ``cmaes`` library.

Each round is one generation: ``search.candidates`` samples of the library's
:class:`cmaes.CMA` (bounded to [0, 1] per dimension, started at ``search.init`` with step size
``cmaes.sigma``), plus, with ``search.score_mean``, the distribution's mean as a ``mean``
candidate (scored and reported, not learned from). The update is the library's: rank-based
(only the order of the rewards counts, so one outlier reward or the reward's scale does not steer
it), with step-size adaptation, and with ``cmaes.lr_adapt`` the learning-rate adaptation of
LRA-CMA-ES for noisy rewards. CMA-ES minimises, so a candidate's value is ``-reward``; a sample
without a reward (its trial failed) gets the worst value of its round.

**State.** The library's state is private to it, so the proposer's state is its history instead:
every generation's samples with their values, and the samples of the round in progress. Loading
replays that history into a fresh :class:`cmaes.CMA` with the same seed: its random generator
asks the same samples again (the replay checks this), so a resumed search proposes exactly what
an uninterrupted one would. Should the library ever ask differently (another version), the
stored samples are still the ones told, and a warning says that later rounds will differ from an
uninterrupted search. The state is plain JSON data.
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

if TYPE_CHECKING:  # pragma: no cover
    from cmaes import CMA

    from paploss.search.journal import RoundRecord
    from paploss.search.settings import SearchSettings
    from paploss.search.spaces import SearchSpace

__all__ = ["CMAESProposer"]

logger = logging.getLogger(__name__)

_STATE_FORMAT = "paploss.cmaes"
_STATE_VERSION = 1


@PROPOSER_REGISTRY.register()
class CMAESProposer(Proposer):
    """CMA-ES (:class:`cmaes.CMA`) over θ as a search method.

    Args:
        start: ``[D]`` θ the distribution's mean starts at.
        sigma: initial step size in θ units.
        candidates: samples per round (the population size; at least 4: with fewer the
            library's rank-μ update has no weight to give).
        seed: seed of the library's random generator.
        lr_adapt: learning-rate adaptation for noisy rewards.
        score_mean: also propose the distribution's mean (role ``mean``) every round.
    """

    NAME = "cmaes"

    def __init__(
        self,
        start: Sequence[float],
        *,
        sigma: float,
        candidates: int,
        seed: int,
        lr_adapt: bool = False,
        score_mean: bool = True,
    ) -> None:
        if candidates < 4:
            raise ValueError(
                f"search.candidates: the cmaes method needs at least 4, got {candidates}"
            )
        self.config = {
            "start": [float(v) for v in start],
            "sigma": float(sigma),
            "candidates": int(candidates),
            "seed": int(seed),
            "lr_adapt": bool(lr_adapt),
        }
        self.score_mean = score_mean
        self._history: List[Dict[str, List]] = []
        self._asked: List[List[float]] = []
        self._cma = self._new_cma()

    @classmethod
    def from_settings(cls, settings: "SearchSettings", space: "SearchSpace") -> "CMAESProposer":
        """The distribution starts at ``search.init`` of ``space`` with ``cmaes.sigma``."""
        loop = settings.search
        return cls(
            space.initial_theta(loop.init),
            sigma=settings.cmaes.sigma,
            candidates=loop.candidates,
            seed=loop.seed,
            lr_adapt=settings.cmaes.lr_adapt,
            score_mean=loop.score_mean,
        )

    def _new_cma(self) -> "CMA":
        from cmaes import CMA

        start = np.asarray(self.config["start"], dtype=np.float64)
        bounds = np.tile([0.0, 1.0], (start.size, 1))
        return CMA(
            mean=start,
            sigma=self.config["sigma"],
            bounds=bounds,
            seed=self.config["seed"],
            population_size=self.config["candidates"],
            lr_adapt=self.config["lr_adapt"],
        )

    @property
    def round(self) -> int:
        return len(self._history)

    def propose(self) -> List[Candidate]:
        """The generation's samples, then its mean (with ``score_mean``)."""
        if not self._asked:
            self._asked = [_plain(self._cma.ask()) for _ in range(self._cma.population_size)]
        proposed = [Candidate(tuple(theta), "sample") for theta in self._asked]
        if self.score_mean:
            proposed.append(Candidate(self.point(), "mean"))
        return proposed

    def observe(self, scored: Sequence[ScoredCandidate]) -> Dict[str, Any]:
        """Tell the library the generation's values (``-reward``); returns the update's
        statistics (step size before and after, how far the mean moved)."""
        if not self._asked:
            raise ValueError("cmaes: observe() before propose() in this round")
        rewards = _sample_rewards(self._asked, scored)
        worst = min(r for r in rewards if r is not None)
        values = [-(worst if r is None else r) for r in rewards]
        mean_before, sigma_before = self._cma.mean.copy(), float(self._cma._sigma)
        self._cma.tell([(np.asarray(x), v) for x, v in zip(self._asked, values)])
        self._history.append({"samples": self._asked, "values": values})
        self._asked = []
        return {
            "sigma": sigma_before,
            "sigma_next": float(self._cma._sigma),
            "mean_shift_l2": float(np.linalg.norm(self._cma.mean - mean_before)),
            "num_unscored": sum(r is None for r in rewards),
        }

    def state_dict(self) -> Dict[str, Any]:
        return {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "config": dict(self.config),
            "history": [dict(generation) for generation in self._history],
            "asked": [list(theta) for theta in self._asked],
            "mean": list(self.point()),
            "sigma": float(self._cma._sigma),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replay a stored history (see the module docstring).

        Raises:
            ValueError: for a state of another method, version or settings.
        """
        if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
            raise ValueError("not a cmaes search state")
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported cmaes state version {state.get('version')!r}")
        if state.get("config") != self.config:
            raise ValueError(
                f"cmaes state was produced with other settings: {state.get('config')} != "
                f"{self.config}"
            )
        self._cma = self._new_cma()
        self._history, self._asked = [], []
        replayed_exactly = True
        for generation in state["history"]:
            replayed_exactly &= self._replay_asks(generation["samples"])
            self._cma.tell(
                [
                    (np.asarray(x), float(v))
                    for x, v in zip(generation["samples"], generation["values"])
                ]
            )
            self._history.append(
                {
                    "samples": [list(x) for x in generation["samples"]],
                    "values": list(generation["values"]),
                }
            )
        if state["asked"]:
            replayed_exactly &= self._replay_asks(state["asked"])
            self._asked = [list(x) for x in state["asked"]]
        if not replayed_exactly:
            logger.warning(
                "cmaes: the library asks other samples than the stored ones (another version?); "
                "the stored samples are used, later rounds differ from an uninterrupted search"
            )

    def _replay_asks(self, stored: Sequence[Sequence[float]]) -> bool:
        asked = [_plain(self._cma.ask()) for _ in range(self._cma.population_size)]
        return asked == [list(x) for x in stored]

    def point(self) -> Tuple[float, ...]:
        """The distribution's mean, inside the bounds."""
        return tuple(float(v) for v in np.clip(self._cma.mean, 0.0, 1.0))

    def describe(self) -> str:
        return f"sigma {self._cma._sigma:.4f}"

    def describe_update(self, stats: Mapping[str, Any]) -> str:
        return f"mean moved {stats['mean_shift_l2']:.4f}, sigma {stats['sigma_next']:.4f}"

    @staticmethod
    def point_from_state(state: Mapping[str, Any]) -> Optional[Tuple[float, ...]]:
        """The mean of a stored state."""
        mean = state.get("mean")
        return None if mean is None else tuple(float(v) for v in mean)

    @staticmethod
    def round_spread(record: "RoundRecord") -> Optional[float]:
        """The step size the round's samples were drawn with."""
        state = record.policy_state_start or {}
        return None if state.get("sigma") is None else float(state["sigma"])


def _plain(theta: Any) -> List[float]:
    return [float(v) for v in theta]


def _sample_rewards(
    asked: Sequence[Sequence[float]], scored: Sequence[ScoredCandidate]
) -> List[Optional[float]]:
    """The reward of each asked sample (None: not scored), matched by its θ."""
    by_theta = {tuple(s.theta): float(s.reward) for s in scored if s.role == "sample"}
    rewards = [by_theta.get(tuple(theta)) for theta in asked]
    if all(r is None for r in rewards):
        raise ValueError("cmaes: no sample of the round has a reward")
    return rewards
