"""Successive halving inside a round (``search.halving``).

Every trial of a round first trains a prefix of the proxy's schedule (its *partial* training,
:func:`partial_training_iterations`) and is evaluated; then the better half of the round's
samples by that partial reward and the policy mean continue to the full proxy
(:func:`select_halves`), and the other samples keep their partial reward. The selection reads
the stored partial rewards only, so a resumed search selects the same trials.

The journal keeps the halving in each trial's metrics (:data:`PARTIAL_REWARD`,
:data:`PARTIAL_ITERATIONS`, :data:`HALVING`).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import List, Optional, Sequence

from paploss.search.journal import SearchJournal, TrialRecord
from paploss.search.settings import SearchSettings
from paploss.search.trials.runner import remove_checkpoints

__all__ = [
    "PARTIAL_REWARD",
    "PARTIAL_ITERATIONS",
    "HALVING",
    "better_half",
    "partial_training_iterations",
    "selection_due",
    "select_halves",
]

logger = logging.getLogger(__name__)

#: Trial metrics of the successive halving (``search.halving``): the reward and iterations of the
#: partial training, and whether the trial then ``continued`` or was ``stopped``.
PARTIAL_REWARD, PARTIAL_ITERATIONS, HALVING = "partial_reward", "partial_iterations", "halving"


def better_half(rewards: Sequence[float]) -> List[int]:
    """The successive halving's selection (``search.halving``): the positions of the
    ``ceil(n/2)`` highest of ``n`` partial rewards, ties by position.

    Args:
        rewards: the partial rewards of a round's samples, in trial order.
    """
    order = sorted(range(len(rewards)), key=lambda i: (-float(rewards[i]), i))
    return order[: math.ceil(len(rewards) / 2)]


def partial_training_iterations(settings: SearchSettings, trial: TrialRecord) -> Optional[int]:
    """The iterations of ``trial``'s partial training while it still needs one (with
    ``search.halving``, no partial result yet), else None (its full training)."""
    if PARTIAL_ITERATIONS in trial.metrics or trial.role == "recheck":
        return None
    return settings.search.partial_iterations(settings.proxy.iterations)


def selection_due(
    settings: SearchSettings, round_index: int, unfinished: Sequence[TrialRecord]
) -> bool:
    """Whether the round's selection is still to be made: halving is on, the round is a search
    round (not a recheck round) and an unfinished trial has not been selected or stopped."""
    return (
        settings.search.halving > 0
        and round_index < settings.search.rounds
        and any(HALVING not in t.metrics for t in unfinished)
    )


def select_halves(
    journal: SearchJournal, round_index: int, settings: SearchSettings, output_root: Path
) -> None:
    """Make the selection of round ``round_index`` from its stored partial rewards.

    The better ``ceil(n/2)`` of the ``n`` samples with a partial reward (ties by trial index) and
    the policy mean continue (metrics ``halving: continued``); the other samples are final with
    their partial reward (status ``done``, ``halving: stopped``), and their checkpoints are
    removed unless ``proxy.keep_checkpoints``.

    Args:
        journal: the search's journal (read and written).
        round_index: the round.
        settings: the search's settings.
        output_root: the search's output folder (the trials' folders are relative to it).
    """
    trials = journal.trials(round=round_index)
    samples = [t for t in trials if t.role == "sample" and PARTIAL_REWARD in t.metrics]
    rewards = [float(t.metrics[PARTIAL_REWARD]) for t in samples]
    keep = {samples[i].index for i in better_half(rewards)}
    keep |= {t.index for t in trials if t.role == "mean"}
    for trial in trials:
        if trial.is_final or HALVING in trial.metrics or PARTIAL_REWARD not in trial.metrics:
            continue
        metrics = dict(trial.metrics)
        if trial.index in keep:
            metrics[HALVING] = "continued"
            journal.update_trial(round_index, trial.index, metrics=metrics)
            continue
        metrics[HALVING] = "stopped"
        journal.update_trial(
            round_index,
            trial.index,
            status="done",
            reward=float(metrics[PARTIAL_REWARD]),
            metrics=metrics,
            finished_at=time.time(),
        )
        if not settings.proxy.keep_checkpoints:
            assert trial.folder is not None
            remove_checkpoints(output_root / trial.folder)
    partial = [t for t in trials if PARTIAL_REWARD in t.metrics]
    chosen = [t for t in partial if t.index in keep]

    def rewards_text(selected: List[TrialRecord]) -> str:
        values = sorted((float(t.metrics[PARTIAL_REWARD]) for t in selected), reverse=True)
        return ", ".join(f"{v:.4f}" for v in values) or "none"

    logger.info(
        "round %d/%d: halving: %d of %d continue (partial rewards %s; stopped %s)",
        round_index + 1,
        settings.search.rounds,
        len(chosen),
        len(partial),
        rewards_text(chosen),
        rewards_text([t for t in partial if t.index not in keep]),
    )
