"""The interface of a search method (a *proposer*) and the registry that names them.

A proposer puts forward each round's candidates and learns from their rewards; everything else
of a search (screening, trials, launchers, the journal, reports) is the same for every method.
One round, as :class:`~paploss.search.controller.SearchController` runs it::

    candidates = proposer.propose()                  # [Candidate(theta, role), ...]
    journal.begin_round(r, proposer.state_dict(), screened candidates)
    ...                                              # trials score the candidates
    stats = proposer.observe(scored)                 # [ScoredCandidate, ...] of the round
    journal.end_round(r, proposer.state_dict(), stats)

A search killed at any point resumes exactly: the controller restores the state stored with the
open round (saved right after :meth:`Proposer.propose`, so random generators included) or with
the last closed round, and a proposer must then propose and observe as if it had never stopped.
Its state is therefore plain JSON data (floats survive a JSON round trip exactly).

**Candidates.** A candidate is a point θ of the search space, ``[D]`` values in [0, 1]
(:class:`~paploss.search.spaces.SearchSpace` turns it into ``MODEL.PAPLOSS`` config values),
and a role: ``"sample"`` (a candidate the method learns from) or ``"mean"`` (a reference point
scored alongside, e.g. the policy mean; its reward is reported, and the method may use it). A
method whose candidates are not such points (the ``evolution`` of loss graphs) gives their
config values itself (:attr:`Candidate.overrides`, with an empty θ); the screening and the
trials see only config values.

**Search spaces.** :meth:`Proposer.build_space` makes the method's space from the searched
model's config: by default the PAP-loss parameters of its heads
(:class:`~paploss.search.spaces.SearchSpace`); the ``evolution`` method's is
:class:`~paploss.search.spaces.GraphLossSpace`. A space has ``heads``, ``dim``,
``summary()``, ``to_dict()`` (stored in the journal, read back by
:func:`~paploss.search.spaces.space_from_dict`), ``export_overrides(theta, overrides)`` (the
values an exported config writes) and ``KIND`` (which screener
:func:`~paploss.search.screening.build_screener` builds for its candidates).

**More proposals within a round.** With ``search.max_proposals``, the controller asks
:meth:`Proposer.propose_more` for further candidates while fewer than ``search.candidates`` of
the round's candidates passed the screening (a method that proposes once per round, like
``ppo``, returns none).

**Adding a method.** Subclass :class:`Proposer`, register it by name and select it with
``search.method`` in the search settings (a section of its own settings belongs in
:mod:`paploss.search.settings`, next to ``policy:`` of the ``ppo`` method)::

    @PROPOSER_REGISTRY.register()
    class EvolutionProposer(Proposer):
        NAME = "evolution"
        ...

Nothing here imports torch or Detectron2.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

from paploss.utils.registry import NamedRegistry

if TYPE_CHECKING:  # pragma: no cover
    from paploss.search.journal import RoundRecord
    from paploss.search.settings import SearchSettings
    from paploss.search.spaces import SearchSpace

__all__ = [
    "PROPOSER_REGISTRY",
    "Candidate",
    "ScoredCandidate",
    "Proposer",
    "proposer_class",
    "journal_proposer",
    "build_proposer",
]

PROPOSER_REGISTRY = NamedRegistry("PROPOSER")
PROPOSER_REGISTRY.__doc__ = """Search methods by name (``search.method``): :class:`Proposer`
subclasses, registered under their ``NAME``."""


@dataclass(frozen=True)
class Candidate:
    """One candidate a proposer puts forward.

    Attributes:
        theta: ``[D]`` point of the search space, values in [0, 1].
        role: ``"sample"`` (learned from) or ``"mean"`` (a scored reference point), a value of
            :data:`paploss.search.journal.TRIAL_ROLES`.
        overrides: the config values the candidate trains with (dotted key → plain value);
            None: those the search space makes of θ.
    """

    theta: Tuple[float, ...]
    role: str = "sample"
    overrides: Optional[Mapping[str, Any]] = field(default=None, hash=False)


@dataclass(frozen=True)
class ScoredCandidate:
    """A candidate of the round with its reward, as :meth:`Proposer.observe` receives it.

    Attributes:
        theta: the candidate's θ.
        role: its role.
        reward: its reward (trained, or given by the screening: see ``status``).
        status: how the reward came about: ``done``, ``diverged`` (the penalty
            ``proxy.diverged_reward``), ``rejected`` (``screening.rejection.rejected_reward``)
            or ``duplicate`` (the reward of its equivalent).
        index: its position among the round's proposals (the trial index; -1: not given).
    """

    theta: Tuple[float, ...]
    role: str
    reward: float
    status: str
    index: int = -1


class Proposer(abc.ABC):
    """A search method: proposes each round's candidates and learns from their rewards.

    Subclasses set :attr:`NAME` (their ``search.method``), register with
    ``@PROPOSER_REGISTRY.register()`` and implement the abstract methods. The static methods
    read a stored state without building the proposer (reports use them on a journal alone).
    """

    #: The name ``search.method`` selects the method by.
    NAME: ClassVar[str] = ""

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: "SearchSettings", space: "SearchSpace") -> "Proposer":
        """The proposer of a new search (round 0) with these settings over ``space``."""

    @classmethod
    def build_space(cls, settings: "SearchSettings", cfg: Any) -> Any:
        """The search space of this method for the searched model (see the module docstring).

        By default the PAP-loss parameters of ``model.heads`` (every PAP-loss head of the model
        when empty), with the groups of ``model.fixed`` kept out.

        Args:
            settings: the search's settings.
            cfg: the searched model's Detectron2 config.

        Raises:
            ValueError: for a model this method cannot search.
        """
        from paploss.search.spaces import SearchSpace

        model = settings.model
        if model.heads:
            return SearchSpace(model.heads, fixed=model.fixed or None)
        return SearchSpace.from_config(cfg, fixed=model.fixed or None)

    @property
    @abc.abstractmethod
    def round(self) -> int:
        """Index of the round the next :meth:`propose` is for: the rounds observed so far."""

    @abc.abstractmethod
    def propose(self) -> List[Candidate]:
        """The candidates of the current round (at least one ``sample``)."""

    def propose_more(self, count: int) -> List[Candidate]:
        """Up to ``count`` further ``sample`` candidates of the current round (see the module
        docstring); none by default."""
        return []

    @abc.abstractmethod
    def observe(self, scored: Sequence[ScoredCandidate]) -> Dict[str, Any]:
        """Learn from the round's scored candidates and advance to the next round.

        Args:
            scored: every candidate of the round that has a reward, in proposal order, with at
                least one ``sample`` (failed trials are left out).

        Returns:
            JSON-able statistics of the update, stored with the round.
        """

    @abc.abstractmethod
    def state_dict(self) -> Dict[str, Any]:
        """The full state as JSON-able data."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: for a state of another method or of other settings.
        """

    @abc.abstractmethod
    def point(self) -> Optional[Tuple[float, ...]]:
        """The method's current best guess θ (``ppo``: the policy mean), or None."""

    def describe(self) -> str:
        """A few words about the current round for the log (``"sigma 0.2000"``)."""
        return ""

    def describe_update(self, stats: Mapping[str, Any]) -> str:
        """A few words about an update for the log, from what :meth:`observe` returned
        (``"mean moved 0.0123"``)."""
        return ""

    @staticmethod
    def point_from_state(state: Mapping[str, Any]) -> Optional[Tuple[float, ...]]:
        """:meth:`point` of a stored state (None when the method has no such point)."""
        return None

    @staticmethod
    def round_spread(record: "RoundRecord") -> Optional[float]:
        """The exploration radius of a stored round in θ units (``ppo``: σ), or None."""
        return None


def proposer_class(method: str) -> type:
    """The registered proposer class of ``search.method``.

    Raises:
        ValueError: ``search.method`` names no registered method (the message lists them).
    """
    try:
        return PROPOSER_REGISTRY.get(method)
    except KeyError:
        known = ", ".join(sorted(name for name, _ in PROPOSER_REGISTRY))
        raise ValueError(
            f"search.method: unknown search method {method!r}; known: {known}"
        ) from None


def journal_proposer(journal_settings: Mapping[str, Any]) -> type:
    """The proposer class of the settings a journal stores (``search.method``; a journal without
    the key is a ``ppo`` search)."""
    from paploss.search.settings import DEFAULT_METHOD

    return proposer_class((journal_settings.get("search") or {}).get("method", DEFAULT_METHOD))


def build_proposer(settings: "SearchSettings", space: "SearchSpace") -> Proposer:
    """The proposer ``settings.search.method`` names, for a new search over ``space``."""
    return proposer_class(settings.search.method).from_settings(settings, space)
