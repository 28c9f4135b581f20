"""One search trial: a short proxy training of a candidate loss, scored by COCO AP.

A trial is described by a picklable :class:`TrialSpec` and run by :func:`run_trial`, in the
controller's process (``debug`` launcher) or in a job (``local``/``slurm`` launchers). It trains
the searched model with the candidate's ``MODEL.PAPLOSS`` values on the proxy training split and
evaluates it on the proxy validation split; the reward is the COCO AP (0-100) of the task
``proxy.reward_task``: box AP (``bbox``, the default) or, for a Mask R-CNN, mask AP (``segm``).

**Statuses.** ``done``: trained and evaluated. ``diverged``: the training was stopped as invalid:
the predictions or the loss became NaN/infinite, or the loss stayed constant over
``screening.early_stop.window`` iterations (the spec's ``early_stop`` settings, see
:class:`~paploss.engine.hooks.InvalidTrainingHook`; without that hook Detectron2's own
``FloatingPointError`` on a NaN loss and a loss's non-finite-input error count as well); the
reward is the fixed penalty ``proxy.diverged_reward`` (default 0, the AP of a detector that finds
nothing), so the policy learns to avoid such regions. ``failed``: anything else went wrong (the
error is returned, nothing is scored; the controller retries the trial).

**Common random numbers.** All trials of a round get the same ``seed``: the same initial weights,
the same order of training images and the same augmentations, so reward differences within a
round come from the loss.

**Projects.** A trial first imports the spec's ``imports`` (the search's ``model.imports``, with
``model.python_path`` in front of ``sys.path``), in whatever process it runs: a Detectron2
project's package registers its meta-architecture, config keys, heads and optimizer there, so the
trial reads the project's config and trains with the project's optimizer. A module that cannot be
imported fails the trial with a one-line reason.

**Idempotence.** A trial owns its folder::

    <output_dir>/
        spec.json       the spec (a folder never serves another trial: the spec must match)
        starts.jsonl    one line per training start: time, host, pid, job, resumed iteration
        log.txt         the training log
        train/          Detectron2's OUTPUT_DIR: checkpoints, metrics.json, inference/
        result.json     the final result (done or diverged), written atomically
        result_partial.json   the result of the partial training (``stop_after``), if any
        .lock           held (flock) by the process working in the folder

A folder with a ``result.json`` returns it at once; a folder with checkpoints resumes from the
last one (exactly: see :mod:`paploss.search.trials.proxy`), which is how a requeued Slurm job
(submitit requeues the :class:`~paploss.search.launchers.trial_launcher.CheckpointableTrial`
wrapper on time-out or preemption) or a re-launched trial after a controller restart continues. Checkpoints are deleted
once the result is written unless ``proxy.keep_checkpoints``.

**Partial trainings.** A spec with ``stop_after`` (the search's successive halving,
``search.halving``) trains only the first ``stop_after`` iterations of the proxy's schedule,
saves a checkpoint there, is evaluated and writes ``result_partial.json``; its checkpoints are
kept. The same spec without ``stop_after`` is the same trial (one folder: ``spec.json`` holds the
spec without ``stop_after``) and continues from that checkpoint to the end, exactly as an
uninterrupted training (same weights, same reward). A partial result carries the digest of the
partial spec, so it is never taken for the full one.

**Several GPUs.** With ``proxy.num_gpus > 1`` the training runs through Detectron2's ``launch``
with one process per GPU on a port derived from the job id
(:func:`paploss.utils.jobs.distributed_url`); rank 0 writes ``result.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from paploss.search.settings import EarlyStopSettings, ProxySettings
from paploss.search.trials.proxy_config import check_reward_task, proxy_config_opts
from paploss.utils.imports import import_modules
from paploss.utils.io import atomic_write_json
from paploss.utils.jobs import current_job_id, distributed_url
from paploss.utils.threads import torch_threads

__all__ = [
    "TRIAL_RESULT_STATUSES",
    "TrialSpec",
    "TrialResult",
    "TrialFolderError",
    "TrialFunction",
    "run_trial",
    "evaluation_metrics",
    "load_result",
    "read_starts",
    "remove_checkpoints",
]

logger = logging.getLogger(__name__)

TRIAL_RESULT_STATUSES = ("done", "diverged", "failed")
RESULT_FILE = "result.json"
PARTIAL_RESULT_FILE = "result_partial.json"
SPEC_FILE = "spec.json"
STARTS_FILE = "starts.jsonl"
LOG_FILE = "log.txt"
TRAIN_DIR = "train"
LOCK_FILE = ".lock"
_RESULT_FORMAT = "paploss.search.TrialResult"
_LOGGERS = ("detectron2", "fvcore", "paploss")


class TrialFolderError(RuntimeError):
    """A trial folder belongs to another trial (its ``spec.json`` differs)."""


@dataclass(frozen=True)
class TrialSpec:
    """Everything a job needs to run one trial (picklable; plain values only).

    Attributes:
        trial_id: name of the trial, e.g. ``"round002_trial05"``.
        round: round index.
        index: index of the trial within its round.
        theta: the candidate's θ (for the record; ``overrides`` is what trains).
        overrides: the candidate's config values (``MODEL.PAPLOSS...`` dotted key → value).
        config_file: the searched model's Detectron2 config file (absolute path; the controller
            passes the merged copy it keeps in the search folder).
        seed: training seed, shared by the trials of a round.
        proxy: the proxy training.
        output_dir: the trial's own folder.
        datasets_root: where datasets are generated/cached (``$PAPLOSS_DATASETS`` for the job).
        early_stop: stopping of invalid trainings (``screening.early_stop``; None: no such hook,
            only Detectron2's own NaN-loss check).
        init_weights: checkpoint the training starts from (``MODEL.WEIGHTS``; the search's
            warm start, see :mod:`paploss.search.trials.warm_start`); None: the model config's.
            Not part of the trial's identity: the warm start's settings (in ``proxy``) are.
        imports: Python modules the job imports before it reads the config (``model.imports``:
            a project's package, which registers its config keys, heads and optimizer).
        python_path: folders put in front of ``sys.path`` first (``model.python_path``).
        stop_after: a partial training: stop after this many iterations of the proxy's schedule
            (below ``proxy.iterations``), save a checkpoint, evaluate, keep the checkpoints
            (see the module docstring); None: the full training.
    """

    trial_id: str
    round: int
    index: int
    theta: Tuple[float, ...]
    overrides: Dict[str, Any]
    config_file: str
    seed: int
    proxy: ProxySettings
    output_dir: str
    datasets_root: Optional[str] = None
    early_stop: Optional[EarlyStopSettings] = EarlyStopSettings()
    init_weights: Optional[str] = None
    imports: Tuple[str, ...] = ()
    python_path: Tuple[str, ...] = ()
    stop_after: Optional[int] = None

    def __post_init__(self) -> None:
        stop = self.stop_after
        if stop is not None and not (
            isinstance(stop, int)
            and not isinstance(stop, bool)
            and 0 < stop < self.proxy.iterations
        ):
            raise ValueError(
                f"stop_after must be an integer in [1, {self.proxy.iterations - 1}] (below "
                f"proxy.iterations), got {stop!r}"
            )

    @property
    def result_file(self) -> str:
        """Name of the file that stores this spec's result in the trial folder."""
        return RESULT_FILE if self.stop_after is None else PARTIAL_RESULT_FILE

    def identity(self) -> Dict[str, Any]:
        """What makes two specs the same trial (the model config by its content, not its path;
        the imported modules by name, where there are any, not where they were found)."""
        early_stop = self.early_stop
        identity = {
            "theta": [float(v) for v in self.theta],
            "overrides": json.loads(json.dumps(self.overrides)),
            "config": _file_digest(self.config_file),
            "seed": int(self.seed),
            "proxy": self.proxy.to_dict(),
            "early_stop": None if early_stop is None else dataclasses.asdict(early_stop),
        }
        if self.imports:  # absent otherwise: the digests of earlier trials stay as they were
            identity["imports"] = list(self.imports)
        if self.stop_after is not None:  # likewise
            identity["stop_after"] = int(self.stop_after)
        return identity

    def digest(self) -> str:
        """SHA-256 of :meth:`identity` (stored in ``result.json`` / ``result_partial.json``)."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def full(self) -> "TrialSpec":
        """This trial's full training (the spec without ``stop_after``)."""
        return self if self.stop_after is None else dataclasses.replace(self, stop_after=None)

    def folder_digest(self) -> str:
        """The digest of :meth:`full`: what ``spec.json`` holds, the same for the partial and
        the full training of a trial (they share the folder)."""
        return self.full().digest()

    def config_opts(self) -> List[Any]:
        """All config overrides of this trial's training, candidate values last."""
        opts = proxy_config_opts(self.proxy, self.seed, os.path.join(self.output_dir, TRAIN_DIR))
        if self.init_weights is not None:
            opts += ["MODEL.WEIGHTS", self.init_weights]
        for key, value in self.overrides.items():
            opts += [key, value]
        return opts

    def to_dict(self) -> Dict[str, Any]:
        data = {"trial_id": self.trial_id, "round": self.round, "index": self.index}
        data.update(self.identity())
        data["config_file"] = self.config_file
        if self.python_path:
            data["python_path"] = list(self.python_path)
        data.update({"output_dir": self.output_dir, "digest": self.digest()})
        return data


def _file_digest(path: str) -> str:
    """SHA-256 of a file's content (the path itself when the file cannot be read)."""
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return f"path:{path}"


@dataclass(frozen=True)
class TrialResult:
    """What a trial produced.

    Attributes:
        trial_id: the spec's ``trial_id``.
        status: ``done``, ``diverged`` or ``failed``.
        reward: AP of ``proxy.reward_task`` on the proxy validation split (``done``), the
            penalty (``diverged``), or None (``failed``).
        metrics: the reward task's COCO metrics (AP, AP50, AP75, APs, APm, APl, per-class AP;
            NaN where COCO defines none), those of the other evaluated tasks as ``<task>/<name>``
            (``segm/AP`` for a Mask R-CNN scored by box AP, ``bbox/AP`` for one scored by mask
            AP; see :func:`evaluation_metrics`), and timings: ``train_s``, ``eval_s``,
            ``total_s``, ``iterations`` (trained in this run), ``resumed_from`` (first iteration
            of this run), ``seconds_per_iter``.
        reason: why a trial diverged, or the last line of a failure.
        error: the traceback of a failure.
        started_at, finished_at: wall-clock times (seconds since the epoch) of this run.
        spec_digest: :meth:`TrialSpec.digest` of the trial.
        reused: the result was read from an earlier run's ``result.json``.
    """

    trial_id: str
    status: str
    reward: Optional[float]
    metrics: Dict[str, Any] = field(default_factory=dict)
    reason: Optional[str] = None
    error: Optional[str] = None
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    spec_digest: Optional[str] = None
    reused: bool = False

    @property
    def scored(self) -> bool:
        """Whether the trial has a reward the policy may learn from (done or diverged)."""
        return self.status in ("done", "diverged")

    def mismatch(self, spec: "TrialSpec") -> Optional[str]:
        """Why this is not the result of ``spec``'s trial, or None when it is.

        A result proves whose it is by its trial id and its spec digest (the digest of θ, the
        model config's content, the seed and the proxy settings): a job result file left by
        another trial (job ids are reused), or by this trial with other settings, is refused.
        """
        digest = spec.digest()
        if self.trial_id == spec.trial_id and self.spec_digest == digest:
            return None
        if self.spec_digest is None:
            other = "it carries no spec digest"
        else:
            other = f"spec digest {self.spec_digest[:12]}"
        return (
            f"the result of {self.trial_id} ({other}) is not that of {spec.trial_id} "
            f"(spec digest {digest[:12]})"
        )

    def to_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("reused")
        data["format"] = _RESULT_FORMAT
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], reused: bool = False) -> "TrialResult":
        if data.get("format") != _RESULT_FORMAT:
            raise ValueError("not a trial result")
        values = {f.name: data.get(f.name) for f in dataclasses.fields(cls) if f.name != "reused"}
        values["metrics"] = dict(values.get("metrics") or {})
        if values["status"] not in TRIAL_RESULT_STATUSES:
            raise ValueError(f"unknown trial status {values['status']!r}")
        return cls(**values, reused=reused)


# ------------------------------------------------------------------------------------ running


#: What runs a trial in a job: :func:`run_trial`, or in tests another picklable function with the
#: same contract.
TrialFunction = Callable[[TrialSpec], TrialResult]


def run_trial(spec: TrialSpec) -> TrialResult:
    """Run (or resume, or reuse) one trial; never raises for a problem of the trial itself.

    Args:
        spec: the trial.

    Returns:
        The result: ``done``/``diverged`` results are also stored in ``result.json``; a ``failed``
        result is not stored, so running the trial again retries it.
    """
    folder = Path(spec.output_dir)
    started_at = time.time()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _folder_lock(folder):
            result = _run_locked(spec, folder, started_at)
    except Exception as exc:  # a failed trial is reported, the controller decides what next
        return TrialResult(
            trial_id=spec.trial_id,
            status="failed",
            reward=None,
            reason=f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
            error=traceback.format_exc(),
            started_at=started_at,
            finished_at=time.time(),
            spec_digest=spec.digest(),
        )
    return result


def _run_locked(spec: TrialSpec, folder: Path, started_at: float) -> TrialResult:
    stored = load_result(folder, partial=spec.stop_after is not None)
    if stored is not None:
        if stored.spec_digest != spec.digest():
            raise TrialFolderError(
                f"{folder} holds the result of another trial (spec digest "
                f"{stored.spec_digest} != {spec.digest()}); use a new output folder"
            )
        return dataclasses.replace(stored, reused=True)
    _claim_folder(folder, spec)
    with _trial_environment(spec, folder / LOG_FILE):
        if spec.proxy.num_gpus > 1:
            result = _run_distributed(spec, started_at)
        else:
            result = _train_and_score(spec, started_at)
    # A partial training keeps its checkpoint for the full one (unless that was its last
    # training: diverged); the controller removes those of trials stopped there.
    if not spec.proxy.keep_checkpoints and (spec.stop_after is None or result.status != "done"):
        remove_checkpoints(folder)
    return result


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Exclusive lock on a trial folder for as long as a process works in it.

    Should a trial ever be launched twice at once (a controller killed between submitting a job
    and recording it, then resumed), the second process waits and then reuses the first one's
    result instead of training in the same folder. The lock dies with its process.
    """
    import fcntl

    with open(folder / LOCK_FILE, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def load_result(folder: os.PathLike, partial: bool = False) -> Optional[TrialResult]:
    """The final result stored in a trial folder (``partial``: that of its partial training),
    or None (missing or unreadable file)."""
    path = Path(folder) / (PARTIAL_RESULT_FILE if partial else RESULT_FILE)
    try:
        with open(path, "r") as handle:
            return TrialResult.from_dict(json.load(handle), reused=True)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        logger.warning("ignoring unreadable trial result %s (%s)", path, exc)
        return None


def read_starts(folder: os.PathLike) -> List[Dict[str, Any]]:
    """The training starts recorded in a trial folder (one dict per start)."""
    path = Path(folder) / STARTS_FILE
    if not path.exists():
        return []
    with open(path, "r") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _train_and_score(spec: TrialSpec, started_at: float, rank: int = 0) -> TrialResult:
    """Train and evaluate in this process (one rank of a distributed run when ``rank`` > 0).

    Rank 0 writes ``result.json`` for a done or diverged trial.
    """
    from detectron2.utils.env import seed_all_rng

    from paploss.engine import setup_cfg
    from paploss.search.trials.proxy import ProxyTrainer

    import_modules(spec.imports, spec.python_path)  # a project's registrations, before the config
    cfg = setup_cfg(spec.config_file, spec.config_opts())
    check_reward_task(spec.proxy, cfg, spec.config_file)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    seed_all_rng(spec.seed + rank)
    warm_start = spec.proxy.warm_start
    trainer = ProxyTrainer(
        cfg,
        early_stop=spec.early_stop,
        stop_after=spec.stop_after,
        reinit=warm_start.reinit,
        freeze=warm_start.freeze,
    )
    trainer.resume_or_load(resume=True)
    resumed_from = int(trainer.start_iter)
    if spec.stop_after is not None and resumed_from > spec.stop_after:
        raise TrialFolderError(
            f"{spec.output_dir} has trained to iteration {resumed_from}, beyond the partial "
            f"training's {spec.stop_after}; its partial result cannot be made any more"
        )
    if rank == 0:
        _record_start(Path(spec.output_dir), resumed_from)

    diverged_reason: Optional[str] = None
    train_start = time.perf_counter()
    try:
        trainer.train()
    except FloatingPointError as exc:
        # NaN/inf predictions, a NaN/inf or constant loss (InvalidTrainingHook), or Detectron2's
        # own NaN-loss check.
        diverged_reason = _first_line(exc)
    except Exception as exc:
        # A loss that checks its inputs may stop a diverging run before Detectron2 sees a NaN
        # loss ("logits contain NaN or infinite values"), e.g. with the early-stop hook disabled
        # or a NaN produced inside the loss module: that is a divergence too.
        if not _is_divergence(exc, trainer.model):
            raise
        diverged_reason = f"{type(exc).__name__} at iteration {trainer.iter}: {_first_line(exc)}"
    train_s = time.perf_counter() - train_start
    iterations = max(0, int(trainer.iter) - resumed_from)

    metrics: Dict[str, Any] = {
        "train_s": train_s,
        "iterations": iterations,
        "resumed_from": resumed_from,
        "seconds_per_iter": train_s / iterations if iterations else float("nan"),
    }
    if diverged_reason is not None:
        status, reward = "diverged", float(spec.proxy.diverged_reward)
        metrics["eval_s"] = 0.0
    else:
        eval_start = time.perf_counter()
        results = ProxyTrainer.test(cfg, trainer.model)
        metrics["eval_s"] = time.perf_counter() - eval_start
        metrics.update(evaluation_metrics(results, spec.proxy.reward_task))
        ap = metrics.get("AP", float("nan"))
        status = "done"
        # COCO reports NaN (or nothing) when the model detects nothing at all: that is an AP of 0.
        reward = float(ap) if math.isfinite(ap) else 0.0
    finished_at = time.time()
    metrics["total_s"] = finished_at - started_at
    result = TrialResult(
        trial_id=spec.trial_id,
        status=status,
        reward=reward,
        metrics=metrics,
        reason=diverged_reason,
        started_at=started_at,
        finished_at=finished_at,
        spec_digest=spec.digest(),
    )
    if rank == 0:
        _write_json(Path(spec.output_dir) / spec.result_file, result.to_dict())
    return result


def evaluation_metrics(results: Mapping[str, Any], reward_task: str) -> Dict[str, float]:
    """A trial's COCO metrics from Detectron2's evaluation results.

    Args:
        results: ``{task: {metric: value}}`` (``{"bbox": {"AP": ...}, "segm": {...}}``).
        reward_task: the task whose metrics are the trial's own (``proxy.reward_task``).

    Returns:
        The reward task's metrics under their names (``AP``, ``AP50``, ...), every other task's
        as ``<task>/<name>`` (``segm/AP``); empty when nothing was evaluated (no detections).
    """
    metrics: Dict[str, float] = {}
    for task, values in results.items():
        prefix = "" if task == reward_task else f"{task}/"
        metrics.update({f"{prefix}{key}": float(value) for key, value in dict(values).items()})
    return metrics


class _StopDistributedRun(RuntimeError):
    """Raised by rank 0 after it stored a diverged result, to stop the other ranks."""


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


_NON_FINITE_MESSAGE = re.compile(r"\bnan\b|infinit|non-finite|not finite", re.IGNORECASE)


def _is_divergence(exc: BaseException, model: Any) -> bool:
    """Whether an error raised during training means the run diverged.

    True when the weights are no longer finite, or when the error is about non-finite values
    (a NaN/inf check inside the model or loss).
    """
    import torch

    if isinstance(exc, (ValueError, RuntimeError, ArithmeticError)) and _NON_FINITE_MESSAGE.search(
        str(exc)
    ):
        return True
    with torch.no_grad():
        return not all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _distributed_worker(spec: TrialSpec, started_at: float) -> None:
    from detectron2.utils import comm

    result = _train_and_score(spec, started_at, rank=comm.get_rank())
    # Only rank 0 sees a NaN loss; the other ranks wait in the next collective, so the whole
    # process group is torn down (the result is already stored).
    if result.status == "diverged" and comm.get_rank() == 0:
        raise _StopDistributedRun(result.reason)


def _run_distributed(spec: TrialSpec, started_at: float) -> TrialResult:
    from detectron2.engine import launch

    try:
        launch(
            _distributed_worker,
            spec.proxy.num_gpus,
            num_machines=1,
            machine_rank=0,
            dist_url=distributed_url(),
            args=(spec, started_at),
        )
    except Exception:
        result = load_result(spec.output_dir, partial=spec.stop_after is not None)
        if result is None or result.status != "diverged":
            raise
        return dataclasses.replace(result, reused=False)
    result = load_result(spec.output_dir, partial=spec.stop_after is not None)
    if result is None:
        raise RuntimeError("the distributed training ended without rank 0 writing a result")
    return dataclasses.replace(result, reused=False)


# ------------------------------------------------------------------------------------ folder


def _claim_folder(folder: Path, spec: TrialSpec) -> None:
    """Write ``spec.json``, or check that the one there describes the same trial (the full
    spec: the partial and the full training of a trial share the folder)."""
    path = folder / SPEC_FILE
    if path.exists():
        try:
            with open(path, "r") as handle:
                digest = json.load(handle).get("digest")
        except (OSError, ValueError) as exc:
            raise TrialFolderError(f"{path} is unreadable ({exc}); remove the folder") from None
        if digest != spec.folder_digest():
            raise TrialFolderError(
                f"{folder} belongs to another trial (its {SPEC_FILE} differs); use a new folder"
            )
        return
    _write_json(path, spec.full().to_dict())


def _record_start(folder: Path, resumed_from: int) -> None:
    line = {
        "time": time.time(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "job_id": current_job_id(),
        "resumed_from": resumed_from,
    }
    with open(folder / STARTS_FILE, "a") as handle:
        handle.write(json.dumps(line) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_json(path, data, indent=1, sort_keys=True)


_CHECKPOINT_NAME = re.compile(r"^model_(\d+|final)\.pth$")


def remove_checkpoints(folder: os.PathLike) -> None:
    """Delete the checkpoints of the trial in ``folder`` (its results and logs stay)."""
    train_dir = Path(folder) / TRAIN_DIR
    if not train_dir.is_dir():
        return
    for path in train_dir.iterdir():
        if _CHECKPOINT_NAME.match(path.name) or path.name == "last_checkpoint":
            with contextlib.suppress(OSError):
                path.unlink()


# ------------------------------------------------------------------------------------ environment


@contextlib.contextmanager
def _trial_environment(spec: TrialSpec, log_path: Path) -> Iterator[None]:
    """Datasets root, torch threads and a log file for the duration of a trial."""
    import torch

    saved_root = os.environ.get("PAPLOSS_DATASETS")
    if spec.datasets_root:
        os.environ["PAPLOSS_DATASETS"] = spec.datasets_root
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s"))
    handler.setLevel(logging.INFO)
    saved_levels = []
    for name in _LOGGERS:
        log = logging.getLogger(name)
        saved_levels.append(log.level)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)
        log.addHandler(handler)
    try:
        # TorchScript functions (e.g. Detectron2's focal loss) switch to an optimised, fused graph
        # after their first calls, which rounds differently: the first iterations of a process
        # would then differ from the same iterations later in a process, so neither a resumed
        # trial nor a trial run after others in one process would reproduce an uninterrupted one.
        with torch_threads(spec.proxy.num_threads), torch.jit.optimized_execution(False):
            yield
    finally:
        for name, level in zip(_LOGGERS, saved_levels):
            log = logging.getLogger(name)
            log.removeHandler(handler)
            log.setLevel(level)
        handler.close()
        if spec.datasets_root:
            if saved_root is None:
                os.environ.pop("PAPLOSS_DATASETS", None)
            else:
                os.environ["PAPLOSS_DATASETS"] = saved_root
