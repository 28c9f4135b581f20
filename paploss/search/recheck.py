"""The winner's-curse guard (``search.recheck``): which candidates are trained again, and which is
the search's best.

A proxy reward is one noisy draw; the highest of many draws is most often a lucky one. With
``search.recheck.top = k`` the controller, after the last round, opens ``search.recheck.seeds``
*recheck rounds* (round indices ``search.rounds``, ``search.rounds + 1``, ...; each seeded like a
further round, so every recheck trains with a seed no round used). Each holds one trial of role
``recheck`` per candidate of :func:`recheck_candidates`: the ``k`` best distinct candidates of
the search rounds by proxy reward. The method never learns from recheck rounds. The search's
best (:func:`declared_best`) is then the rechecked candidate with the highest mean over all of its
rewards, the original one included; without rechecks it is the single highest reward.

Candidates are the same when they train with the same config values (their ``overrides``).
Nothing here imports torch or Detectron2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from paploss.search.journal import SearchJournal, TrialRecord

__all__ = [
    "DeclaredBest",
    "declared_best",
    "recheck_candidates",
    "recheck_rounds",
    "search_rounds",
]

#: Roles of the search rounds' candidates (what a recheck can pick).
_CANDIDATE_ROLES = ("sample", "mean")


@dataclass(frozen=True)
class DeclaredBest:
    """The search's best candidate and how it was chosen.

    Attributes:
        trial: its first trained trial in the search rounds (its θ, config values and folder).
        rewards: every reward it got, the search round's first, then the rechecks'.
        how: ``"recheck"`` (best mean over its rewards among the rechecked candidates) or
            ``"single reward"`` (the highest single proxy reward).
    """

    trial: TrialRecord
    rewards: Tuple[float, ...]
    how: str

    @property
    def mean_reward(self) -> float:
        return sum(self.rewards) / len(self.rewards)

    def describe(self) -> str:
        """One line for logs, the status and the export header."""
        where = f"round {self.trial.round}, trial {self.trial.index} ({self.trial.role})"
        if self.how == "recheck":
            rewards = ", ".join(f"{r:.4f}" for r in self.rewards)
            return (
                f"best by recheck: {where}, mean proxy reward {self.mean_reward:.4f} over "
                f"{len(self.rewards)} seeds ({rewards})"
            )
        return f"best by a single proxy reward: {where}, proxy reward {self.rewards[0]:.4f}"


def candidate_key(trial: TrialRecord) -> str:
    """What makes two trials the same candidate: their config values."""
    return json.dumps(trial.overrides, sort_keys=True)


def recheck_rounds(total_rounds: int, seeds: int) -> range:
    """Indices of the recheck rounds after ``total_rounds`` search rounds."""
    return range(total_rounds, total_rounds + seeds)


def _search_round_trials(journal: SearchJournal, total_rounds: int) -> List[TrialRecord]:
    return [
        t
        for t in journal.trials()
        if t.round < total_rounds and t.role in _CANDIDATE_ROLES and t.status == "done"
    ]


def recheck_candidates(journal: SearchJournal, total_rounds: int, top: int) -> List[TrialRecord]:
    """The ``top`` best distinct candidates of the search rounds, best first.

    Trained trials (``done``) of roles ``sample`` and ``mean`` count, ranked by proxy reward
    (earlier trials first on ties); a candidate trained twice counts once, with its first trial.
    """
    ranked = sorted(
        _search_round_trials(journal, total_rounds),
        key=lambda t: (-float(t.reward), t.round, t.index),
    )
    chosen: Dict[str, TrialRecord] = {}
    for trial in ranked:
        chosen.setdefault(candidate_key(trial), trial)
        if len(chosen) == top:
            break
    return list(chosen.values())


def search_rounds(journal: SearchJournal) -> int:
    """``search.rounds`` of the journal's settings (the rounds after them are recheck rounds)."""
    return int(journal.settings["search"]["rounds"])


def declared_best(journal: SearchJournal) -> Optional[DeclaredBest]:
    """The search's best candidate (see the module docstring), or None before any trial is done."""
    total_rounds = search_rounds(journal)
    originals = _search_round_trials(journal, total_rounds)
    rechecks = [
        t
        for t in journal.trials()
        if t.round >= total_rounds and t.role == "recheck" and t.status == "done"
    ]
    if not rechecks:
        best = journal.best_trial()
        return None if best is None else DeclaredBest(best, (float(best.reward),), "single reward")
    rewards: Dict[str, List[float]] = {}
    first: Dict[str, TrialRecord] = {}
    for trial in sorted(originals, key=lambda t: (t.round, t.index)):
        key = candidate_key(trial)
        first.setdefault(key, trial)
        rewards.setdefault(key, []).append(float(trial.reward))
    rechecked = {candidate_key(t) for t in rechecks}
    for trial in sorted(rechecks, key=lambda t: (t.round, t.index)):
        rewards[candidate_key(trial)].append(float(trial.reward))
    scored = [
        DeclaredBest(first[key], tuple(rewards[key]), "recheck")
        for key in first
        if key in rechecked
    ]
    return max(scored, key=_rank_key)


def _rank_key(best: DeclaredBest) -> Tuple[float, int, int]:
    # highest mean first; on ties the earlier trial
    return (best.mean_reward, -best.trial.round, -best.trial.index)
