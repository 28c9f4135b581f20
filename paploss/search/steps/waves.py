"""A wave of trials: launch (or re-attach) some trials of a round at once and record each
outcome in the journal as it arrives.

A round runs one wave of full trainings, or with ``search.halving`` a wave of partial trainings
and one of the continued trials' full trainings. A trial whose job is still running after a
restart of the controller is re-attached (when its launcher kind can do that) instead of being
launched again. A job's result is recorded only when it proves to be the trial's own (its trial
id and spec digest, :meth:`~paploss.search.trials.runner.TrialResult.mismatch`); any other
result is refused and the trial runs again. A trial without a result is retried
(:mod:`paploss.search.steps.retries`).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, List, Optional, Sequence, Tuple

from paploss.search.journal import SearchJournal, TrialRecord
from paploss.search.launchers.trial_launcher import TrialHandle, TrialLauncher, TrialOutcome
from paploss.search.output import SearchOutput, trial_folder_name
from paploss.search.settings import LAUNCHER_KINDS, SearchLoopSettings, SearchSettings
from paploss.search.steps.halving import (
    HALVING,
    PARTIAL_ITERATIONS,
    PARTIAL_REWARD,
    partial_training_iterations,
)
from paploss.search.steps.retries import retry_or_fail
from paploss.search.trials.runner import TrialFunction, TrialResult, TrialSpec

__all__ = ["TrialWaves", "round_label"]

logger = logging.getLogger(__name__)


def round_label(loop: SearchLoopSettings, round_index: int) -> str:
    """``round 3/5`` for a search round, ``recheck 1/2`` for a recheck round (logs)."""
    if round_index < loop.rounds:
        return f"round {round_index + 1}/{loop.rounds}"
    return f"recheck {round_index - loop.rounds + 1}/{loop.recheck.seeds}"


class TrialWaves:
    """Runs waves of a search's trials and records their outcomes in its journal.

    Args:
        settings: the search's settings.
        output: the search's output folder.
        journal: the search's journal (its only writer while the waves run).
        make_launcher: the search's launcher (made on first use).
        trial_fn: the trial function the jobs run.
        datasets_root: the datasets folder the trials use.
        init_weights: the checkpoint every trial starts from (``proxy.warm_start``), or None.
    """

    def __init__(
        self,
        settings: SearchSettings,
        output: SearchOutput,
        journal: SearchJournal,
        *,
        make_launcher: Callable[[], TrialLauncher],
        trial_fn: TrialFunction,
        datasets_root: Optional[str],
        init_weights: Optional[str],
    ) -> None:
        self.settings = settings
        self.output = output
        self.journal = journal
        self.make_launcher = make_launcher
        self.trial_fn = trial_fn
        self.datasets_root = datasets_root
        self.init_weights = init_weights
        #: Trials launched by these waves (re-attached ones not counted).
        self.trials_run = 0

    def run(
        self,
        round_index: int,
        trials: Sequence[TrialRecord],
        n_done: int,
        n_total: int,
        stage: str = "full",
    ) -> None:
        """Launch (or re-attach) ``trials`` once and record every outcome.

        Args:
            round_index: their round.
            trials: unfinished trials of the round.
            n_done: trials of the round that have finished this ``stage`` before (logs).
            n_total: trials of the round in this ``stage`` (logs).
            stage: ``partial`` or ``full`` (logs).
        """
        journal = self.journal
        launcher = self.make_launcher()
        attach = [t for t in trials if t.status == "running" and self._attachable(t.job_id)]
        launch = [t for t in trials if t not in attach]

        handles: List[Tuple[TrialRecord, TrialHandle, bool]] = []
        if attach:
            # Re-attached first: they count towards launcher.parallel before anything new starts.
            attached = launcher.attach(
                [_job_part(t.job_id) for t in attach], [t.started_at for t in attach]
            )
            handles += [(t, h, True) for t, h in zip(attach, attached)]
            logger.info("re-attached %d running trial job(s)", len(attach))
        if launch:
            specs = [self.spec(t, partial_training_iterations(self.settings, t)) for t in launch]
            submitted = launcher.submit(self.trial_fn, specs)
            now = time.time()
            for trial, handle in zip(launch, submitted):
                journal.update_trial(
                    round_index,
                    trial.index,
                    status="running",
                    job_id=_job_label(handle),
                    started_at=handle.submitted_at or now,
                )
            handles += [(t, h, False) for t, h in zip(launch, submitted)]
            self.trials_run += len(launch)

        recorded_ids = {id(h): h.job_id for _, h, _ in handles}
        pending = list(handles)
        while pending:
            newly = launcher.poll([h for _, h, _ in pending])
            still = []
            for trial, handle, was_attached in pending:
                if handle.job_id != recorded_ids[id(handle)]:
                    # A local job that started since the last poll: remember its id (and when it
                    # was submitted), so that a restarted controller can re-attach it.
                    recorded_ids[id(handle)] = handle.job_id
                    journal.update_trial(
                        round_index,
                        trial.index,
                        job_id=_job_label(handle),
                        started_at=handle.submitted_at,
                    )
                if handle.outcome is None:
                    still.append((trial, handle, was_attached))
                    continue
                if self._record(round_index, trial, handle.outcome, was_attached):
                    n_done += 1
                    self._log_progress(round_index, trial.index, n_done, n_total, stage)
            pending = still
            if pending and not newly:
                time.sleep(launcher.poll_interval_s)

    def spec(self, trial: TrialRecord, stop_after: Optional[int] = None) -> TrialSpec:
        """The spec of ``trial``'s training (``stop_after``: its partial training)."""
        assert trial.folder is not None
        settings = self.settings
        early_stop = settings.screening.early_stop
        return TrialSpec(
            trial_id=trial_folder_name(trial.round, trial.index),
            round=trial.round,
            index=trial.index,
            theta=tuple(trial.theta),
            overrides=dict(trial.overrides),
            config_file=str(self.output.model_config),
            seed=trial.seed,
            proxy=settings.proxy,
            output_dir=str(self.output.root / trial.folder),
            datasets_root=self.datasets_root,
            early_stop=early_stop if early_stop.enabled else None,
            init_weights=self.init_weights,
            imports=settings.model.imports,
            python_path=settings.model.python_path,
            stop_after=stop_after,
        )

    def _record(
        self, round_index: int, trial: TrialRecord, outcome: TrialOutcome, was_attached: bool
    ) -> bool:
        """Store one outcome; returns whether the trial is now final (or, for a partial
        training, has its partial result)."""
        journal = self.journal
        max_attempts = self.settings.search.max_attempts
        result = outcome.result if outcome.ok else None
        stop_after = partial_training_iterations(self.settings, trial)
        spec = self.spec(trial, stop_after)
        foreign = result.mismatch(spec) if isinstance(result, TrialResult) else None
        if foreign is not None:
            # A result file of another trial (or of this trial with other settings) under this
            # trial's job id: refused, the trial runs again.
            return retry_or_fail(
                journal,
                trial,
                f"job {outcome.job_id} returned a result that is not this trial's: {foreign}",
                max_attempts,
                counts=not was_attached,
            )
        if isinstance(result, TrialResult) and result.scored:
            metrics = dict(result.metrics)
            if result.reason:
                metrics["reason"] = result.reason
            metrics["reused"] = bool(result.reused)
            for key in ("screening", PARTIAL_REWARD, PARTIAL_ITERATIONS, HALVING):
                if key in trial.metrics:  # the fingerprint (a resumed search needs it), halving
                    metrics[key] = trial.metrics[key]
            if stop_after is not None:
                metrics[PARTIAL_ITERATIONS] = stop_after
            if stop_after is not None and result.status == "done":
                # Not final: the selection decides whether it stops here or continues (with
                # attempts of its own for the full training).
                metrics[PARTIAL_REWARD] = result.reward
                journal.update_trial(
                    round_index,
                    trial.index,
                    status="pending",
                    metrics=metrics,
                    attempts=0,
                    error=None,
                )
                return True
            journal.update_trial(
                round_index,
                trial.index,
                status=result.status,
                reward=result.reward,
                metrics=metrics,
                attempts=trial.attempts + 1,
                error=None,
                finished_at=result.finished_at or time.time(),
            )
            return True
        if isinstance(result, TrialResult):
            error = result.error or result.reason or "the trial failed"
        elif outcome.ok:
            error = f"the trial function returned {type(result).__name__}, not a TrialResult"
        else:
            error = outcome.error or "the trial job ended without a result"
        # A re-attached job that is gone without a result was most likely lost together with the
        # previous controller; launching it again does not count as another attempt.
        lost_on_restart = was_attached and not outcome.ok
        return retry_or_fail(journal, trial, error, max_attempts, counts=not lost_on_restart)

    def _log_progress(
        self, round_index: int, index: int, n_done: int, n_total: int, stage: str = "full"
    ) -> None:
        journal = self.journal
        trial = journal.trial(round_index, index)
        partial = trial.metrics.get(PARTIAL_REWARD) if not trial.is_final else None
        if not trial.is_final and partial is None:
            return
        best = journal.best_trial()
        if partial is not None:
            reward = f"partial reward {partial:.4f}"
        else:
            reward = "reward " + ("-" if trial.reward is None else f"{trial.reward:.4f}")
        seconds = trial.metrics.get("total_s")
        timing = f" in {seconds:.0f} s" if isinstance(seconds, (int, float)) else ""
        logger.info(
            "%s: %s done %d/%d | %s (%s) %s, %s%s | best so far %s",
            round_label(self.settings.search, round_index),
            "partial trainings" if stage == "partial" else "trials",
            n_done,
            n_total,
            trial_folder_name(round_index, index),
            trial.role,
            "done" if partial is not None else trial.status,
            reward,
            timing,
            "n/a" if best is None else f"{best.reward:.4f}",
        )

    def _attachable(self, job_label: Optional[str]) -> bool:
        if not job_label or ":" not in job_label:
            return False
        kind = job_label.split(":", 1)[0]
        return kind == self.settings.launcher.kind and kind in LAUNCHER_KINDS and kind != "debug"


def _job_label(handle: TrialHandle) -> Optional[str]:
    """``"<launcher kind>:<job id>"``: only jobs of the same kind can be re-attached."""
    return None if handle.job_id is None else f"{handle.kind}:{handle.job_id}"


def _job_part(job_label: Optional[str]) -> str:
    return (job_label or "").split(":", 1)[-1]
