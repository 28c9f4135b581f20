"""Search methods (*proposers*): what puts forward each round's candidates and learns from their
rewards. The controller, screening, trials, launchers, journal and reports are the same for every
method; ``search.method`` selects one by its registered name.

* :mod:`~paploss.search.proposers.base`: the :class:`Proposer` interface, the candidates it
  proposes and observes, and :data:`PROPOSER_REGISTRY`.
* :mod:`~paploss.search.proposers.policy`: the truncated-normal policy over θ and its PPO update.
* :mod:`~paploss.search.proposers.ppo`: the ``ppo`` method built on it.
* :mod:`~paploss.search.proposers.cma_es`: the ``cmaes`` method (CMA-ES over θ).
* :mod:`~paploss.search.proposers.evolution`: the ``evolution`` and ``random`` methods, loss
  graphs searched from scratch.

Importing this package registers the built-in methods.
"""

from . import cma_es, evolution, ppo  # noqa: F401  (registers the built-in methods)
from .base import (
    PROPOSER_REGISTRY,
    Candidate,
    Proposer,
    ScoredCandidate,
    build_proposer,
    journal_proposer,
    proposer_class,
)
from .cma_es import CMAESProposer
from .evolution import EvolutionProposer, RandomSearchProposer
from .policy import TruncatedNormalPolicy, UpdateStats
from .ppo import PPOProposer

__all__ = [
    "PROPOSER_REGISTRY",
    "CMAESProposer",
    "Candidate",
    "EvolutionProposer",
    "PPOProposer",
    "Proposer",
    "RandomSearchProposer",
    "ScoredCandidate",
    "TruncatedNormalPolicy",
    "UpdateStats",
    "build_proposer",
    "journal_proposer",
    "proposer_class",
]
