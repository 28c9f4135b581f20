"""The ``evolution`` and ``random`` search methods: loss graphs searched from scratch
(AutoLoss-Zero) on the search's screening, trials, launchers, journal and reports.

The search itself is :mod:`paploss.search.proposers.graph_evolution` (with the mutations of
:mod:`paploss.search.proposers.graph_mutation`); this module runs it as a search method. A
candidate is a classification and a box graph of the Fast R-CNN head
(:class:`~paploss.search.proposers.graph_evolution.GraphCandidate`) in the space
:class:`~paploss.search.spaces.GraphLossSpace`; it has no θ, and trains with its config
values ``MODEL.PAPLOSS.LOSS: "graph"`` and ``MODEL.PAPLOSS.GRAPH.CLS`` / ``BOX``.

* ``evolution`` (``graph_evolution.Evolution``): random graphs until the population holds
  ``evolution.population_size`` members, then tournament selection and one mutation (insert,
  delete or replace a node) of the parent's graph of one searched branch.
* ``random`` (``graph_evolution.RandomSearch``): random graphs only, the baseline.

Each round proposes ``search.candidates`` graphs and, with ``search.max_proposals``, more while
fewer than ``search.candidates`` of them passed the screening (invalid on the probes, rejected
by the loss-rejection protocol, or gradient-equivalent to an earlier candidate): the screening
is cheap, proxy trainings are not. The population learns only from trained candidates: a
``done`` candidate joins it with its reward (the proxy's bbox AP); rejected, duplicate (its
equivalent original already stands for it), diverged and failed ones do not, as in
AutoLoss-Zero. Settings: the ``evolution:`` section (``graph_evolution.EvolutionSettings``
without ``seed``; the method is seeded by ``search.seed``).

The state is the evolution's own (``graph_evolution.Evolution.state_dict``, every proposal drawn from a generator seeded by the seed and its number) plus the round's proposals waiting
for their rewards, so a resumed search proposes and learns exactly as an uninterrupted one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Mapping, Optional, Sequence

from paploss.search.proposers.base import (
    PROPOSER_REGISTRY,
    Candidate,
    Proposer,
    ScoredCandidate,
)
from paploss.search.proposers.graph_evolution import Evolution, GraphCandidate, RandomSearch

if TYPE_CHECKING:  # pragma: no cover
    from paploss.search.settings import SearchSettings
    from paploss.search.spaces import GraphLossSpace

__all__ = ["EvolutionProposer", "RandomSearchProposer", "LEARNED_STATUSES"]

#: Statuses whose reward a graph search learns from (the candidate was trained).
LEARNED_STATUSES = ("done",)


@PROPOSER_REGISTRY.register()
class EvolutionProposer(Proposer):
    """Tournament-selection evolution of loss graphs as a search method (module docstring).

    Args:
        search: the evolution (its settings and state).
        candidates: proposals per round (before any :meth:`propose_more`).
        rounds: the search's rounds (for log messages).
    """

    NAME = "evolution"
    #: The :mod:`~paploss.search.proposers.graph_evolution` search this method runs.
    SEARCH: ClassVar[type] = Evolution

    def __init__(self, search: Evolution, *, candidates: int, rounds: Optional[int] = None) -> None:
        if type(search) is not self.SEARCH:
            raise TypeError(f"{self.NAME} runs a {self.SEARCH.__name__}")
        self.search = search
        self.candidates = candidates
        self.rounds = rounds
        self._round = 0
        self._pending: List[GraphCandidate] = []

    @classmethod
    def from_settings(
        cls, settings: "SearchSettings", space: "GraphLossSpace"
    ) -> "EvolutionProposer":
        """A fresh search with the ``evolution`` section, seeded by ``search.seed``.

        Raises:
            ValueError: with ``search.score_mean`` (the method has no mean to score) or a
                ``search.init`` other than ``identity``.
        """
        loop = settings.search
        if loop.init != "identity":
            raise ValueError(
                f"search.init: the {cls.NAME} method starts from random graphs; remove "
                f"search.init ({loop.init!r})"
            )
        if loop.score_mean:
            raise ValueError(
                f"search.score_mean: the {cls.NAME} method has no mean to score; set "
                "search.score_mean: false"
            )
        return cls(
            cls.SEARCH(settings.evolution_settings()),
            candidates=loop.candidates,
            rounds=loop.rounds,
        )

    @classmethod
    def build_space(cls, settings: "SearchSettings", cfg: Any) -> "GraphLossSpace":
        """The loss graphs of the model's ROI head, with the searched branches of ``evolution``.

        Raises:
            ValueError: for a model without a graph-loss ROI head.
        """
        from paploss.search.spaces import GraphLossSpace

        return GraphLossSpace.from_config(cfg, settings.evolution_settings())

    @property
    def round(self) -> int:
        return self._round

    def propose(self) -> List[Candidate]:
        """``candidates`` new graphs."""
        self._pending = []
        return self.propose_more(self.candidates)

    def propose_more(self, count: int) -> List[Candidate]:
        """``count`` more graphs of this round."""
        proposed = self.search.propose(count)
        self._pending += proposed
        return [Candidate((), "sample", overrides=c.overrides()) for c in proposed]

    def observe(self, scored: Sequence[ScoredCandidate]) -> Dict[str, Any]:
        """Tell the evolution the rewards of the round's trained candidates (``None`` for the
        others); returns counts, the population's size and the best member so far."""
        by_index = {s.index: s for s in scored}
        if any(index < 0 or index >= len(self._pending) for index in by_index):
            raise ValueError(
                f"scored candidates must carry their index among the round's "
                f"{len(self._pending)} proposals"
            )
        rewards = []
        for index in range(len(self._pending)):
            entry = by_index.get(index)
            learned = entry is not None and entry.status in LEARNED_STATUSES
            rewards.append(float(entry.reward) if learned else None)
        self.search.tell(self._pending, rewards)
        best = self.search.best
        stats = {
            "proposed": len(self._pending),
            "learned": sum(r is not None for r in rewards),
            "population": len(self.search.state.population),
            "best_reward": None if best is None else best[1],
            "best_losses": None if best is None else best[0].expressions(),
        }
        self._pending = []
        self._round += 1
        return stats

    def state_dict(self) -> Dict[str, Any]:
        """``{"method", "round", "search", "pending"}``: the evolution's state and the round's
        proposals waiting for rewards."""
        return {
            "method": self.NAME,
            "round": self._round,
            "search": self.search.state_dict(),
            "pending": [candidate.to_dict() for candidate in self._pending],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: for a state of another method or of other evolution settings.
        """
        if state.get("method") != self.NAME:
            raise ValueError(f"state of method {state.get('method')!r}, expected {self.NAME!r}")
        stored = state["search"]
        if stored.get("settings") != self.search.settings.to_dict():
            raise ValueError("the stored evolution has other settings")
        self.search = self.SEARCH.from_state_dict(stored)
        self._round = int(state["round"])
        self._pending = [GraphCandidate.from_dict(c) for c in state.get("pending", [])]

    def point(self) -> None:
        """A graph search has no single point of its own (the best trial is exported)."""
        return None

    def describe(self) -> str:
        population = len(self.search.state.population)
        size = self.search.settings.population_size
        if population < size:
            return f"population {population}/{size}: random graphs"
        return f"population {population}: tournaments of {self.search.settings.tournament_size}"

    def describe_update(self, stats: Mapping[str, Any]) -> str:
        best = stats.get("best_reward")
        text = f"{stats['learned']} of {stats['proposed']} proposals trained"
        if best is not None:
            losses = stats.get("best_losses") or {}
            text += f"; best {best:.4f}: {losses.get('cls')} | {losses.get('box')}"
        return text


@PROPOSER_REGISTRY.register()
class RandomSearchProposer(EvolutionProposer):
    """Random loss graphs only (the baseline), with the settings and state of ``evolution``."""

    NAME = "random"
    SEARCH = RandomSearch

    def describe(self) -> str:
        return "random graphs"
