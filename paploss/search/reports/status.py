"""The status of a search from its journal: a table of rounds (and of trials).

Everything in :mod:`paploss.search.reports` reads the journal only (opened read-only by the
CLI) and needs neither Detectron2 nor a running search: the search space is rebuilt from the
settings stored in the journal.

* :func:`format_status`: a table of rounds (and optionally of trials). Candidates that screening
  kept from training are counted per round (``rej``, ``dup``) and listed with status ``rejected``
  (with their AP gain) or ``duplicate`` (with the trial whose reward they reuse).
* :func:`round_summaries`: the per-round numbers the table and the reward plot share.
* :func:`result_file_problem`: whether a trained trial's own ``result.json`` still backs what the
  journal says of it. The status and the export of the best trial warn when it does not (a
  deleted or replaced trial folder): the journal's θ and reward are then its word alone.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from paploss.search.journal import SearchJournal, TrialRecord
from paploss.search.output import trial_folder_name
from paploss.search.proposers import journal_proposer
from paploss.search.recheck import declared_best, search_rounds
from paploss.search.settings import rejection_score_name
from paploss.search.spaces import space_from_dict
from paploss.search.trials.runner import RESULT_FILE, load_result
from paploss.utils.errors import error_summary

__all__ = [
    "RoundSummary",
    "round_summaries",
    "format_status",
    "result_file_problem",
    "search_method",
]

#: Per-round counts shown in the status table, in this order.
_COUNTED = ("done", "diverged", "failed", "rejected", "duplicate")


@dataclass(frozen=True)
class RoundSummary:
    """Per-round numbers shared by the status table and the reward plot.

    Attributes:
        round: round index (0-based).
        status: ``open`` or ``closed``.
        sigma: σ the round's candidates were sampled with (the search method's exploration
            radius, :meth:`~paploss.search.proposers.Proposer.round_spread`; None if unknown).
        counts: number of trials per status.
        rewards: rewards of the samples in the policy update (done, diverged, and the ones
            screening kept from training: rejected, duplicate), in trial order.
        statuses: the status of each of ``rewards``.
        mean_reward: reward of the policy-mean trial, if it was scored.
        best_so_far: best ``done`` reward up to and including this round.
        minutes: wall time of the round so far.
    """

    round: int
    status: str
    sigma: Optional[float]
    counts: Dict[str, int]
    rewards: List[float]
    statuses: List[str]
    mean_reward: Optional[float]
    best_so_far: Optional[float]
    minutes: Optional[float]


def round_summaries(journal: SearchJournal) -> List[RoundSummary]:
    """One :class:`RoundSummary` per search round of the journal (recheck rounds, see
    :mod:`paploss.search.recheck`, are left out)."""
    summaries = []
    total_rounds = search_rounds(journal)
    best: Optional[float] = None
    trials_by_round: Dict[int, List[TrialRecord]] = {}
    for trial in journal.trials():
        trials_by_round.setdefault(trial.round, []).append(trial)
    method = search_method(journal)
    for record in journal.rounds():
        if record.round >= total_rounds:
            break
        trials = trials_by_round.get(record.round, [])
        counts: Dict[str, int] = {}
        for trial in trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        scored = [t for t in trials if t.role == "sample" and t.is_scored]
        means = [t for t in trials if t.role == "mean" and t.is_scored]
        done = [float(t.reward) for t in trials if t.status == "done" and t.reward is not None]
        if done:
            best = max(done) if best is None else max(best, max(done))
        end = record.finished_at
        if end is None:
            finished = [t.finished_at for t in trials if t.finished_at is not None]
            end = max(finished) if finished else None
        summaries.append(
            RoundSummary(
                round=record.round,
                status=record.status,
                sigma=None if method is None else method.round_spread(record),
                counts=counts,
                rewards=[float(t.reward) for t in scored],
                statuses=[t.status for t in scored],
                mean_reward=float(means[0].reward) if means else None,
                best_so_far=best,
                minutes=None if end is None else (end - record.started_at) / 60.0,
            )
        )
    return summaries


def search_method(journal: SearchJournal) -> Optional[Any]:
    """The :class:`~paploss.search.proposers.Proposer` class of the journal's search method, or
    None when this installation does not know the method (its reports then leave out what only
    the method can read from its stored states)."""
    try:
        return journal_proposer(journal.settings)
    except ValueError:
        return None


def format_status(journal: SearchJournal, show_trials: bool = False) -> str:
    """A plain-text report: the search, a table of rounds and (optionally) of trials."""
    settings = journal.settings
    loop = settings.get("search", {})
    space = _stored_space(settings)
    summaries = round_summaries(journal)
    closed = sum(s.status == "closed" for s in summaries)
    lines = [
        f"journal: {journal.path}",
        f"model:   {settings.get('model', {}).get('config')}",
        f"space:   {'unknown' if space is None else space.summary()}",
        f"rounds:  {closed} closed of {loop.get('rounds')} planned"
        + (
            f", round {summaries[-1].round} open"
            if summaries and summaries[-1].status == "open"
            else ""
        ),
    ]
    declared = declared_best(journal)
    best = None if declared is None else declared.trial
    if declared is not None and best is not None:
        lines.append(
            f"best:    reward {best.reward:.4f} (round {best.round} trial {best.index}, "
            f"{best.role}) in {best.folder}"
        )
        lines.append(f"         {declared.describe()}")
        loss = None if space is None else space.describe_candidate(best.overrides)
        if loss:
            lines.append(f"         {loss}")
        problem = result_file_problem(journal, best)
        if problem:
            lines.append(f"warning: the best trial's {problem}")
    screening = _screening_line(journal, summaries)
    if screening:
        lines.append(screening)
    lines.append("")
    rows = []
    for s in summaries:
        counts = s.counts
        state = "/".join(str(counts.get(key, 0)) for key in _COUNTED) + (
            f" +{counts.get('pending', 0) + counts.get('running', 0)} open"
            if s.status == "open"
            else ""
        )
        rows.append(
            [
                str(s.round),
                s.status,
                _fmt(s.sigma, 4),
                state,
                _fmt(float(np.mean(s.rewards)) if s.rewards else None),
                _fmt(min(s.rewards) if s.rewards else None),
                _fmt(max(s.rewards) if s.rewards else None),
                _fmt(s.mean_reward),
                _fmt(s.best_so_far),
                _fmt(s.minutes, 1),
            ]
        )
    header = [
        "round",
        "status",
        "sigma",
        "done/div/fail/rej/dup",
        "mean",
        "min",
        "max",
        "mu",
        "best",
        "minutes",
    ]
    lines += _table(header, rows)
    if show_trials:
        lines.append("")
        rejection = (settings.get("screening") or {}).get("rejection", {})
        min_gain = rejection.get("min_ap_gain")
        score_name = rejection_score_name(rejection.get("score", "final"))
        trial_rows = []
        for t in journal.trials():
            seconds = t.metrics.get("total_s")
            note = _screening_note(t, score_name, min_gain) or t.metrics.get("reason")
            note = note or error_summary(t.error or "") or _halving_note(t)
            if not note and space is not None:
                note = space.describe_candidate(t.overrides) or ""
            trial_rows.append(
                [
                    str(t.round),
                    str(t.index),
                    t.role,
                    t.status,
                    _fmt(t.reward),
                    _fmt(_number(t.metrics.get("AP50"))),
                    _fmt(_number(t.metrics.get("AP75"))),
                    str(t.attempts),
                    _fmt(_number(seconds), 0),
                    t.job_id or "",
                    note[:60],
                ]
            )
        lines += _table(
            [
                "round",
                "trial",
                "role",
                "status",
                "reward",
                "AP50",
                "AP75",
                "tries",
                "s",
                "job",
                "note",
            ],
            trial_rows,
        )
    return "\n".join(lines)


def _halving_note(trial: TrialRecord) -> str:
    """``partial reward (stopped after 200 iterations)`` for a trial the successive halving
    stopped (``search.halving``), else empty."""
    if trial.metrics.get("halving") != "stopped":
        return ""
    return f"partial reward (stopped after {trial.metrics.get('partial_iterations')} iterations)"


def _screening_line(journal: SearchJournal, summaries: Sequence[RoundSummary]) -> Optional[str]:
    """``screening: 3 rejected, 1 duplicate(s) of 12 samples (not trained; on: ...)``, or None
    for a journal of a search from before screening existed."""
    rejected = sum(s.counts.get("rejected", 0) for s in summaries)
    duplicates = sum(s.counts.get("duplicate", 0) for s in summaries)
    screening = journal.settings.get("screening")
    if not screening and not rejected and not duplicates:
        return None  # a search from before screening existed
    switches = screening or {}
    on = [
        name
        for name in ("rejection", "equivalence", "early_stop")
        if (switches.get(name) or {}).get("enabled")
    ]
    samples = sum(1 for t in journal.trials() if t.role == "sample")
    return (
        f"screening: {rejected} rejected, {duplicates} duplicate(s) of {samples} samples "
        f"(not trained; on: {', '.join(on) or 'nothing'})"
    )


def _screening_note(trial: TrialRecord, score_name: str, min_gain: Any) -> Optional[str]:
    """Why screening kept a trial from training (for the trial table); ``score_name`` names the
    rejection score (:func:`~paploss.search.settings.rejection_score_name`)."""
    record = trial.metrics.get("screening") or {}
    if trial.status == "rejected":
        if record.get("reason"):
            return f"invalid: {record['reason']}"
        score = _number(record.get("score"))
        if score is None:
            return "rejected by screening"
        limit = _number(min_gain)
        return f"{score_name} {score:.2f}" + (f" < {limit:g}" if limit is not None else "")
    if trial.status == "duplicate" or (trial.status == "failed" and trial.folder is None):
        original = record.get("duplicate_of_trial")
        if original:
            return f"duplicate of {original}" + ("" if trial.status == "duplicate" else " (failed)")
    return None


def _stored_space(settings: Dict[str, Any]) -> Optional[Any]:
    """The search space the journal's settings describe, or None when it cannot be rebuilt."""
    try:
        return space_from_dict(settings.get("space") or {})
    except (KeyError, TypeError, ValueError):
        return None


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _fmt(value: Optional[float], digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def result_file_problem(journal: SearchJournal, trial: TrialRecord) -> Optional[str]:
    """What is wrong with a trained trial's ``result.json``, or None when it backs the journal.

    The journal is the search's record; a trial's folder keeps the trial's own: its
    ``result.json`` must exist, be readable and hold this trial's result with the journal's
    reward. Only ``done`` and ``diverged`` trials have one.

    Returns:
        A phrase such as ``"result file trials/round001_trial02/result.json is missing ..."``.
    """
    if trial.folder is None or trial.status not in ("done", "diverged"):
        return None
    search_dir = os.path.dirname(os.path.abspath(journal.path))
    folder = os.path.join(search_dir, trial.folder)
    shown = os.path.join(trial.folder, RESULT_FILE)
    alone = f"its reward {_fmt(trial.reward)} and parameters are the journal's word alone"
    if not os.path.exists(os.path.join(folder, RESULT_FILE)):
        return f"result file {shown} is missing (deleted?); {alone}"
    result = load_result(folder)
    if result is None:
        return f"result file {shown} is unreadable; {alone}"
    name = trial_folder_name(trial.round, trial.index)
    if result.trial_id != name or result.reward is None or trial.reward is None:
        return f"result file {shown} holds the result of {result.trial_id}; {alone}"
    if not math.isclose(result.reward, trial.reward, rel_tol=1e-9, abs_tol=1e-9):
        return (
            f"result file {shown} says reward {_fmt(result.reward)}, the journal "
            f"{_fmt(trial.reward)}"
        )
    return None


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(w) for cell, w in zip(cells, widths)).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    if not rows:
        out.append("(no rounds yet)")
    return out
