"""The search loop, the one orchestrator of a search: propose candidates, screen them, score them
with proxy trainings, let the search method learn from the rewards.

One round::

    proposer.propose()           the round's candidates, e.g. θ_1..θ_S ~ policy (+ μ itself)
    screen the samples           rejected and duplicate candidates are decided, never trained
                                 (paploss.search.screening.candidates)
    proposer.propose_more(n)     with search.max_proposals: more samples, screened too, while
                                 fewer than search.candidates are to be trained
    journal.begin_round(...)     candidates with their screening decisions + the proposer's state
                                 *after* proposing (random generators included)
    launch the trials, record each outcome as it arrives, retry failures up to max_attempts
                                 (steps.waves, steps.retries)
    with search.halving (successive halving): the trials first train a prefix of the proxy
                                 (partial wave), the better half of the samples by that partial
                                 reward and the policy mean continue to the full proxy (full
                                 wave); the others keep their partial reward (steps.halving)
    duplicates take the reward of their earlier equivalent candidate
    proposer.observe(scored)     e.g. PPO on the scored samples (diverged ones with their
                                 penalty, rejected ones with screening.rejection.rejected_reward)
    journal.end_round(...)       the proposer's state after the update

Before the first round, with ``proxy.warm_start``, the checkpoint every trial starts from is
trained once (steps.warm_start); the screening, built when the first round is screened, reads it
too (``screening.rejection.predictions: linear``). The steps are :mod:`paploss.search.steps`;
this module is the loop that calls them, and the set-up of a new or resumed search.

The proposer is the search method ``search.method`` names
(:data:`paploss.search.proposers.PROPOSER_REGISTRY`; ``ppo`` by default); it also makes the
search space (:meth:`~paploss.search.proposers.Proposer.build_space`: the PAP-loss parameters,
or the loss graphs of ``evolution`` and ``random``). Everything else here is the same for every
method.

The journal (:class:`~paploss.search.journal.SearchJournal`) is the only durable state, and the
controller is its only writer. A killed search resumes exactly: closed rounds are never repeated,
the open round continues with its stored candidates (finished trials keep their results, pending
and running ones are re-attached when their jobs still exist and launched again otherwise; their
folders make both safe), and the proposer restarts from the stored state, so a resumed search ends
where an uninterrupted one with the same settings would. Re-attached jobs count towards
``launcher.parallel``. A job's result is recorded only when it proves to be the trial's own (its
trial id and spec digest, :meth:`~paploss.search.trials.runner.TrialResult.mismatch`); any other
result is refused and the trial runs again.

A new search checks its launcher first (for Slurm: the cluster answers), then writes
``settings.yaml`` and ``model_config.yaml``, and creates the journal last: a search killed before
that has nothing to resume, and ``resume`` refuses a folder without a journal rather than start
a search there.

The output folder's layout is :mod:`paploss.search.output`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from paploss.search.errors import SearchError
from paploss.search.journal import JournalError, NewTrial, SearchJournal, TrialRecord
from paploss.search.launchers.trial_launcher import (
    TrialLauncher,
    check_launcher,
    launcher_options,
)
from paploss.search.output import SearchOutput, trial_folder_name
from paploss.search.proposers import Candidate, Proposer, ScoredCandidate, proposer_class
from paploss.search.recheck import declared_best, recheck_candidates
from paploss.search.reports.summary import settings_summary
from paploss.search.screening.candidates import CandidateScreening, ScreeningSetupError
from paploss.search.settings import SearchSettings
from paploss.search.steps.halving import (
    HALVING,
    PARTIAL_ITERATIONS,
    partial_training_iterations,
    select_halves,
    selection_due,
)
from paploss.search.steps.retries import retry_unscorable_round
from paploss.search.steps.warm_start import prepare_warm_start
from paploss.search.steps.waves import TrialWaves, round_label
from paploss.search.trials.proxy_config import check_reward_task, proxy_config_opts
from paploss.search.trials.runner import TrialFunction, run_trial
from paploss.utils.errors import error_summary
from paploss.utils.imports import import_modules
from paploss.utils.io import atomic_write

__all__ = [
    "SearchError",
    "SearchOutput",
    "SearchController",
    "SearchSummary",
    "journal_settings",
    "model_config_changed",
    "model_config_digest",
    "round_seed",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchSummary:
    """What a finished (or stopped) search produced.

    Attributes:
        rounds_closed: number of closed search rounds (recheck rounds not counted).
        trials_run: trials launched by this controller run (reused results not counted).
        best: the search's best candidate's trial, if any
            (:func:`~paploss.search.recheck.declared_best`).
        final_mean: the search method's current point (``ppo``: μ after the last closed
            round), or None for a method without one.
        wall_s: duration of this controller run.
        best_how: how the best was chosen, with its rewards (one line), if any.
    """

    rounds_closed: int
    trials_run: int
    best: Optional[TrialRecord]
    final_mean: Optional[List[float]]
    wall_s: float
    best_how: Optional[str] = None


def round_seed(search_seed: int, round_index: int) -> int:
    """Training seed shared by the trials of round ``round_index`` (common random numbers)."""
    state = np.random.SeedSequence([int(search_seed), int(round_index)]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


def model_config_digest(config_file: str) -> str:
    """SHA-256 of the fully merged Detectron2 config of ``config_file`` (``_BASE_`` resolved)."""
    from paploss.engine import load_config

    return hashlib.sha256(load_config(config_file).dump().encode("utf-8")).hexdigest()


def model_config_changed(stored_settings: Dict) -> bool:
    """Whether the searched model's config files now merge to another config than they did when
    the search started (an export, which inherits from them, would then train something else).
    The search's ``model.imports`` are imported first, as the search did.
    """
    model = stored_settings.get("model", {})
    config = model.get("config")
    stored = stored_settings.get("model_config_sha256")
    if not config or not stored:
        return False
    try:
        import_modules(model.get("imports") or (), model.get("python_path") or ())
        return model_config_digest(config) != stored
    except Exception:  # a config that no longer loads has changed as well
        return True


def journal_settings(settings: SearchSettings, space: Any, config_digest: str) -> Dict:
    """Everything the journal stores and compares on resume.

    The search settings without the launcher, the resolved search space (so reports can rebuild
    it without Detectron2) and a digest of the fully merged model config (an edited model config
    or base file is a different search).
    """
    data = settings.journal_settings()
    data["space"] = space.to_dict()
    data["model_config_sha256"] = config_digest
    return data


class SearchController:
    """Runs a loss search into an output folder.

    Args:
        settings: the search.
        output_dir: the search's folder (created if needed).
        resume: continue the journal in ``output_dir``; a folder without one is an error (a
            mistyped folder never starts an unrelated search). Without it, an existing journal
            is an error (a search is never restarted over an old one by accident).
        trial_fn: the trial function (:func:`~paploss.search.trials.runner.run_trial`; tests may
            pass another picklable function with the same contract).
        launcher: a ready launcher; built from ``settings.launcher`` when None.
    """

    def __init__(
        self,
        settings: SearchSettings,
        output_dir: os.PathLike,
        *,
        resume: bool = False,
        trial_fn: TrialFunction = run_trial,
        launcher: Optional[TrialLauncher] = None,
    ) -> None:
        self.settings = settings
        self.output = SearchOutput(Path(output_dir).expanduser().absolute())
        self.resume = resume
        self.trial_fn = trial_fn
        self._launcher = launcher
        self._journal: Optional[SearchJournal] = None
        self._space: Optional[Any] = None  # the method's space (SearchSpace, GraphLossSpace)
        self._proposer: Optional[Proposer] = None
        self._screening: Optional[CandidateScreening] = None
        self._waves: Optional[TrialWaves] = None
        self._datasets_root: Optional[str] = None

    # ------------------------------------------------------------------ public
    def run(self) -> SearchSummary:
        """Run (or continue) the search until its last round is closed.

        Raises:
            SearchError: for an output folder that already holds a search (without ``resume``)
                or none (with ``resume``), a module of ``model.imports`` that fails to import, a
                model without PAP-loss heads, or a round in which no trial could be scored.
            JournalError: for a corrupt or foreign journal, or different settings on resume.
            LaunchError: when trials cannot be submitted.
        """
        start = time.monotonic()
        try:
            self._open()
            journal, proposer = self._journal, self._proposer
            assert journal is not None and proposer is not None
            total = self.settings.search.rounds
            init_weights = None
            if self._first_round() < self._rounds_with_rechecks:
                init_weights = prepare_warm_start(
                    self.settings,
                    self.output,
                    self._datasets_root,
                    self._make_launcher,
                    self.trial_fn,
                )
                assert self._screening is not None
                self._screening.warm_start_weights = init_weights  # built after: rounds screen
            self._waves = TrialWaves(
                self.settings,
                self.output,
                journal,
                make_launcher=self._make_launcher,
                trial_fn=self.trial_fn,
                datasets_root=self._datasets_root,
                init_weights=init_weights,
            )
            for round_index in range(self._first_round(), total):
                self._run_round(round_index)
            for round_index in range(max(total, self._first_round()), self._rounds_with_rechecks):
                self._run_recheck_round(round_index)
            closed = [r for r in journal.rounds() if r.status == "closed" and r.round < total]
            best = declared_best(journal)
            summary = SearchSummary(
                rounds_closed=len(closed),
                trials_run=self._waves.trials_run,
                best=None if best is None else best.trial,
                final_mean=_optional_list(proposer.point()),
                wall_s=time.monotonic() - start,
                best_how=None if best is None else best.describe(),
            )
            logger.info(
                "search finished: %d rounds, %d trial(s) run now, %s in %.0f s",
                summary.rounds_closed,
                summary.trials_run,
                "no best yet" if best is None else f"{best.describe()} ({best.trial.folder})",
                summary.wall_s,
            )
            return summary
        finally:
            if self._journal is not None:
                self._journal.close()
                self._journal = None

    # ------------------------------------------------------------------ set-up
    def _open(self) -> None:
        output = self.output
        try:
            method = proposer_class(self.settings.search.method)
        except ValueError as exc:
            raise SearchError(str(exc)) from None
        exists = output.has_journal
        if exists and not self.resume:
            raise SearchError(
                f"{output.root} already holds a search ({output.journal.name}); pass --resume to "
                "continue it, or choose another output folder"
            )
        if self.resume:
            output.require_journal()
        else:
            self._check_launcher()  # before anything is written
        model = self.settings.model
        try:  # the project's registrations: config keys, heads, optimizer
            import_modules(model.imports, model.python_path)
        except ImportError as exc:
            raise SearchError(str(exc)) from None
        space, merged_config = self._build_space(method)
        self._space = space
        try:
            proposer = method.from_settings(self.settings, space)
        except ValueError as exc:
            raise SearchError(str(exc)) from None
        config_digest = hashlib.sha256(merged_config.encode("utf-8")).hexdigest()
        stored = journal_settings(self.settings, space, config_digest)
        # Trials train from the copy in model_config.yaml: editing the model's config files while
        # the search runs changes nothing (and resuming after such an edit is refused: another
        # digest).
        if exists:
            self._journal = SearchJournal.open(str(output.journal), stored)
            logger.info("resuming the search in %s", output.root)
            if self._first_round() < self._rounds_with_rechecks:
                self._check_launcher()
            if not output.model_config.exists():
                atomic_write(output.model_config, merged_config)
        else:
            # The journal comes last: it is what makes the folder a search to resume.
            output.root.mkdir(parents=True, exist_ok=True)
            atomic_write(output.settings, yaml.safe_dump(self.settings.to_dict(), sort_keys=False))
            atomic_write(output.model_config, merged_config)
            self._journal = SearchJournal.create(str(output.journal), stored)
        for line in settings_summary(self.settings):
            logger.info("%s", line)
        logger.info("search space: %s", space.summary())

        state = self._journal.latest_policy_state()
        if state is not None:
            try:
                proposer.load_state_dict(state)
            except (ValueError, KeyError, TypeError) as exc:
                raise JournalError(
                    f"{output.journal}: its policy state does not fit this search ({exc})"
                ) from None
        self._proposer = proposer
        self._screening = CandidateScreening(
            self.settings,
            self._journal,
            model_config=str(output.model_config),
            proxy_opts=proxy_config_opts(
                self.settings.proxy, self.settings.search.seed, str(output.trials)
            ),
            space=space,
        )

    def _build_space(self, method: type) -> Tuple[Any, str]:
        """The search method's space and the fully merged model config (YAML text)."""
        from paploss.data import datasets_root, ensure_dataset_files
        from paploss.engine import load_config

        model = self.settings.model
        try:
            cfg = load_config(model.config)
        except Exception as exc:  # Detectron2 raises plain exceptions for bad config files
            raise SearchError(f"cannot load the model config '{model.config}': {exc}") from None
        # a SettingsError naming proxy.reward_task, before anything is written
        check_reward_task(self.settings.proxy, cfg, model.config)
        try:
            space = method.build_space(self.settings, cfg)
        except ValueError as exc:
            raise SearchError(f"model.config '{model.config}': {exc}") from None
        self._datasets_root = datasets_root()
        for name in (self.settings.proxy.train_dataset, self.settings.proxy.val_dataset):
            ensure_dataset_files(name)  # once here, not in every trial at the same time
        return space, cfg.dump()

    def _check_launcher(self) -> None:
        """Fail within seconds, naming the problem, when no trial could be submitted."""
        kind = self._launcher.kind if self._launcher is not None else self.settings.launcher.kind
        check_launcher(kind)

    def _make_launcher(self) -> TrialLauncher:
        if self._launcher is None:
            options = self.settings.launcher
            self._launcher = TrialLauncher(
                options.kind, self.output.jobs, **launcher_options(options)
            )
        return self._launcher

    @property
    def _rounds_with_rechecks(self) -> int:
        """The search rounds and the recheck rounds after them (``search.recheck``)."""
        loop = self.settings.search
        return loop.rounds + (loop.recheck.seeds if loop.recheck.enabled else 0)

    def _first_round(self) -> int:
        journal = self._journal
        assert journal is not None
        current = journal.open_round()
        return current.round if current is not None else journal.next_round_index()

    # ------------------------------------------------------------------ rounds
    def _run_round(self, round_index: int) -> None:
        journal, proposer = self._journal, self._proposer
        assert journal is not None and proposer is not None
        loop = self.settings.search
        total = loop.rounds
        current = journal.open_round()
        if current is None:
            if proposer.round != round_index:
                raise JournalError(
                    f"{journal.path}: the policy is at round {proposer.round}, the journal at "
                    f"round {round_index}"
                )
            try:
                new_trials = self._propose_round(round_index)
            except ScreeningSetupError as exc:
                raise SearchError(str(exc)) from None
            seed = round_seed(loop.seed, round_index)
            journal.begin_round(round_index, proposer.state_dict(), new_trials)
            logger.info(
                "round %d/%d: %d trial(s) to train of %d%s, seed %d",
                round_index + 1,
                total,
                sum(t.status == "pending" for t in new_trials),
                len(new_trials),
                _clause(proposer.describe()),
                seed,
            )
        else:
            if current.round != round_index or proposer.round != round_index:
                raise JournalError(
                    f"{journal.path}: open round {current.round} does not match the policy "
                    f"(round {proposer.round})"
                )
            trials = journal.trials(round=round_index)
            done = sum(t.is_final for t in trials)
            logger.info(
                "round %d/%d: resuming, %d of %d trial(s) already finished",
                round_index + 1,
                total,
                done,
                len(trials),
            )
            retry_unscorable_round(journal, round_index, total)

        self._run_trials(round_index)
        self._close_round(round_index)

    def _propose_round(self, round_index: int) -> List[NewTrial]:
        """The round's candidates, screened: :meth:`Proposer.propose`, then, with
        ``search.max_proposals``, :meth:`Proposer.propose_more` while fewer than
        ``search.candidates`` samples are to be trained.

        Raises:
            ScreeningSetupError: when the screening cannot be set up.
        """
        proposer, screening = self._proposer, self._screening
        assert proposer is not None and screening is not None
        loop = self.settings.search
        seed = round_seed(loop.seed, round_index)
        trials = screening.screen_round(
            round_index, self._new_trials(round_index, proposer.propose(), seed, start=0)
        )
        limit = max(loop.max_proposals, len(trials))
        while True:
            to_train = sum(t.role == "sample" and t.status == "pending" for t in trials)
            wanted = min(loop.candidates - to_train, limit - len(trials))
            if wanted <= 0:
                break
            more = proposer.propose_more(wanted)[:wanted]
            if not more:
                break
            trials += screening.screen_round(
                round_index,
                self._new_trials(round_index, more, seed, start=len(trials)),
                earlier=trials,
            )
        screening.log_round(round_index, trials)
        return trials

    def _new_trials(
        self, round_index: int, candidates: Sequence[Candidate], seed: int, start: int
    ) -> List[NewTrial]:
        """Journal entries of ``candidates``, the first of them trial ``start`` of the round."""
        space = self._space
        assert space is not None
        return [
            NewTrial(
                theta=[float(v) for v in candidate.theta],
                overrides=(
                    dict(candidate.overrides)
                    if candidate.overrides is not None
                    else space.to_overrides(candidate.theta)
                ),
                seed=seed,
                role=candidate.role,
                folder=os.path.join("trials", trial_folder_name(round_index, index)),
            )
            for index, candidate in enumerate(candidates, start=start)
        ]

    def _close_round(self, round_index: int) -> None:
        journal, proposer = self._journal, self._proposer
        assert journal is not None and proposer is not None
        loop = self.settings.search
        trials = journal.trials(round=round_index)
        samples = [t for t in trials if t.role == "sample" and t.is_scored]
        if not samples:
            failed = [t for t in trials if t.status == "failed"]
            last = failed[-1] if failed else None
            raise SearchError(
                f"round {round_index + 1}/{loop.rounds}: no sample could be scored, all failed"
                + (f"; {last.folder}: {error_summary(last.error or '')}" if last else "")
                + f". Details: paploss-search status --trials --output {self.output.root}. "
                "Fix the cause and resume the search (--resume)."
            )
        scored = [
            ScoredCandidate(tuple(t.theta), t.role, float(t.reward), t.status, index=t.index)
            for t in trials
            if t.is_scored
        ]
        stats = dict(proposer.observe(scored))
        rewards = np.asarray([t.reward for t in samples], dtype=np.float64)
        mean_trials = [t for t in trials if t.role == "mean" and t.is_scored]
        stats.update(
            reward_mean=float(rewards.mean()),
            reward_min=float(rewards.min()),
            reward_max=float(rewards.max()),
            mean_reward=float(mean_trials[0].reward) if mean_trials else None,
            num_failed=sum(t.status == "failed" for t in trials),
            num_diverged=sum(t.status == "diverged" for t in trials),
            num_rejected=sum(t.status == "rejected" for t in trials),
            num_duplicates=sum(t.status == "duplicate" for t in trials),
        )
        if loop.halving > 0:
            stats["num_stopped"] = sum(t.metrics.get(HALVING) == "stopped" for t in trials)
        journal.end_round(round_index, proposer.state_dict(), stats)
        best = journal.best_trial()
        screened = self._screening is not None and self._screening.active
        logger.info(
            "round %d/%d closed: reward mean %.4f min %.4f max %.4f%s%s | best so far %s%s",
            round_index + 1,
            loop.rounds,
            stats["reward_mean"],
            stats["reward_min"],
            stats["reward_max"],
            "" if stats["mean_reward"] is None else f" | policy mean {stats['mean_reward']:.4f}",
            (
                f" | {stats['num_rejected']} rejected, {stats['num_duplicates']} duplicate(s)"
                if screened or stats["num_rejected"] or stats["num_duplicates"]
                else ""
            ),
            "n/a" if best is None else f"{best.reward:.4f}",
            _clause(proposer.describe_update(stats), " | "),
        )

    def _run_recheck_round(self, round_index: int) -> None:
        """One recheck round (``search.recheck``, :mod:`paploss.search.recheck`): the best
        candidates of the search rounds trained again with the round's seed. The search method
        does not learn from it; its state is stored unchanged."""
        journal, proposer = self._journal, self._proposer
        assert journal is not None and proposer is not None
        loop = self.settings.search
        label = round_label(loop, round_index)
        if journal.open_round() is None:
            seed = round_seed(loop.seed, round_index)
            originals = recheck_candidates(journal, loop.rounds, loop.recheck.top)
            if not originals:
                raise SearchError(f"{label}: no trial of the search rounds is done")
            trials = [
                NewTrial(
                    theta=list(trial.theta),
                    overrides=dict(trial.overrides),
                    seed=seed,
                    role="recheck",
                    folder=os.path.join("trials", trial_folder_name(round_index, index)),
                )
                for index, trial in enumerate(originals)
            ]
            journal.begin_round(round_index, proposer.state_dict(), trials)
            logger.info(
                "%s: the best %d candidate(s) trained again with seed %d (%s)",
                label,
                len(trials),
                seed,
                ", ".join(f"{t.folder}: {t.reward:.4f}" for t in originals),
            )
        else:
            logger.info("%s: resuming", label)
        self._run_trials(round_index)
        journal.end_round(round_index, proposer.state_dict(), {"recheck": True})
        best = declared_best(journal)
        logger.info("%s closed: %s", label, "n/a" if best is None else best.describe())

    # ------------------------------------------------------------------ trials
    def _run_trials(self, round_index: int) -> None:
        """Run every unfinished trial of the round, retrying failures up to max_attempts.

        With ``search.halving``: first the partial trainings of the trials without a partial
        result, then the selection (:func:`~paploss.search.steps.halving.select_halves`), then
        the full trainings of the continued trials. Each step starts from what the journal
        holds, so a resumed controller continues where the last one stopped.
        """
        journal, waves = self._journal, self._waves
        assert journal is not None and waves is not None
        while True:
            trials = journal.trials(round=round_index)
            unfinished = [t for t in trials if not t.is_final]
            if not unfinished:
                assert self._screening is not None
                self._screening.resolve_duplicates(round_index)
                return
            partial = [
                t for t in unfinished if partial_training_iterations(self.settings, t) is not None
            ]
            if partial:
                n_done = sum(PARTIAL_ITERATIONS in t.metrics for t in trials)
                waves.run(round_index, partial, n_done, n_done + len(partial), "partial")
            elif selection_due(self.settings, round_index, unfinished):
                select_halves(journal, round_index, self.settings, self.output.root)
            else:
                n_total = len(trials)
                waves.run(round_index, unfinished, n_total - len(unfinished), n_total)


def _optional_list(theta: Optional[Sequence[float]]) -> Optional[List[float]]:
    return None if theta is None else [float(v) for v in theta]


def _clause(text: str, separator: str = ", ") -> str:
    """``separator + text`` for a non-empty ``text`` (a part of a log line), else ``""``."""
    return f"{separator}{text}" if text else ""
