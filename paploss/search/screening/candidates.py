"""The screening of a search's candidates, as the controller runs it and the journal keeps it.

Before a round is stored, every sample is screened (:class:`~paploss.search.screening.screener.
Screener`): a candidate whose gradient fingerprint equals that of an earlier candidate (of any
round, not failed) is stored as ``duplicate`` with that candidate's reward (once known) and
``metrics.screening.duplicate_of``; a candidate that fails the loss-rejection protocol is stored
as ``rejected`` with ``screening.rejection.rejected_reward`` (so is a loss-graph candidate that
is invalid on the probes). Neither gets a folder or a job, both
count in the method's update. The policy mean (role ``mean``) is exempt (always trained); its
fingerprint is registered all the same. Fingerprints are stored in
``metrics.screening.fingerprint``, and the registry of fingerprints is rebuilt from the journal
before each new round, so a resumed search detects duplicates of trials from before the restart;
candidates already in the journal are never screened again. Once a round's trials are final,
:meth:`CandidateScreening.resolve_duplicates` gives its duplicates the reward of their originals.

The screener is the one of the search space's kind (:func:`build_screener`: the
:class:`~paploss.search.screening.screener.Screener` of PAP-loss parameters, the
:class:`~paploss.search.screening.graph_screener.GraphScreener` of loss graphs). It is built on
first use (one network forward to record the batch, the probes), so a search without screening
never loads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

from paploss.search.journal import SCORED_TRIAL_STATUSES, NewTrial, SearchJournal, TrialRecord
from paploss.search.output import trial_folder_name
from paploss.search.settings import rejection_score_name
from paploss.utils.threads import torch_threads

if TYPE_CHECKING:  # pragma: no cover
    from paploss.search.settings import SearchSettings

__all__ = ["ScreeningSetupError", "CandidateScreening", "build_screener", "duplicate_of"]

logger = logging.getLogger(__name__)


class ScreeningSetupError(RuntimeError):
    """The screening of candidates cannot be set up (the model or its data do not load)."""


def build_screener(
    space: Any,
    settings: Any,
    cfg: Any,
    *,
    dataset: str,
    val_dataset: Optional[str] = None,
    weights: Optional[str] = None,
) -> Any:
    """The screener of a search space's candidates, by the space's ``KIND``: the
    :class:`~paploss.search.screening.screener.Screener` of the space's heads (``"pap"``), or
    the :class:`~paploss.search.screening.graph_screener.GraphScreener` of its searched branches
    (``"graph"``). Records the rejection batches (one network forward) when rejection is on.

    Args:
        space: the search space (:mod:`paploss.search.spaces`).
        settings: the search's :class:`~paploss.search.settings.ScreeningSettings`.
        cfg: the searched model's config, set up like a proxy training's.
        dataset: the proxy training split.
        val_dataset: the proxy validation split (held-out images of ``rejection.predictions:
            linear``).
        weights: the search's warm-start checkpoint (``rejection.predictions: linear``).

    Raises:
        ValueError: for a space of another kind.
    """
    kind = getattr(space, "KIND", None)
    data = {"dataset": dataset, "val_dataset": val_dataset, "weights": weights}
    if kind == "pap":
        from paploss.search.screening.screener import Screener

        return Screener.build(settings, cfg, heads=list(space.heads), **data)
    if kind == "graph":
        from paploss.search.screening.graph_screener import GraphScreener

        return GraphScreener.build(settings, cfg, branches=space.branches, **data)
    raise ValueError(f"no screener for a search space of kind {kind!r}")


class CandidateScreening:
    """Screens the candidates of a search's rounds and keeps the outcome in its journal.

    Args:
        settings: the search's settings (``screening``, and the proxy training the screening
            batch is recorded like).
        journal: the search's journal (read for earlier fingerprints and originals; written for
            the duplicates' rewards).
        model_config: the searched model's merged config file (what trials train).
        proxy_opts: the config overrides of the search's proxy training
            (:func:`~paploss.search.trials.proxy_config.proxy_config_opts`), with which the
            screening sets the model up like a proxy training.
        space: the search space (its kind selects the screener, :func:`build_screener`).

    Attributes:
        warm_start_weights: the search's warm-start checkpoint, which the controller sets once it
            is trained (before the first round is screened): ``rejection.predictions: linear``
            records the trained detector's features from it.
    """

    def __init__(
        self,
        settings: "SearchSettings",
        journal: SearchJournal,
        *,
        model_config: str,
        proxy_opts: Sequence[Any],
        space: Any,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self._model_config = model_config
        self._proxy_opts = list(proxy_opts)
        self._space = space
        self._screener: Optional[Any] = None  # the space's screener, built on first use
        self._seconds = 0.0  # spent screening since the last log_round
        self.warm_start_weights: Optional[str] = None

    @property
    def active(self) -> bool:
        """Whether candidates have been screened by this object (its screener is built)."""
        return self._screener is not None

    def screen_round(
        self, round_index: int, trials: List[NewTrial], earlier: Sequence[NewTrial] = ()
    ) -> List[NewTrial]:
        """The round's candidates with their screening decisions (unchanged without screening).

        Args:
            round_index: the round.
            trials: candidates to screen, trials ``len(earlier)``, ``len(earlier) + 1``, ... of
                the round.
            earlier: the round's candidates screened before (by an earlier call).

        Raises:
            ScreeningSetupError: when the screening cannot be set up (first round only).
        """
        screener = self._screener_for_round(keep_registry=bool(earlier))
        if screener is None:
            return trials
        start = time.perf_counter()
        decided: List[NewTrial] = list(earlier)
        with torch_threads(self.settings.proxy.num_threads):
            for index, trial in enumerate(trials, start=len(decided)):
                decided.append(self._screen(screener, trial, (round_index, index), decided))
        self._seconds += time.perf_counter() - start
        return decided[len(earlier) :]

    def log_round(self, round_index: int, trials: Sequence[NewTrial]) -> None:
        """Log what the screening decided about the round's ``trials`` (once all are screened),
        with the time spent since the last such log."""
        if not self.active:
            return
        samples = [t for t in trials if t.role == "sample"]
        logger.info(
            "round %d/%d: screened %d sample(s) in %.1f s: %d rejected, %d duplicate(s), "
            "%d to train",
            round_index + 1,
            self.settings.search.rounds,
            len(samples),
            self._seconds,
            sum(t.status == "rejected" for t in samples),
            sum(t.status == "duplicate" for t in samples),
            sum(t.status == "pending" for t in samples),
        )
        self._seconds = 0.0

    def _screen(
        self,
        screener: Any,
        trial: NewTrial,
        key: Tuple[int, int],
        earlier: Sequence[NewTrial],
    ) -> NewTrial:
        """Screen one candidate; ``earlier``: the round's candidates decided before it."""
        from paploss.search.screening.screener import ScreeningDecision

        if trial.role == "mean":
            # Exempt (always trained), but registered: later equivalent samples reuse its reward.
            start = time.perf_counter()
            digest = None
            if self.settings.screening.equivalence.enabled:
                digest = screener.fingerprint(trial.overrides).digest
                screener.registry.register(digest, key)
            decision = ScreeningDecision(
                "accepted", fingerprint=digest, seconds=time.perf_counter() - start
            )
            record = dict(decision.metrics(), exempt=True)
            return dataclasses.replace(trial, metrics={**trial.metrics, "screening": record})
        decision = screener.screen(trial.overrides, key=key)
        record = decision.metrics()
        metrics = {**trial.metrics, "screening": record}
        if decision.status == "rejected":
            if decision.invalid:
                logger.info("%s rejected as invalid: %s", trial_folder_name(*key), decision.reason)
            else:
                rejection = self.settings.screening.rejection
                logger.info(
                    "%s rejected: %s %.2f < %g",
                    trial_folder_name(*key),
                    rejection_score_name(rejection.score),
                    decision.score,
                    rejection.min_ap_gain,
                )
            return dataclasses.replace(
                trial, status="rejected", reward=decision.reward, metrics=metrics, folder=None
            )
        if decision.status == "duplicate":
            original_key = (int(decision.duplicate_of[0]), int(decision.duplicate_of[1]))
            original = self._original(original_key, key[0], earlier)
            record["duplicate_of_trial"] = trial_folder_name(*original_key)
            reward = None
            if (
                original is not None
                and original[0] in SCORED_TRIAL_STATUSES
                and original[1] is not None
            ):
                reward = original[1]
                record["original_status"] = original[0]
            logger.info(
                "%s is a duplicate of %s%s",
                trial_folder_name(*key),
                record["duplicate_of_trial"],
                "" if reward is None else f" (reward {reward:.4f})",
            )
            return dataclasses.replace(
                trial, status="duplicate", reward=reward, metrics=metrics, folder=None
            )
        return dataclasses.replace(trial, metrics=metrics)

    def _original(
        self, key: Tuple[int, int], round_index: int, earlier: Sequence[NewTrial]
    ) -> Optional[Tuple[str, Optional[float]]]:
        """Status and reward of the candidate ``key`` (of this round or an earlier one)."""
        if key[0] == round_index:
            if key[1] >= len(earlier):
                return None
            return earlier[key[1]].status, earlier[key[1]].reward
        journal = self.journal
        try:
            trial = journal.trial(*key)
        except KeyError:
            return None
        return trial.status, trial.reward

    def _screener_for_round(self, keep_registry: bool = False) -> Optional[Any]:
        """The search's screener (built on first use) with its registry rebuilt from the journal
        (kept as it is with ``keep_registry``: more candidates of a round being screened), or
        None when screening of candidates is off."""
        screening = self.settings.screening
        if not screening.screens_candidates:
            return None
        if self._screener is None:
            from paploss.engine import setup_cfg

            keep_registry = False
            proxy = self.settings.proxy
            start = time.perf_counter()
            try:
                cfg = setup_cfg(self._model_config, list(self._proxy_opts))
                with torch_threads(proxy.num_threads):
                    self._screener = build_screener(
                        self._space,
                        screening,
                        cfg,
                        dataset=proxy.train_dataset,
                        val_dataset=proxy.val_dataset,
                        weights=self.warm_start_weights,
                    )
            except (ValueError, RuntimeError, KeyError) as exc:
                raise ScreeningSetupError(
                    f"cannot set up the screening of candidates: {exc}"
                ) from None
            logger.info("screening set up in %.1f s", time.perf_counter() - start)
        if not keep_registry:
            self._screener.registry = self._registry_from_journal()
        return self._screener

    def _registry_from_journal(self) -> Any:
        """Fingerprint registry of every stored candidate that did not fail, in trial order."""
        from paploss.search.screening.equivalence import EquivalenceRegistry

        journal = self.journal
        registry = EquivalenceRegistry()
        for trial in journal.trials():
            digest = (trial.metrics.get("screening") or {}).get("fingerprint")
            if isinstance(digest, str) and trial.status != "failed":
                registry.register(digest, (trial.round, trial.index))
        return registry

    def resolve_duplicates(self, round_index: int) -> None:
        """Give the round's duplicates the reward of their original, now that it is known."""
        journal = self.journal
        for trial in journal.trials(round=round_index):
            if trial.status != "duplicate" or trial.reward is not None:
                continue
            key = duplicate_of(trial)
            name = trial_folder_name(trial.round, trial.index)
            original = None
            if key is not None:
                with contextlib.suppress(KeyError):
                    original = journal.trial(*key)
            record = dict(trial.metrics.get("screening") or {})
            if original is not None:
                record["original_status"] = original.status
            metrics = {**trial.metrics, "screening": record}
            if original is not None and original.is_scored:
                journal.update_trial(
                    round_index,
                    trial.index,
                    reward=original.reward,
                    metrics=metrics,
                    finished_at=time.time(),
                )
                logger.info(
                    "%s: reward %.4f of its equivalent %s",
                    name,
                    original.reward,
                    trial_folder_name(*key),
                )
                continue
            if original is not None and not original.is_final:
                continue  # cannot happen: the round's trials are all final here
            what = "an unknown trial" if key is None else trial_folder_name(*key)
            journal.update_trial(
                round_index,
                trial.index,
                status="failed",
                metrics=metrics,
                error=f"not trained: equivalent to {what}, which has no reward (failed)",
                finished_at=time.time(),
            )
            logger.warning("%s: its equivalent %s failed; left out", name, what)


def duplicate_of(trial: TrialRecord) -> Optional[Tuple[int, int]]:
    """The ``(round, index)`` a duplicate trial reuses the result of, from its metrics."""
    key = (trial.metrics.get("screening") or {}).get("duplicate_of")
    if isinstance(key, (list, tuple)) and len(key) == 2:
        return int(key[0]), int(key[1])
    return None
