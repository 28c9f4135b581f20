"""Evolutionary search of graph losses from scratch (AutoLoss-Zero), deterministic and resumable.

A candidate (:class:`GraphCandidate`) is a classification graph and a box graph; the branches
that are not searched keep fixed expressions. :class:`Evolution` keeps a population of scored
candidates and proposes new ones:

* until the population holds ``population_size`` scored members, random graphs
  (:func:`~paploss.search.proposers.graph_mutation.random_graph`), after any ``initial``
  expressions;
* then tournament selection: ``tournament_size`` members drawn at random, the best is the
  parent; one of its searched branches is mutated (insert, delete or replace a node,
  :func:`~paploss.search.proposers.graph_mutation.mutate`).

A proposal whose canonical structure was already proposed is drawn again (up to
``max_retries`` times). Scores come back with :meth:`Evolution.tell`; a ``None`` reward (a
candidate rejected by screening, invalid, failed) leaves the population unchanged, so the
population only holds candidates that passed screening, as in AutoLoss-Zero. Beyond
``population_size`` the oldest member leaves (``replace: oldest``, regularised evolution) or the
worst (``replace: worst``).

Every proposal draws from its own ``random.Random`` seeded by ``(seed, proposal number)``, so the
search is a deterministic function of the seed and the rewards told, and its whole state is the
JSON-able :class:`EvolutionState` (:meth:`Evolution.state_dict`, :meth:`Evolution.from_state_dict`).

:class:`RandomSearch` proposes random candidates only (the baseline of the same API).

Usage::

    search = Evolution(EvolutionSettings(seed=0))
    while budget:
        candidates = search.propose(8)
        rewards = [score(c) for c in candidates]     # None: rejected / not scored
        search.tell(candidates, rewards)
        journal.write(search.state_dict())
    search.best                                      # (candidate, reward)
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from paploss.losses.graph.branches import (
    BRANCHES,
    CE_EXPRESSION,
    GIOU_EXPRESSION,
    GRAPH_LOSS_NAME,
    parse_branch,
)
from paploss.losses.graph.graph import Node, structural_hash
from paploss.search.proposers.graph_mutation import GraphSpace, mutate, random_graph
from paploss.utils.validation import is_int

__all__ = [
    "GraphCandidate",
    "EvolutionSettings",
    "Member",
    "EvolutionState",
    "Evolution",
    "RandomSearch",
]

_REPLACE = ("oldest", "worst")


@dataclass(frozen=True)
class GraphCandidate:
    """A candidate loss: one graph per branch.

    Attributes:
        cls: the classification graph.
        box: the box graph.
        index: its proposal number in the search (0-based).
        origin: ``"initial"``, ``"random"`` or the mutation that made it (``"insert"``,
            ``"delete"``, ``"replace"``).
        parent: the proposal number of its parent (mutations only).
        branch: the mutated branch (mutations only).
    """

    cls: Node
    box: Node
    index: int = 0
    origin: str = "random"
    parent: Optional[int] = None
    branch: Optional[str] = None

    @property
    def key(self) -> str:
        """Structural hash of the two graphs (equal for canonically equal candidates)."""
        return structural_hash(self.cls, self.box)

    def graph(self, branch: str) -> Node:
        return self.cls if branch == "cls" else self.box

    def expressions(self) -> Dict[str, str]:
        """``{"cls": text, "box": text}``."""
        return {"cls": str(self.cls), "box": str(self.box)}

    def overrides(self) -> Dict[str, Any]:
        """The config values that train this candidate (``MODEL.PAPLOSS.LOSS: "graph"`` and the
        two expressions)."""
        values: Dict[str, Any] = {"MODEL.PAPLOSS.LOSS": GRAPH_LOSS_NAME}
        for name, text in self.expressions().items():
            values[BRANCHES[name].config_key] = text
        return values

    def to_dict(self) -> Dict[str, Any]:
        return {
            "index": self.index,
            "cls": str(self.cls),
            "box": str(self.box),
            "origin": self.origin,
            "parent": self.parent,
            "branch": self.branch,
            "key": self.key,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GraphCandidate":
        """Inverse of :meth:`to_dict` (``key`` is recomputed).

        Raises:
            ValueError: naming the field, for an expression that does not parse.
        """
        graphs = {}
        for name in ("cls", "box"):
            try:
                graphs[name] = parse_branch(data[name], BRANCHES[name])
            except (KeyError, ValueError) as e:
                raise ValueError(f"candidate {name}: {e}") from None
        return cls(
            graphs["cls"],
            graphs["box"],
            index=int(data.get("index", 0)),
            origin=str(data.get("origin", "random")),
            parent=data.get("parent"),
            branch=data.get("branch"),
        )


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class EvolutionSettings:
    """Settings of the evolution (the ``evolution:`` section of a search file).

    Attributes:
        seed: seeds every proposal.
        population_size: scored members kept (AutoLoss-Zero: a few hundred to thousands).
        tournament_size: members drawn for a tournament (the best is the parent).
        replace: which member leaves a full population: ``"oldest"`` or ``"worst"``.
        branches: the searched branches (``"cls"``, ``"box"``).
        fixed: expressions of the branches that are not searched.
        initial: candidates proposed first, as ``{"cls": text, "box": text}`` (a missing branch
            takes its ``fixed`` expression); empty: start from scratch.
        spaces: per branch, :class:`~paploss.search.proposers.graph_mutation.GraphSpace` fields to
            change (e.g. ``{"box": {"inputs": ["p", "g", "i", "u", "e", "d", "t"]}}``).
        max_retries: draws of a proposal while its structure was already proposed.
    """

    seed: int = 0
    population_size: int = 20
    tournament_size: int = 5
    replace: str = "oldest"
    branches: Tuple[str, ...] = ("cls", "box")
    fixed: Mapping[str, str] = field(
        default_factory=lambda: {"cls": CE_EXPRESSION, "box": GIOU_EXPRESSION}
    )
    initial: Tuple[Mapping[str, str], ...] = ()
    spaces: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    max_retries: int = 20

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        p = "evolution"
        _check(is_int(self.seed, 0), f"{p}.seed must be an integer >= 0")
        _check(is_int(self.population_size, 1), f"{p}.population_size must be an integer >= 1")
        _check(
            is_int(self.tournament_size, 1) and self.tournament_size <= self.population_size,
            f"{p}.tournament_size must be an integer in [1, population_size]",
        )
        _check(self.replace in _REPLACE, f"{p}.replace must be one of {_REPLACE}")
        _check(
            bool(self.branches) and all(b in BRANCHES for b in self.branches),
            f"{p}.branches must be a non-empty subset of {list(BRANCHES)}",
        )
        _check(is_int(self.max_retries, 0), f"{p}.max_retries must be an integer >= 0")
        for name in BRANCHES:
            if name not in self.branches:
                _check(name in self.fixed, f"{p}.fixed.{name} is needed: {name} is not searched")
        for name, text in self.fixed.items():
            _check(name in BRANCHES, f"{p}.fixed: unknown branch {name!r}")
            try:
                parse_branch(text, BRANCHES[name])
            except ValueError as e:
                raise ValueError(f"{p}.fixed.{name}: {e}") from None
        for index, entry in enumerate(self.initial):
            for name, text in entry.items():
                _check(name in BRANCHES, f"{p}.initial[{index}]: unknown branch {name!r}")
                try:
                    parse_branch(text, BRANCHES[name])
                except ValueError as e:
                    raise ValueError(f"{p}.initial[{index}].{name}: {e}") from None
        for name, overrides in self.spaces.items():
            _check(name in BRANCHES, f"{p}.spaces: unknown branch {name!r}")
            fields = {f.name for f in dataclasses.fields(GraphSpace)}
            unknown = sorted(set(overrides) - fields)
            _check(not unknown, f"{p}.spaces.{name}: unknown field(s) {unknown}")
            try:
                GraphSpace.for_branch(BRANCHES[name], **overrides)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{p}.spaces.{name}: {e}") from None

    def space(self, branch: str) -> GraphSpace:
        """The graph space of a branch."""
        return GraphSpace.for_branch(BRANCHES[branch], **self.spaces.get(branch, {}))

    def to_dict(self) -> Dict[str, Any]:
        """Plain data (JSON/YAML-able)."""
        return {
            "seed": self.seed,
            "population_size": self.population_size,
            "tournament_size": self.tournament_size,
            "replace": self.replace,
            "branches": list(self.branches),
            "fixed": dict(self.fixed),
            "initial": [dict(entry) for entry in self.initial],
            "spaces": {name: dict(values) for name, values in self.spaces.items()},
            "max_retries": self.max_retries,
        }

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]]) -> "EvolutionSettings":
        """Build and validate from plain data; missing keys keep their defaults.

        Raises:
            ValueError: naming an unknown key or an invalid value.
        """
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        _check(not unknown, f"unknown evolution setting(s) {unknown}; known: {sorted(known)}")
        if "branches" in data:
            data["branches"] = tuple(data["branches"])
        if "initial" in data:
            data["initial"] = tuple(dict(entry) for entry in data["initial"])
        if "fixed" in data:
            data["fixed"] = {**cls().fixed, **dict(data["fixed"])}
        settings = cls(**data)
        settings.validate()
        return settings


@dataclass
class Member:
    """A scored candidate of the population."""

    candidate: GraphCandidate
    reward: float

    def to_dict(self) -> Dict[str, Any]:
        return {"candidate": self.candidate.to_dict(), "reward": self.reward}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Member":
        return cls(GraphCandidate.from_dict(data["candidate"]), float(data["reward"]))


@dataclass
class EvolutionState:
    """Everything an :class:`Evolution` needs to continue exactly (JSON-able via
    :meth:`to_dict`).

    Attributes:
        proposed: candidates proposed so far (the next proposal's number).
        told: rewards told so far (``None`` ones included).
        discarded: rewards told as ``None``.
        population: scored members, oldest first.
        best: the best member ever told (it may have left the population).
        seen: structural hashes of every proposed candidate, in proposal order.
    """

    proposed: int = 0
    told: int = 0
    discarded: int = 0
    population: List[Member] = field(default_factory=list)
    best: Optional[Member] = None
    seen: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "proposed": self.proposed,
            "told": self.told,
            "discarded": self.discarded,
            "population": [member.to_dict() for member in self.population],
            "best": None if self.best is None else self.best.to_dict(),
            "seen": list(self.seen),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EvolutionState":
        return cls(
            proposed=int(data["proposed"]),
            told=int(data["told"]),
            discarded=int(data.get("discarded", 0)),
            population=[Member.from_dict(m) for m in data.get("population", [])],
            best=None if data.get("best") is None else Member.from_dict(data["best"]),
            seen=list(data.get("seen", [])),
        )


class Evolution:
    """Tournament-selection evolution of graph candidates (see the module docstring).

    Args:
        settings: the evolution's settings (validated here).
        state: a state to continue from (default: a fresh search).
    """

    #: The value of the search file's ``search.method`` that selects this proposer.
    method = "evolution"

    def __init__(
        self, settings: Optional[EvolutionSettings] = None, state: Optional[EvolutionState] = None
    ) -> None:
        self.settings = settings or EvolutionSettings()
        self.settings.validate()
        self.state = state or EvolutionState()
        self._seen = set(self.state.seen)
        self._spaces = {name: self.settings.space(name) for name in self.settings.branches}
        self._fixed = {
            name: parse_branch(text, BRANCHES[name]) for name, text in self.settings.fixed.items()
        }

    # -------------------------------------------------------------------------------- API

    def propose(self, n: int) -> List[GraphCandidate]:
        """The next ``n`` candidates (advances :attr:`state`)."""
        if not is_int(n, 0):
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        return [self._propose_one() for _ in range(n)]

    def tell(
        self, candidates: Sequence[GraphCandidate], rewards: Sequence[Optional[float]]
    ) -> None:
        """Report rewards (``None``: not scored, e.g. rejected by screening).

        Scored candidates join the population in the order given; a full population then
        loses its oldest or worst members.
        """
        if len(candidates) != len(rewards):
            raise ValueError(f"{len(candidates)} candidates but {len(rewards)} rewards")
        state = self.state
        for candidate, reward in zip(candidates, rewards):
            state.told += 1
            if reward is None or not math.isfinite(float(reward)):
                state.discarded += 1
                continue
            member = Member(candidate, float(reward))
            state.population.append(member)
            if state.best is None or member.reward > state.best.reward:
                state.best = member
        while len(state.population) > self.settings.population_size:
            if self.settings.replace == "oldest":
                state.population.pop(0)
            else:
                worst = min(range(len(state.population)), key=lambda i: state.population[i].reward)
                state.population.pop(worst)

    @property
    def best(self) -> Optional[Tuple[GraphCandidate, float]]:
        """``(candidate, reward)`` of the best candidate told so far, or None."""
        best = self.state.best
        return None if best is None else (best.candidate, best.reward)

    def state_dict(self) -> Dict[str, Any]:
        """JSON-able state: ``{"method", "settings", "state"}``."""
        return {
            "method": self.method,
            "settings": self.settings.to_dict(),
            "state": self.state.to_dict(),
        }

    @classmethod
    def from_state_dict(cls, data: Mapping[str, Any]) -> "Evolution":
        """Continue a search from :meth:`state_dict` output.

        Raises:
            ValueError: if the data belongs to another method.
        """
        if data.get("method") != cls.method:
            raise ValueError(f"state of method {data.get('method')!r}, expected {cls.method!r}")
        return cls(
            EvolutionSettings.from_dict(data["settings"]), EvolutionState.from_dict(data["state"])
        )

    # -------------------------------------------------------------------------- internals

    def _rng(self) -> random.Random:
        return random.Random(f"{self.settings.seed}:{self.state.proposed}")

    def _candidate(self, graphs: Mapping[str, Node], **info: Any) -> GraphCandidate:
        merged = {**self._fixed, **graphs}
        return GraphCandidate(merged["cls"], merged["box"], index=self.state.proposed, **info)

    def _random_candidate(self, rng: random.Random) -> GraphCandidate:
        graphs = {name: random_graph(rng, space) for name, space in self._spaces.items()}
        return self._candidate(graphs, origin="random")

    def _initial_candidate(self, entry: Mapping[str, str]) -> GraphCandidate:
        graphs = {name: parse_branch(text, BRANCHES[name]) for name, text in entry.items()}
        return self._candidate(graphs, origin="initial")

    def _tournament(self, rng: random.Random) -> Member:
        population = self.state.population
        drawn = rng.sample(
            range(len(population)), min(self.settings.tournament_size, len(population))
        )
        return max((population[i] for i in drawn), key=lambda member: member.reward)

    def _mutant(self, rng: random.Random) -> Optional[GraphCandidate]:
        parent = self._tournament(rng).candidate
        branch = rng.choice(list(self.settings.branches))
        result = mutate(rng, parent.graph(branch), self._spaces[branch])
        if result is None:
            return None
        graph, kind = result
        graphs = {"cls": parent.cls, "box": parent.box, branch: graph}
        return self._candidate(graphs, origin=kind, parent=parent.index, branch=branch)

    def _draw(self, rng: random.Random) -> GraphCandidate:
        state = self.state
        if state.proposed < len(self.settings.initial):
            return self._initial_candidate(self.settings.initial[state.proposed])
        if self._mutating():
            mutant = self._mutant(rng)
            if mutant is not None:
                return mutant
        return self._random_candidate(rng)

    def _mutating(self) -> bool:
        return len(self.state.population) >= self.settings.population_size

    def _propose_one(self) -> GraphCandidate:
        rng = self._rng()
        candidate = self._draw(rng)
        for _ in range(self.settings.max_retries):
            if candidate.key not in self._seen:
                break
            candidate = self._draw(rng)
        self._seen.add(candidate.key)
        self.state.seen.append(candidate.key)
        self.state.proposed += 1
        return candidate


class RandomSearch(Evolution):
    """Random graphs only, with the API and state of :class:`Evolution` (the baseline search;
    ``population_size``, ``tournament_size`` and ``replace`` only bound the kept members)."""

    method = "random"

    def _mutating(self) -> bool:
        return False
