"""Search settings: every setting of a loss search, in one module with one set of validators.

A search is described by a YAML file (``configs/search/*.yaml``) with these sections::

    model:     the searched detector (a Detectron2 config file) and which loss groups to search
    proxy:     the short proxy training that scores a candidate, and its reward: box AP, or mask
               AP for a Mask R-CNN (reward_task: bbox | segm)           (ProxySettings)
    search:    method, rounds, candidates per round, seeds, retries    (SearchLoopSettings)
    policy:    σ schedule and PPO hyper-parameters of the ``ppo`` method (SigmaSchedule, PPOConfig)
    cmaes:     step size and learning-rate adaptation of the ``cmaes`` method (CMAESSettings)
    evolution: population, tournament and graph limits of the ``evolution`` and ``random``
               methods (the fields of :class:`paploss.search.proposers.graph_evolution.
               EvolutionSettings` but ``seed``)
    screening: loss rejection, gradient-equivalence check and early stop of invalid trainings
               (RejectionSettings, EquivalenceSettings, EarlyStopSettings)
    launcher:  where trials run: in-process, local processes or Slurm job arrays

Every key has a default (see the dataclasses below); a file only names what it changes. Reading
files (``_BASE_`` inheritance, relative paths) and command-line overrides is
:mod:`paploss.search.settings_loading`; this module is the schema: the sections, their defaults
and validation, and their plain-data form. What the settings turn into is defined where it is
used: the proxy training's Detectron2 config keys and early-stop hook in
:mod:`paploss.search.trials.proxy_config`, the launcher's options in
:mod:`paploss.search.launchers.trial_launcher`, the lines that describe a search in its log in
:mod:`paploss.search.reports.summary`.

**Validation.** Each section is a frozen dataclass that checks its values when it is created
(``validate``) with the checks of :mod:`paploss.utils.validation`; every problem is a
:class:`SettingsError` (a ``ValueError``) of one line that names the key as the file writes it
(``policy.sigma.num_rounds must be an integer >= 1, got 0``), unknown keys get a "did you mean"
hint. Plain dataclasses rather than OmegaConf structured configs: those would turn ``initial: 1``
into ``1.0`` (so the settings stored in existing journals would no longer compare equal) and
report errors over several lines. Nothing here imports torch or Detectron2, except that an
``evolution`` section is checked by
:class:`paploss.search.proposers.graph_evolution.EvolutionSettings` (one definition of its
fields), which needs torch.

The journal of a search stores :meth:`SearchSettings.journal_settings`: everything that changes
the result (model, proxy, search, policy, screening, and evolution when it is set) but not the
launcher, so a search started on one kind of launcher can be resumed on another.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence, Tuple

from paploss.utils.imports import check_importable
from paploss.utils.validation import check_int, check_number, is_int, is_number

__all__ = [
    "SettingsError",
    "LAUNCHER_KINDS",
    "REWARD_TASKS",
    "BASELINES",
    "DEFAULT_METHOD",
    "ModelSettings",
    "ProxySettings",
    "WarmStartSettings",
    "SearchLoopSettings",
    "RecheckSettings",
    "CMAESSettings",
    "INIT_POINTS",
    "JOURNAL_SECTIONS",
    "SigmaSchedule",
    "PPOConfig",
    "PolicySettings",
    "RejectionSettings",
    "EquivalenceSettings",
    "EarlyStopSettings",
    "ScreeningSettings",
    "LauncherSettings",
    "SearchSettings",
]

#: Where trials run: in the controller's process, local processes, or Slurm job arrays.
LAUNCHER_KINDS = ("debug", "local", "slurm")
#: COCO evaluation tasks a proxy trial's reward can come from: box AP, or mask AP (Mask R-CNN).
REWARD_TASKS = ("bbox", "segm")
#: Advantage baselines: the mean reward of the round's samples, the reward of the policy mean, or
#: rank-based (fitness-shaped) advantages.
BASELINES = ("round_mean", "policy_mean", "rank")
#: The search method (proposer) of a search that names none.
DEFAULT_METHOD = "ppo"
#: Named start points of ``search.init`` (besides a config file).
INIT_POINTS = ("identity", "published")
SIGMA_KINDS = ("exponential", "linear", "cosine", "constant")
REJECTION_OPTIMIZERS = ("adam", "sgd")
#: Rejection scores: the AP gain at the last step, or the area under the AP-gain-versus-steps
#: curve divided by the steps (``RejectionResult.score``).
REJECTION_SCORES = ("final", "auc")
#: What the rejection protocol optimises: the recorded predictions themselves, or a fresh linear
#: predictor over features recorded from a trained detector (``RejectionSettings.predictions``).
REJECTION_PREDICTIONS = ("fixed", "linear")


def rejection_score_name(score: str) -> str:
    """How logs and reports name a rejection score (``screening.rejection.score``)."""
    return "AP gain AUC" if score == "auc" else "AP gain"


class SettingsError(ValueError):
    """Search settings are malformed: unknown keys, wrong types, missing files, bad values."""


# ------------------------------------------------------------------------------------ validators


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise SettingsError(message)


def _int(value: Any, key: str, minimum: Optional[int] = None) -> int:
    return check_int(value, key, minimum=minimum, error=SettingsError)


def _bool(value: Any, key: str) -> None:
    _require(isinstance(value, bool), f"{key} must be true or false")


def _choice(value: Any, key: str, choices: Sequence[str], show: Optional[str] = None) -> None:
    _require(value in choices, f"{key} must be one of {show or choices}, got {value!r}")


class _Section:
    """A section of the settings: a frozen dataclass that validates itself when created.

    ``KEY`` is the section's dotted key in a settings file (``"policy.sigma"``); messages name
    fields as ``<KEY>.<field>``.
    """

    KEY: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`SettingsError` naming the first invalid field."""

    def key(self, name: str) -> str:
        """The dotted key of field ``name``."""
        return f"{self.KEY}.{name}" if self.KEY else name

    def to_dict(self) -> Dict[str, Any]:
        """Nested plain data (tuples as lists; JSON/YAML-able)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]]) -> Any:
        """Build and validate from nested plain data; missing keys keep their defaults.

        Raises:
            SettingsError: naming an unknown key or an invalid value.
        """
        return _build(cls, data, cls.KEY)


# ------------------------------------------------------------------------------------ sections


@dataclass(frozen=True)
class ModelSettings(_Section):
    """The searched detector.

    Attributes:
        config: Detectron2 config file of the model (absolute once loaded). Its PAP-loss heads
            define the search space; the exported config inherits from it.
        heads: PAP-loss heads to search (``RETINANET``, ``RPN``, ``ROI_HEADS`` or a head a
            project registers, e.g. ``DETR``); empty: every PAP-loss head of the model.
        fixed: groups kept out of the search and their values (``"RETINANET.lambda": 1.0`` or
            ``"RETINANET.H1": [[x, y], ...]``), see :class:`paploss.search.SearchSpace`.
        imports: Python modules imported, in order, before the model's config is read, in the
            controller and in every trial process (:func:`paploss.utils.imports.import_modules`):
            a Detectron2 project's package, which registers its meta-architecture, config keys,
            heads and optimizer on import (e.g. ``[deformable_detr]``). Checked to exist when the
            settings are loaded.
        python_path: folders put in front of ``sys.path`` before ``imports`` are imported, e.g.
            the project folder that holds the package; relative paths are relative to the file
            that sets them (absolute once loaded).
        train_script: the script that trains the model's configs, named in the exported
            config's "train it" hint (e.g. a Detectron2 project's own ``train_net.py``, which
            imports the project); relative to the file that sets it (absolute once loaded).
            Empty: paploss's ``tools/train_net.py``.
    """

    KEY: ClassVar[str] = "model"

    config: str = ""
    heads: Tuple[str, ...] = ()
    fixed: Dict[str, Any] = field(default_factory=dict)
    imports: Tuple[str, ...] = ()
    python_path: Tuple[str, ...] = ()
    train_script: str = ""

    def validate(self) -> None:
        _require(
            isinstance(self.train_script, str)
            and (not self.train_script or os.path.isfile(self.train_script)),
            f"model.train_script: {self.train_script!r} is not a file",
        )
        for folder in self.python_path:
            _require(
                isinstance(folder, str) and os.path.isdir(folder),
                f"model.python_path: {folder!r} is not a folder",
            )
        try:
            check_importable(self.imports, self.python_path, "model.imports")
        except ImportError as exc:
            raise SettingsError(str(exc)) from None

    def to_dict(self) -> Dict[str, Any]:
        """Plain data; ``imports``, ``python_path`` and ``train_script`` are left out while they
        are empty, so that journals written before the keys existed keep their settings (and
        resume)."""
        data = super().to_dict()
        for name in ("imports", "python_path", "train_script"):
            if not data[name]:
                del data[name]
        return data


#: Config keys the proxy settings own (``proxy.opts`` must not set them).
_PROXY_RESERVED_OPTS = (
    "DATASETS.TEST",
    "DATASETS.TRAIN",
    "OUTPUT_DIR",
    "SEED",
    "SOLVER.CHECKPOINT_PERIOD",
    "SOLVER.IMS_PER_BATCH",
    "SOLVER.MAX_ITER",
)


@dataclass(frozen=True)
class WarmStartSettings(_Section):
    """The checkpoint every proxy training starts from (``proxy.warm_start``).

    With ``iterations > 0`` the search first trains the searched model once, with the proxy's
    data and schedule but these values, and every proxy training then starts from its final
    weights (``MODEL.WEIGHTS``) instead of the model config's: a candidate loss is scored by how
    well it fine-tunes a detector that already detects, not by whether it gets a random one off
    the ground within the proxy's few iterations. The checkpoint is a trial of its own
    (``<search>/warm_start``): trained once, kept, reused on resume.

    Attributes:
        iterations: its training iterations (0: no warm start; trials start from the model
            config's ``MODEL.WEIGHTS``).
        ims_per_batch: its images per iteration.
        loss: its head loss (``MODEL.PAPLOSS.LOSS``): the stock losses of the searched heads by
            default.
        opts: its further config overrides, on top of ``proxy.opts``.
        seed: its training seed.
        reinit: modules of the model, by name prefix (``roi_heads.box_predictor``), that every
            proxy training re-initialises after loading the checkpoint: they keep the weights the
            model was built with (Detectron2's initialisation, seeded by the trial's seed), the
            rest is the checkpoint's. Empty: none.
        freeze: modules, by name prefix (``backbone``, ``proposal_generator``), whose parameters
            every proxy training freezes (``requires_grad_(False)`` before the optimizer is
            built): the checkpoint's values stay, only the other modules learn. Empty: none.
    """

    KEY: ClassVar[str] = "proxy.warm_start"

    iterations: int = 0
    ims_per_batch: int = 8
    loss: str = "stock"
    opts: Dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    reinit: Tuple[str, ...] = ()
    freeze: Tuple[str, ...] = ()

    def validate(self) -> None:
        _int(self.iterations, self.key("iterations"), minimum=0)
        _require(
            isinstance(self.loss, str) and bool(self.loss),
            f"{self.key('loss')} must be a head loss name, got {self.loss!r}",
        )
        _int(self.ims_per_batch, self.key("ims_per_batch"), minimum=1)
        _int(self.seed, self.key("seed"), minimum=0)
        reserved = _PROXY_RESERVED_OPTS + ("MODEL.WEIGHTS", "MODEL.PAPLOSS.LOSS")
        clashes = sorted(set(reserved) & set(self.opts))
        _require(
            not clashes,
            f"{self.key('opts')} must not set {', '.join(clashes)}: the proxy settings own them",
        )
        for name in ("reinit", "freeze"):
            prefixes = getattr(self, name)
            _require(
                all(isinstance(p, str) and p and not p.endswith(".") for p in prefixes),
                f"{self.key(name)} must be module names (e.g. roi_heads.box_predictor), "
                f"got {list(prefixes)!r}",
            )
            _require(
                not prefixes or self.enabled,
                f"{self.key(name)} needs a warm start ({self.key('iterations')} > 0)",
            )

    @property
    def enabled(self) -> bool:
        return self.iterations > 0

    def to_dict(self) -> Dict[str, Any]:
        """Plain data; ``reinit`` and ``freeze`` are left out while empty, so that journals and
        trial specs written before the keys existed keep their settings and digests."""
        data = super().to_dict()
        for name in ("reinit", "freeze"):
            if not data[name]:
                del data[name]
        return data


@dataclass(frozen=True)
class ProxySettings(_Section):
    """The proxy training that scores a candidate.

    Attributes:
        iterations: training iterations (``SOLVER.MAX_ITER``).
        ims_per_batch: images per iteration, all GPUs together (``SOLVER.IMS_PER_BATCH``).
        train_dataset: registered dataset the proxy trains on.
        val_dataset: registered dataset whose COCO AP is the reward (disjoint from the split
            results are reported on).
        reward_task: the COCO AP that is the reward: ``bbox`` (box AP, the default) or ``segm``
            (mask AP; needs a model with a mask branch, ``MODEL.MASK_ON: True``, checked against
            the model config by :func:`paploss.search.trials.proxy_config.check_reward_task`).
        lr_step_fractions: learning-rate drops (``SOLVER.STEPS``) as fractions of ``iterations``;
            ignored when ``opts`` sets ``SOLVER.STEPS``.
        checkpoint_period: iterations between checkpoints (what a resumed trial repeats at most).
        opts: further config overrides of the proxy training, dotted key → value
            (``{"SOLVER.BASE_LR": 0.01}``); the candidate's ``MODEL.PAPLOSS`` values come last.
        num_threads: torch CPU threads per trial (0: torch's default). Part of the settings
            because CPU results depend on it.
        num_gpus: processes (GPUs) per trial; above 1 the training uses Detectron2's ``launch``.
        diverged_reward: reward of a diverged trial (AP units, 0-100).
        keep_checkpoints: keep the trial's checkpoints after its result is written.
        warm_start: the checkpoint every proxy training starts from (off by default; see
            :class:`WarmStartSettings`).
    """

    KEY: ClassVar[str] = "proxy"
    #: Config keys the proxy settings own (``opts`` must not set them).
    RESERVED_OPTS: ClassVar[Tuple[str, ...]] = _PROXY_RESERVED_OPTS

    iterations: int = 300
    ims_per_batch: int = 8
    train_dataset: str = "synthetic_shapes_search_train"
    val_dataset: str = "synthetic_shapes_search_val"
    reward_task: str = "bbox"
    lr_step_fractions: Tuple[float, ...] = (0.75, 0.925)
    checkpoint_period: int = 100
    opts: Dict[str, Any] = field(default_factory=dict)
    num_threads: int = 1
    num_gpus: int = 1
    diverged_reward: float = 0.0
    keep_checkpoints: bool = False
    warm_start: WarmStartSettings = WarmStartSettings()

    def validate(self) -> None:
        for name in ("iterations", "ims_per_batch", "checkpoint_period", "num_gpus"):
            _int(getattr(self, name), self.key(name), minimum=1)
        _int(self.num_threads, self.key("num_threads"), minimum=0)
        _require(
            self.ims_per_batch % self.num_gpus == 0,
            f"proxy.ims_per_batch ({self.ims_per_batch}) must be divisible by proxy.num_gpus "
            f"({self.num_gpus})",
        )
        for name in ("train_dataset", "val_dataset"):
            value = getattr(self, name)
            _require(isinstance(value, str) and bool(value), f"proxy.{name} must be a dataset name")
        _choice(self.reward_task, "proxy.reward_task", REWARD_TASKS)
        fractions = self.lr_step_fractions
        _require(
            all(is_number(f) and 0 < f < 1 for f in fractions)
            and list(fractions) == sorted(fractions),
            f"proxy.lr_step_fractions must be increasing fractions in (0, 1), got {fractions}",
        )
        _require(is_number(self.diverged_reward), "proxy.diverged_reward must be a finite number")
        reserved = self.RESERVED_OPTS + (("MODEL.WEIGHTS",) if self.warm_start.enabled else ())
        clashes = sorted(set(reserved) & set(self.opts))
        _require(
            not clashes,
            f"proxy.opts must not set {', '.join(clashes)}: the proxy settings own them",
        )

    def to_dict(self) -> Dict[str, Any]:
        """Plain data; ``reward_task`` and ``warm_start`` are left out while they are the defaults
        (``bbox``, no warm start), so that journals and trial specs written before the keys
        existed keep their settings and digests (and resume)."""
        data = super().to_dict()
        if data["reward_task"] == REWARD_TASKS[0]:
            del data["reward_task"]
        data["warm_start"] = self.warm_start.to_dict()
        if data["warm_start"] == WarmStartSettings().to_dict():
            del data["warm_start"]
        return data


@dataclass(frozen=True)
class RecheckSettings(_Section):
    """The winner's-curse guard (``search.recheck``): the best of a search by one noisy proxy
    reward is often a lucky draw, so before the search declares its best, its ``top`` trials by
    reward (distinct candidates, samples and policy means alike) are trained again with
    ``seeds`` other training seeds (one recheck round per seed, after the last round, seeded
    like a further round). The search's best is then the candidate with the highest mean over
    its original and recheck rewards.

    Attributes:
        top: candidates retrained (0: off; the best is the single highest reward).
        seeds: recheck trainings of each, each with another seed.
    """

    KEY: ClassVar[str] = "search.recheck"

    top: int = 0
    seeds: int = 1

    def validate(self) -> None:
        _int(self.top, self.key("top"), minimum=0)
        _int(self.seeds, self.key("seeds"), minimum=1)

    @property
    def enabled(self) -> bool:
        return self.top > 0


@dataclass(frozen=True)
class CMAESSettings(_Section):
    """Settings of the ``cmaes`` method (``cmaes:``): CMA-ES over θ on the ``cmaes`` library,
    a population of ``search.candidates`` per round, started at ``search.init``.

    Attributes:
        sigma: initial step size in θ units (θ ∈ [0, 1] per dimension).
        lr_adapt: the library's learning-rate adaptation for noisy rewards (LRA-CMA-ES).
    """

    KEY: ClassVar[str] = "cmaes"

    sigma: float = 0.1
    lr_adapt: bool = False

    def validate(self) -> None:
        _require(
            is_number(self.sigma) and 0 < self.sigma <= 1,
            f"{self.key('sigma')} must be in (0, 1], got {self.sigma!r}",
        )
        _bool(self.lr_adapt, self.key("lr_adapt"))


@dataclass(frozen=True)
class SearchLoopSettings(_Section):
    """The search method, its rounds and candidates.

    Attributes:
        method: the search method, a name in :data:`paploss.search.proposers.PROPOSER_REGISTRY`
            (``ppo``: the truncated-normal policy trained with PPO, configured by ``policy``).
        rounds: number of rounds (each ends with one update of the method).
        candidates: candidates the method proposes per round; with ``max_proposals``, the
            candidates per round to train.
        max_proposals: for a method that can propose more within a round (``evolution``,
            ``random``): while fewer than ``candidates`` of the round's candidates are to be
            trained (the others rejected or duplicates), propose more, up to this many per
            round. 0: exactly ``candidates`` proposals per round.
        score_mean: also train the policy mean μ as one extra candidate per round; its reward is
            reported (and is the advantage baseline with ``baseline: policy_mean``), it is not
            part of the PPO update.
        baseline: how the samples' advantages are formed: ``round_mean`` (reward minus the mean
            reward of the round's samples), ``policy_mean`` (reward minus the reward of μ; needs
            ``score_mean``) or ``rank`` (fitness shaping: the samples' centred ranks, ties
            averaged, so one outlier reward or the scale of the rewards does not steer the
            update).
        seed: seed of the method's sampling and of the per-round training seeds.
        max_attempts: a trial that fails (raises or crashes) is launched at most this often;
            then it is marked ``failed`` and left out of the update.
        halving: successive halving inside a round (0: off; otherwise a share in (0, 1), e.g.
            0.5). Every trial of the round first trains the first ``ceil(halving *
            proxy.iterations)`` iterations of the proxy's schedule (the same ``MAX_ITER`` and
            LR steps as the full proxy: a prefix of the full training, not a shorter schedule;
            :meth:`partial_iterations`) and is evaluated. Then the better half of the round's
            samples with a partial reward (``ceil(n/2)`` of ``n``, ranked by that reward, ties by
            trial index) continue from their checkpoint to the full ``proxy.iterations``; the
            policy-mean trial (role ``mean``) always continues (it reports the policy). The
            stopped samples keep their partial reward (status ``done``, metrics ``halving:
            stopped``); a sample that diverges in its partial training is final (``diverged``).
            A round then costs ``n·h + ceil(n/2)·(1 − h)`` trainings instead of ``n``.
        init: where a method over θ (``ppo``, ``cmaes``) starts: ``identity`` (identity
            functions, λ = 1), ``published`` (the published searched parameters of each searched
            head, :mod:`paploss.losses.published`) or a Detectron2 config file whose
            ``MODEL.PAPLOSS`` values are the start (e.g. an exported search result; relative to
            the settings file, like ``model.config``). The loss-graph methods start from random
            graphs and take only ``identity``.
        recheck: the winner's-curse guard (:class:`RecheckSettings`): after the last round the
            best trials are trained again with other seeds and the export is the best by the
            mean of all their rewards.
    """

    KEY: ClassVar[str] = "search"

    method: str = DEFAULT_METHOD
    rounds: int = 5
    candidates: int = 8
    max_proposals: int = 0
    score_mean: bool = True
    baseline: str = "round_mean"
    seed: int = 0
    max_attempts: int = 2
    halving: float = 0.0
    init: str = "identity"
    recheck: RecheckSettings = RecheckSettings()

    def validate(self) -> None:
        _require(
            isinstance(self.method, str) and bool(self.method),
            f"search.method must be the name of a search method, got {self.method!r}",
        )
        _int(self.rounds, "search.rounds", minimum=1)
        _int(self.candidates, "search.candidates", minimum=1)
        _int(self.max_proposals, "search.max_proposals", minimum=0)
        _require(
            self.max_proposals == 0 or self.max_proposals >= self.candidates,
            f"search.max_proposals must be 0 or at least search.candidates ({self.candidates}), "
            f"got {self.max_proposals}",
        )
        _int(self.max_attempts, "search.max_attempts", minimum=1)
        _int(self.seed, "search.seed", minimum=0)
        _choice(self.baseline, "search.baseline", BASELINES)
        _require(
            self.baseline != "policy_mean" or self.score_mean,
            "search.baseline 'policy_mean' needs search.score_mean: true",
        )
        _require(
            is_number(self.halving) and (self.halving == 0 or 0 < self.halving < 1),
            f"search.halving must be 0 (off) or a share in (0, 1), got {self.halving!r}",
        )
        _require(
            isinstance(self.init, str) and (self.init in INIT_POINTS or os.path.isfile(self.init)),
            f"search.init must be one of {', '.join(INIT_POINTS)} or an existing config file, "
            f"got {self.init!r}",
        )

    def partial_iterations(self, iterations: int) -> Optional[int]:
        """Iterations of the partial training of :attr:`halving` for a proxy of ``iterations``
        (``ceil(halving * iterations)``), or None when halving is off."""
        if not self.halving:
            return None
        # rounded first: 0.3 * 10 is 3.0000000000000004 in floating point
        return max(1, math.ceil(round(self.halving * iterations, 9)))

    #: Keys left out of :meth:`to_dict` while they hold their default, so that journals written
    #: before the keys existed keep their settings (and resume).
    LATER_KEYS: ClassVar[Dict[str, Any]] = {
        "method": DEFAULT_METHOD,
        "max_proposals": 0,
        "halving": 0.0,
        "init": "identity",
        "recheck": {"top": 0, "seeds": 1},
    }

    def to_dict(self) -> Dict[str, Any]:
        """Plain data without the :attr:`LATER_KEYS` that hold their default."""
        data = super().to_dict()
        for key, default in self.LATER_KEYS.items():
            if data[key] == default:
                del data[key]
        return data


@dataclass(frozen=True)
class SigmaSchedule(_Section):
    """Standard deviation of the sampling distribution as a function of the round index.

    ``σ(0) = initial`` and ``σ(r) = final`` for every ``r >= num_rounds - 1``; in between the
    value follows ``kind``:

    * ``"exponential"``: ``initial · (final / initial)^(r / (num_rounds - 1))`` (geometric);
    * ``"linear"``: straight line from ``initial`` to ``final``;
    * ``"cosine"``: half cosine from ``initial`` to ``final``;
    * ``"constant"``: always ``initial`` (``final`` is ignored).

    Attributes:
        initial: σ of the first round, in θ units.
        final: σ reached at round ``num_rounds - 1``; must be positive and at most ``initial``.
        num_rounds: number of rounds the annealing is spread over (the planned search length;
            in a settings file it defaults to ``search.rounds``).
        kind: one of ``"exponential"``, ``"linear"``, ``"cosine"``, ``"constant"``.
    """

    KEY: ClassVar[str] = "policy.sigma"

    initial: float = 0.2
    final: float = 0.02
    num_rounds: int = 40
    kind: str = "exponential"

    def validate(self) -> None:
        _choice(self.kind, self.key("kind"), SIGMA_KINDS)
        _require(
            is_number(self.initial) and self.initial > 0,
            f"{self.key('initial')} must be positive, got {self.initial}",
        )
        _require(
            is_number(self.final) and 0 < self.final <= self.initial,
            f"{self.key('final')} must be in (0, initial={self.initial}], got {self.final}",
        )
        _int(self.num_rounds, self.key("num_rounds"), minimum=1)

    def __call__(self, round_index: int) -> float:
        """Return σ for round ``round_index`` (0-based)."""
        if round_index < 0:
            raise ValueError(f"round index must be >= 0, got {round_index}")
        if self.kind == "constant":
            return float(self.initial)
        span = self.num_rounds - 1
        progress = 1.0 if span == 0 else min(round_index / span, 1.0)
        if self.kind == "exponential":
            return float(self.initial * (self.final / self.initial) ** progress)
        if self.kind == "linear":
            return float(self.initial + (self.final - self.initial) * progress)
        # cosine
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return float(self.final + (self.initial - self.final) * cosine)


@dataclass(frozen=True)
class PPOConfig(_Section):
    """Hyper-parameters of one PPO update (one call of
    :meth:`~paploss.search.proposers.policy.TruncatedNormalPolicy.update`).

    Attributes:
        clip_epsilon: ε of the clipped ratio objective (per-dimension ratios).
        num_steps: Adam steps per round, on the full batch of the round's candidates.
        lr: Adam step size on ``logit(μ)`` at ``σ = SigmaSchedule.initial``; the step size of a
            round is ``lr · σ_r / σ_0``.
        warmup_steps: linear warm-up of the step size over the first steps of each round; the rest
            of the round follows a cosine decay to zero.
        betas: Adam's moment decay rates.
        adam_eps: Adam's denominator epsilon.
        normalize_advantages: divide the advantages by their root mean square.
    """

    KEY: ClassVar[str] = "policy.ppo"

    clip_epsilon: float = 0.1
    num_steps: int = 100
    lr: float = 0.02
    warmup_steps: int = 10
    betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    normalize_advantages: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.betas, (list, tuple)) and all(is_number(b) for b in self.betas):
            object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        super().__post_init__()

    def validate(self) -> None:
        _require(
            is_number(self.clip_epsilon) and 0 < self.clip_epsilon < 1,
            f"{self.key('clip_epsilon')} must be in (0, 1), got {self.clip_epsilon}",
        )
        _int(self.num_steps, self.key("num_steps"), minimum=0)
        _require(
            is_number(self.lr) and self.lr > 0,
            f"{self.key('lr')} must be positive, got {self.lr}",
        )
        _int(self.warmup_steps, self.key("warmup_steps"), minimum=0)
        betas = self.betas
        _require(
            isinstance(betas, tuple)
            and len(betas) == 2
            and all(is_number(b) and 0 <= b < 1 for b in betas),
            f"{self.key('betas')} must be two values in [0, 1), got {betas}",
        )

    def step_size(self, step: int, base_lr: float) -> float:
        """Step size of Adam step ``step`` (0-based) within a round whose peak is ``base_lr``."""
        if step < self.warmup_steps:
            return base_lr * (step + 1) / self.warmup_steps
        decay_steps = self.num_steps - self.warmup_steps
        if decay_steps <= 0:
            return base_lr
        progress = (step - self.warmup_steps) / decay_steps
        return base_lr * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class PolicySettings(_Section):
    """Sampling distribution and its update of the ``ppo`` method (see
    :mod:`paploss.search.proposers.policy`).

    Attributes:
        sigma: σ schedule; ``num_rounds`` defaults to ``search.rounds``.
        ppo: PPO hyper-parameters.
    """

    KEY: ClassVar[str] = "policy"

    sigma: SigmaSchedule = SigmaSchedule()
    ppo: PPOConfig = PPOConfig()


@dataclass(frozen=True)
class RejectionSettings(_Section):
    """The loss-rejection protocol (:class:`paploss.search.screening.RejectionProtocol`).

    Attributes:
        enabled: run the protocol (a rejected candidate is not trained).
        min_ap_gain: reject when ``AP(after) - AP(before)`` is below this, in AP points (0-100),
            for any screened head.
        steps: optimisation steps on the predictions.
        optimizer: ``"adam"`` (per-prediction step sizes, the default) or ``"sgd"`` (momentum
            0.9; sensitive to the gradient scale and λ, needs much larger learning rates).
        logit_lr: learning rate of the logits.
        box_lr: learning rate of the positives' box deltas.
        num_images: images in the fixed batch.
        seed: seeds the image choice and the random network.
        dataset: registered dataset of the images; None: the proxy training split.
        eval_every: also measure AP every this many steps (the curve is reported; 0: only at the
            end). Each measurement costs about as much as a few optimisation steps.
        score: what ``min_ap_gain`` is compared with: ``final``, the AP gain at the last step,
            or ``auc``, the area under the AP-gain-versus-steps curve (measured every
            ``eval_every`` steps, which must be set) divided by ``steps``: it rewards how fast a
            loss teaches, not only where it ends.
        candidates_per_image: top-scoring (anchor, class) pairs per image decoded before NMS.
        nms_threshold: IoU threshold of the per-class NMS.
        detections_per_image: detections kept per image after NMS (COCO's maxDets).
        rejected_reward: reward a rejected candidate gets for the policy update (AP units).
        predictions: what the candidate's loss optimises. ``fixed`` (the default): the logits
            and the positives' deltas of a random detector's forward, as free tensors. ``linear``:
            a freshly initialised linear box predictor (Detectron2's ``cls_score`` and
            ``bbox_pred`` layers, seeded by ``seed``) over the box head's features of a *trained*
            detector, the search's warm start (``proxy.warm_start``, required); ``logit_lr`` and
            ``box_lr`` are then the learning rates of the two layers, and AP is measured on
            ``val_images`` held-out images of the proxy validation split, so a loss that does not
            teach the layer to rank and place boxes on unseen RoIs cannot score well. Only the
            ROI head (a linear predictor over per-RoI features) can be screened this way
            (:class:`paploss.search.screening.linear.LinearRejectionProtocol`).
        val_images: images of the held-out batch of ``predictions: linear``.
    """

    KEY: ClassVar[str] = "screening.rejection"

    enabled: bool = True
    min_ap_gain: float = 5.0
    steps: int = 100
    optimizer: str = "adam"
    logit_lr: float = 0.1
    box_lr: float = 0.02
    num_images: int = 8
    seed: int = 0
    dataset: Optional[str] = None
    eval_every: int = 0
    candidates_per_image: int = 1000
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    rejected_reward: float = 0.0
    score: str = "final"
    predictions: str = "fixed"
    val_images: int = 8

    def validate(self) -> None:
        _bool(self.enabled, self.key("enabled"))
        _choice(self.score, self.key("score"), REJECTION_SCORES)
        _choice(self.predictions, self.key("predictions"), REJECTION_PREDICTIONS)
        _require(
            self.score != "auc" or self.eval_every > 0,
            f"{self.key('score')}: auc needs the curve, set {self.key('eval_every')} > 0",
        )
        for name in ("min_ap_gain", "rejected_reward"):
            _require(is_number(getattr(self, name)), f"{self.key(name)} must be a finite number")
        for name in (
            "steps",
            "num_images",
            "candidates_per_image",
            "detections_per_image",
            "val_images",
        ):
            _int(getattr(self, name), self.key(name), minimum=1)
        for name in ("seed", "eval_every"):
            _int(getattr(self, name), self.key(name), minimum=0)
        _choice(self.optimizer, self.key("optimizer"), REJECTION_OPTIMIZERS)
        for name in ("logit_lr", "box_lr"):
            value = getattr(self, name)
            _require(is_number(value) and value > 0, f"{self.key(name)} must be > 0, got {value!r}")
        check_number(
            self.nms_threshold,
            self.key("nms_threshold"),
            low=0.0,
            high=1.0,
            high_inclusive=True,
            error=SettingsError,
        )
        _require(
            self.dataset is None or (isinstance(self.dataset, str) and bool(self.dataset)),
            f"{self.key('dataset')} must be a dataset name or null",
        )

    @property
    def linear(self) -> bool:
        """Whether the protocol trains a linear predictor (``predictions: linear``)."""
        return self.predictions == "linear"

    def to_dict(self) -> Dict[str, Any]:
        """Plain data; ``score``, ``predictions`` and ``val_images`` are left out while they are
        the defaults (journals written before the keys existed keep their settings)."""
        data = super().to_dict()
        for name in ("score", "predictions", "val_images"):
            if data[name] == getattr(RejectionSettings, name):
                del data[name]
        return data


@dataclass(frozen=True)
class EquivalenceSettings(_Section):
    """The gradient-equivalence check (:func:`paploss.search.screening.gradient_fingerprint`).

    Attributes:
        enabled: fingerprint candidates; an equivalent one reuses the first one's reward.
        significant_digits: digits each gradient norm is rounded to.
        probe_samples: probe rankings ``B`` (each gives two norms per head).
        probe_entries: entries per probe ranking.
        probe_positives: positives per probe ranking (a few more are ignored entries).
        seed: seed of the probes.
    """

    KEY: ClassVar[str] = "screening.equivalence"

    enabled: bool = True
    significant_digits: int = 2
    probe_samples: int = 16
    probe_entries: int = 64
    probe_positives: int = 8
    seed: int = 0

    def validate(self) -> None:
        _bool(self.enabled, self.key("enabled"))
        for name, minimum in (
            ("significant_digits", 1),
            ("probe_samples", 1),
            ("probe_positives", 1),
            ("seed", 0),
        ):
            _int(getattr(self, name), self.key(name), minimum=minimum)
        _require(
            is_int(self.probe_entries, 2 * self.probe_positives + 1),
            f"{self.key('probe_entries')} must be an integer > 2 * probe_positives, "
            f"got {self.probe_entries!r}",
        )


@dataclass(frozen=True)
class EarlyStopSettings(_Section):
    """Stopping proxy trainings whose loss is invalid
    (:class:`paploss.engine.hooks.InvalidTrainingHook`, built by
    :func:`paploss.search.trials.proxy_config.early_stop_hook`).

    Attributes:
        enabled: install the hook in proxy trainings.
        window: iterations over which an unchanged ``total_loss`` counts as constant (0: off).
        tolerance: relative tolerance of that check.
        check_predictions: also stop as soon as a PAP-loss head receives NaN/infinite
            predictions.
    """

    KEY: ClassVar[str] = "screening.early_stop"

    enabled: bool = True
    window: int = 50
    tolerance: float = 1e-6
    check_predictions: bool = True

    def validate(self) -> None:
        _bool(self.enabled, self.key("enabled"))
        _bool(self.check_predictions, self.key("check_predictions"))
        _int(self.window, self.key("window"), minimum=0)
        _require(
            is_number(self.tolerance) and self.tolerance >= 0,
            f"{self.key('tolerance')} must be >= 0, got {self.tolerance!r}",
        )


@dataclass(frozen=True)
class ScreeningSettings(_Section):
    """All screening settings: the ``screening:`` section of a search settings file.

    Example (every key optional)::

        screening:
          rejection: {enabled: true, min_ap_gain: 5.0, steps: 100, num_images: 8}
          equivalence: {enabled: true, significant_digits: 2}
          early_stop: {enabled: true, window: 50}
    """

    KEY: ClassVar[str] = "screening"

    rejection: RejectionSettings = RejectionSettings()
    equivalence: EquivalenceSettings = EquivalenceSettings()
    early_stop: EarlyStopSettings = EarlyStopSettings()

    def to_dict(self) -> Dict[str, Any]:
        """Plain data, the rejection's as :meth:`RejectionSettings.to_dict` gives it."""
        data = super().to_dict()
        data["rejection"] = self.rejection.to_dict()
        return data

    @property
    def screens_candidates(self) -> bool:
        """Whether :class:`~paploss.search.screening.Screener` has anything to do."""
        return self.rejection.enabled or self.equivalence.enabled


@dataclass(frozen=True)
class LauncherSettings(_Section):
    """Where trials run (see :class:`paploss.search.launchers.TrialLauncher`, whose arguments
    :func:`paploss.search.launchers.launcher_options` makes of these).

    Attributes:
        kind: ``debug`` (in this process), ``local`` (processes on this machine) or ``slurm``.
        parallel: local launcher: trials running at once.
        timeout_min: time limit per trial job in minutes (Slurm ``--time``); None: launcher default.
        partition, account, qos: Slurm ``--partition``, ``--account``, ``--qos``.
        cpus_per_task: Slurm ``--cpus-per-task``.
        gpus_per_node: GPUs per trial job.
        mem_gb: Slurm ``--mem`` in GB.
        array_parallelism: at most this many array tasks of a round run at once.
        additional_parameters: extra sbatch flags (``{constraint: volta32gb}``).
        setup: shell lines run before each trial job (``module load cuda``).
        max_num_timeout: how often a trial job may be requeued after hitting its time limit.
        poll_interval_s: pause between checks for finished trials.
    """

    KEY: ClassVar[str] = "launcher"

    kind: str = "local"
    parallel: int = 1
    timeout_min: Optional[float] = None
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    cpus_per_task: Optional[int] = None
    gpus_per_node: int = 0
    mem_gb: Optional[float] = None
    array_parallelism: Optional[int] = None
    additional_parameters: Dict[str, Any] = field(default_factory=dict)
    setup: Tuple[str, ...] = ()
    max_num_timeout: int = 3
    poll_interval_s: float = 1.0

    def validate(self) -> None:
        _choice(self.kind, "launcher.kind", LAUNCHER_KINDS, show=", ".join(LAUNCHER_KINDS))
        _int(self.parallel, "launcher.parallel", minimum=1)
        _int(self.gpus_per_node, "launcher.gpus_per_node", minimum=0)


#: Sections whose settings determine a search's result (stored in its journal), in the order
#: their values are checked; ``evolution`` only when it is set.
#: The sections a journal stores (what makes a search's result; the launcher is not one of them).
JOURNAL_SECTIONS = ("model", "proxy", "search", "policy", "screening", "evolution", "cmaes")


@dataclass(frozen=True)
class SearchSettings(_Section):
    """All settings of a search (see the module docstring for the file format).

    Attributes:
        source: the file the settings came from (not part of the journal).
    """

    model: ModelSettings = ModelSettings()
    proxy: ProxySettings = ProxySettings()
    search: SearchLoopSettings = SearchLoopSettings()
    policy: PolicySettings = PolicySettings()
    screening: ScreeningSettings = ScreeningSettings()
    evolution: Dict[str, Any] = field(default_factory=dict)
    cmaes: CMAESSettings = CMAESSettings()
    launcher: LauncherSettings = LauncherSettings()
    source: Optional[str] = None

    def validate(self) -> None:
        """Check what the sections cannot check alone (the model's config file exists) and the
        ``evolution`` section."""
        _require(
            bool(self.model.config), "model.config: the searched model's config file is required"
        )
        _require(
            os.path.isfile(self.model.config),
            f"model.config: config file '{self.model.config}' does not exist",
        )
        if self.evolution:
            self.evolution_settings()
        rejection = self.screening.rejection
        _require(
            not (rejection.enabled and rejection.linear) or self.proxy.warm_start.enabled,
            "screening.rejection.predictions: linear needs a trained detector's features; set "
            "proxy.warm_start.iterations > 0 (the warm start it reads them from)",
        )
        partial = self.search.partial_iterations(self.proxy.iterations)
        _require(
            partial is None or partial < self.proxy.iterations,
            f"search.halving: {self.search.halving} of proxy.iterations ({self.proxy.iterations}) "
            f"leaves no iterations to continue with; choose a smaller share",
        )

    def evolution_settings(self) -> Any:
        """The :class:`paploss.search.proposers.graph_evolution.EvolutionSettings` of the
        ``evolution`` section, seeded by ``search.seed``.

        Raises:
            SettingsError: naming the key, for an unknown key or a bad value.
        """
        from paploss.search.proposers.graph_evolution import EvolutionSettings

        _require(
            "seed" not in self.evolution,
            "evolution.seed: the evolution is seeded by search.seed; remove evolution.seed",
        )
        try:
            return EvolutionSettings.from_dict({**self.evolution, "seed": self.search.seed})
        except (TypeError, ValueError) as exc:
            message = str(exc)
            if not message.startswith("evolution"):
                message = f"evolution: {message}"
            raise SettingsError(message) from None

    def journal_settings(self) -> Dict[str, Any]:
        """JSON-able settings that determine the search's result (stored in its journal)."""
        data = {}
        for name in JOURNAL_SECTIONS:
            section = getattr(self, name)
            if name == "cmaes" and self.search.method != "cmaes":
                continue  # stored with its method only (journals from before it stay equal)
            if isinstance(section, _Section):
                data[name] = section.to_dict()
            elif section:  # evolution: stored when set (journals from before it stay equal)
                data[name] = _plain(section)
        return data

    def to_dict(self) -> Dict[str, Any]:
        """Everything, launcher included, as plain data (e.g. to save a copy next to a search)."""
        data = self.journal_settings()
        data["search"] = _plain(dataclasses.asdict(self.search))  # the method too
        data["proxy"] = _plain(dataclasses.asdict(self.proxy))  # the reward task too
        data["launcher"] = self.launcher.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Optional[str] = None) -> "SearchSettings":
        """Build and validate settings from nested plain data (paths must already be resolved).

        ``policy.sigma.num_rounds`` defaults to ``search.rounds``.

        Raises:
            SettingsError: naming the offending key.
        """
        data = _with_sigma_rounds(data)
        settings = _build(cls, data, "", extra={"source": source})
        return settings

    def replace_launcher(self, **changes: Any) -> "SearchSettings":
        """A copy with launcher fields changed (None values are ignored)."""
        changes = {key: value for key, value in changes.items() if value is not None}
        if not changes:
            return self
        launcher = _build(
            LauncherSettings, {**dataclasses.asdict(self.launcher), **changes}, "launcher"
        )
        return dataclasses.replace(self, launcher=launcher)


# ------------------------------------------------------------------------------------ building


def _build(cls: Any, data: Any, key: str, extra: Optional[Mapping[str, Any]] = None) -> Any:
    """Instantiate section ``cls`` from a mapping (None: all defaults), recursing into nested
    sections, with one-line errors for unknown keys, wrong types and bad values."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SettingsError(f"{key} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    settable = [name for name in fields if not (extra and name in extra)]
    unknown = sorted(set(data) - set(settable))
    if unknown:
        _raise_unknown(key, unknown, settable)
    values: Dict[str, Any] = dict(extra or {})
    for name in settable:  # in field order: a bad value is blamed on the first section holding one
        if name not in data:
            continue
        value, default = data[name], fields[name].default
        child = f"{key}.{name}" if key else name
        if isinstance(default, _Section):
            value = _build(type(default), value, child)
        elif isinstance(default, tuple) and value is not None:
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                value = [value]
            value = tuple(value)
        elif fields[name].default_factory is dict:
            value = {} if value is None else value
            if not isinstance(value, Mapping):
                raise SettingsError(f"{child} must be a mapping, got {value!r}")
            value = dict(value)
        values[name] = value
    try:
        return cls(**values)
    except TypeError as exc:  # e.g. a comparison of a value of the wrong type
        raise SettingsError(f"{key or 'settings'}: {exc}") from None


def _with_sigma_rounds(data: Mapping[str, Any]) -> Dict[str, Any]:
    """``data`` with ``policy.sigma.num_rounds`` set to ``search.rounds`` where it is not given."""
    data = dict(data)
    search = data.get("search")
    rounds = search.get("rounds") if isinstance(search, Mapping) else None
    policy = data.get("policy")
    if policy is None:
        policy = {}
    if not isinstance(policy, Mapping):
        return data
    sigma = policy.get("sigma")
    if sigma is None:
        sigma = {}
    if not isinstance(sigma, Mapping):
        return data
    sigma = dict(sigma)
    sigma.setdefault("num_rounds", SearchLoopSettings.rounds if rounds is None else rounds)
    data["policy"] = {**policy, "sigma": sigma}
    return data


def _raise_unknown(key: str, unknown: Sequence[str], known: Sequence[str]) -> None:
    prefix = f"{key}." if key else ""
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{prefix}{name}" + (f" (did you mean {prefix}{close[0]}?)" if close else ""))
    raise SettingsError(
        f"unknown {key or 'search'} setting(s): {', '.join(hints)}; known keys here: "
        f"{', '.join(prefix + k for k in known)}"
    )


def _plain(value: Any) -> Any:
    """Tuples → lists, recursively (JSON-able, equal after a JSON round trip)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
