"""Retries of trials that produced no result (``search.max_attempts``).

A trial whose job raised, crashed or returned a result that is not its own is launched again
until it has used ``search.max_attempts`` attempts, then it is final as ``failed`` and left out
of the search method's update (:func:`retry_or_fail`). A round in which every sample failed
stops the search; resuming it gives those trials new attempts (:func:`retry_unscorable_round`),
so a search whose environment was broken continues once the cause is fixed.
"""

from __future__ import annotations

import logging
import time

from paploss.search.journal import SearchJournal, TrialRecord
from paploss.search.screening.candidates import duplicate_of
from paploss.utils.errors import error_summary

__all__ = ["retry_or_fail", "retry_unscorable_round"]

logger = logging.getLogger(__name__)


def retry_or_fail(
    journal: SearchJournal,
    trial: TrialRecord,
    error: str,
    max_attempts: int,
    counts: bool = True,
) -> bool:
    """Store a trial that produced no result: pending again, or failed after its last attempt.

    Args:
        journal: the search's journal.
        trial: the trial as the journal held it before this attempt.
        error: why it produced no result (stored; its first line is logged).
        max_attempts: the attempts a trial has (``search.max_attempts``).
        counts: whether this was one of its attempts (a job lost with a killed controller, or a
            refused result of a re-attached job, is not).

    Returns:
        Whether the trial is now final.
    """
    attempts = trial.attempts + (1 if counts else 0)
    final = attempts >= max_attempts
    journal.update_trial(
        trial.round,
        trial.index,
        status="failed" if final else "pending",
        attempts=attempts,
        error=error,
        finished_at=time.time() if final else None,
    )
    if final:
        logger.warning(
            "%s failed (%d of %d attempts), not scored: %s",
            trial.folder,
            attempts,
            max_attempts,
            error_summary(error),
        )
    else:
        logger.warning(
            "%s: %s; launching it again (%d of %d attempts used)",
            trial.folder,
            error_summary(error),
            attempts,
            max_attempts,
        )
    return final


def retry_unscorable_round(journal: SearchJournal, round_index: int, rounds: int) -> None:
    """On resume, give the failed trials of a round without any scored sample new attempts.

    A search stops when every sample of a round failed (e.g. a broken environment); once the
    cause is fixed, resuming retries them instead of stopping again. A duplicate whose original
    failed waits for the original again.

    Args:
        journal: the search's journal.
        round_index: the open round.
        rounds: the search's rounds (``search.rounds``, for the log line).
    """
    trials = journal.trials(round=round_index)
    samples = [t for t in trials if t.role == "sample"]
    if all(t.is_final for t in trials) and not any(t.is_scored for t in samples):
        for trial in trials:
            if trial.status != "failed":
                continue
            if trial.folder is None and duplicate_of(trial) is not None:
                journal.update_trial(
                    round_index, trial.index, status="duplicate", error=None, finished_at=None
                )
            else:
                journal.update_trial(round_index, trial.index, status="pending", attempts=0)
        logger.info(
            "round %d/%d: every sample had failed; trying them again", round_index + 1, rounds
        )
