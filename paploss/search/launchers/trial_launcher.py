"""Fan-out of search trials through submitit: in-process, local processes or Slurm job arrays.

One round of trials is submitted at once (a Slurm job array on a cluster), and the controller
collects the outcomes as the jobs finish::

    launcher = TrialLauncher("slurm", "output/search/jobs", partition="gpu", timeout_min=120,
                             gpus_per_node=1, cpus_per_task=8)
    handles = launcher.submit(run_trial, specs)          # job ids: [h.job_id for h in handles]
    for outcome in launcher.as_completed(handles):
        ...                                              # outcome.ok, outcome.result, outcome.error

Design notes:

* A trial function takes one picklable spec and returns a picklable result. It must be
  idempotent: it writes into its own folder, resumes from its own checkpoint there, and returns
  the stored result when the folder already holds a final one. Every trial is wrapped in a
  :class:`CheckpointableTrial`, so on Slurm a timed-out or preempted job is requeued by submitit
  and the re-run resumes from that checkpoint.
* Job states are read from the job's result file first and from ``squeue`` otherwise
  (:mod:`paploss.search.launchers.slurm`); submitit's own state watcher, which relies on
  ``sacct``, is not used for Slurm jobs. A job that leaves the queue without a result
  (killed, out of memory, node failure) is reported as failed with the scheduler's state and the
  end of its log.
* After a controller restart, :meth:`TrialLauncher.attach` rebuilds handles from the job ids the
  controller stored (Slurm jobs, and local jobs whose processes still run or left a result).
  Anything else is simply launched again: the trial folders make a re-run safe. Re-attached local
  jobs count towards ``parallel`` like the ones this launcher started.
* Local job ids are process ids, which the system reuses (they wrap, and restart in a fresh
  container): a result file written before a job was submitted belongs to an earlier job with
  the same id and is ignored. A result still has to prove whose it is to the caller (the search
  controller compares a trial result's trial id and spec digest with the trial's).
* :func:`check_launcher` tells within seconds, before anything is written, whether trials of a
  kind can be submitted at all (Slurm installed and its controller answering).
* The ``debug`` kind runs each trial in the controller's process when its outcome is collected,
  which keeps tracebacks and debuggers usable.
"""

import logging
import os
import subprocess
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Union,
)

import submitit
from submitit.core.utils import DelayedSubmission, pickle_load

from paploss.search.launchers.slurm import (
    SLURM_ACTIVE_STATES,
    SLURM_INSTALL_HINT,
    missing_slurm_tools,
    slurm_environment_summary,
    slurm_mem,
    squeue_states,
)
from paploss.search.settings import LAUNCHER_KINDS, LauncherSettings
from paploss.utils.errors import error_summary

__all__ = [
    "LAUNCHER_KINDS",
    "LaunchError",
    "check_launcher",
    "error_summary",
    "CheckpointableTrial",
    "TrialOutcome",
    "TrialHandle",
    "TrialLauncher",
    "make_executor",
    "launcher_options",
]

logger = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    """Trials could not be submitted (no scheduler, rejected job options, ...)."""


# --------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------


def make_executor(
    kind: str,
    folder: Union[str, Path],
    *,
    timeout_min: Optional[float] = None,
    gpus_per_node: int = 0,
    cpus_per_task: Optional[int] = None,
    mem_gb: Optional[float] = None,
    partition: Optional[str] = None,
    account: Optional[str] = None,
    qos: Optional[str] = None,
    array_parallelism: Optional[int] = None,
    job_name: str = "paploss-trial",
    additional_parameters: Optional[Mapping[str, Any]] = None,
    setup: Optional[Sequence[str]] = None,
    signal_delay_s: Optional[int] = None,
    max_num_timeout: int = 3,
    python: Optional[str] = None,
) -> submitit.Executor:
    """Creates the submitit executor for one launcher kind.

    Args:
        kind: ``"debug"`` (in-process), ``"local"`` (one process per trial on this machine) or
            ``"slurm"`` (sbatch; a job array per round).
        folder: where submitit writes pickles and logs. Keep it stable for a search: jobs are
            re-attached from it after a restart. Must be on a file system the nodes share.
        timeout_min: time limit per job in minutes (Slurm ``--time``; local: the time after which
            the job gets the timeout signal). Default: 60 for Slurm, 24 h for local.
        gpus_per_node: GPUs per job (``--gpus-per-node``; local: ``CUDA_VISIBLE_DEVICES``).
        cpus_per_task: CPUs per job (``--cpus-per-task``). Slurm only.
        mem_gb: memory per job in GB (``--mem``). Slurm only.
        partition: Slurm partition. Slurm only.
        account: Slurm account (``--account``). Slurm only.
        qos: Slurm quality of service (``--qos``). Slurm only.
        array_parallelism: at most this many jobs of an array run at once (``--array=...%N``).
            Slurm only; the local launcher has its own ``parallel``.
        job_name: Slurm job name.
        additional_parameters: extra sbatch flags, e.g. ``{"constraint": "volta32gb",
            "exclusive": True}`` (underscores become dashes). They win over the options above.
        setup: shell lines run before the trial (e.g. ``module load cuda``). Slurm and local.
        signal_delay_s: seconds before the time limit at which the job is signalled to
            checkpoint and requeue itself (submitit's default: 90 on Slurm, 30 locally).
        max_num_timeout: how many times a job may be requeued after hitting its time limit
            (preemptions do not count).
        python: command that runs Python in the job (default: this interpreter).

    Returns:
        A ``submitit`` executor with those parameters.

    Raises:
        ValueError: for an unknown kind.
        LaunchError: for ``"slurm"`` when the Slurm client tools are not installed.
    """
    folder = Path(folder)
    if kind == "debug":
        return submitit.DebugExecutor(folder=folder)
    if kind == "local":
        executor = submitit.LocalExecutor(
            folder=folder, max_num_timeout=max_num_timeout, python=python
        )
        # submitit's local default is a 2-minute limit: far too short for a proxy training.
        params: Dict[str, Any] = {"timeout_min": 24 * 60 if timeout_min is None else timeout_min}
        if gpus_per_node:
            params["gpus_per_node"] = gpus_per_node
        if setup:
            params["setup"] = list(setup)
        if signal_delay_s is not None:
            params["signal_delay_s"] = signal_delay_s
        executor.update_parameters(**params)
        return executor
    if kind == "slurm":
        missing = missing_slurm_tools()
        if missing:
            raise LaunchError(missing)
        executor = submitit.SlurmExecutor(
            folder=folder, max_num_timeout=max_num_timeout, python=python
        )
        extra: Dict[str, Any] = {"requeue": True}  # `scontrol requeue` needs a requeueable job
        extra.update(additional_parameters or {})
        params = {
            "job_name": job_name,
            "time": max(1, int(round(60 if timeout_min is None else timeout_min))),
            "additional_parameters": extra,
        }
        optional = {
            "partition": partition,
            "cpus_per_task": cpus_per_task,
            "gpus_per_node": gpus_per_node or None,
            "mem": None if mem_gb is None else slurm_mem(mem_gb),
            "account": account,
            "qos": qos,
            "array_parallelism": array_parallelism,
            "setup": list(setup) if setup else None,
            "signal_delay_s": signal_delay_s,
        }
        params.update({key: value for key, value in optional.items() if value is not None})
        executor.update_parameters(**params)
        return executor
    raise ValueError(f"unknown launcher kind {kind!r}; expected one of {', '.join(LAUNCHER_KINDS)}")


def check_launcher(kind: str, timeout_s: float = 15.0) -> None:
    """Checks quickly that trials of ``kind`` can be submitted now; writes nothing.

    For ``"slurm"``: the client tools are installed, ``SLURM_CONF`` (when set) names a file, and
    the Slurm controller answers ``scontrol ping`` within ``timeout_s``. The other kinds need
    nothing.

    Raises:
        ValueError: for an unknown kind.
        LaunchError: saying what is missing, in one line.
    """
    if kind not in LAUNCHER_KINDS:
        raise ValueError(
            f"unknown launcher kind {kind!r}; expected one of {', '.join(LAUNCHER_KINDS)}"
        )
    if kind != "slurm":
        return
    missing = missing_slurm_tools()
    if missing:
        raise LaunchError(missing)
    conf = os.environ.get("SLURM_CONF")
    if conf and not os.path.isfile(conf):
        # The Slurm tools would retry reading it for a minute.
        raise LaunchError(f"SLURM_CONF={conf} does not exist: {SLURM_INSTALL_HINT}")
    try:
        proc = subprocess.run(
            ["scontrol", "ping"], capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        raise LaunchError(
            f"the Slurm controller did not answer `scontrol ping` within {timeout_s:g} s "
            f"({slurm_environment_summary()}): {SLURM_INSTALL_HINT}"
        ) from None
    except OSError as exc:
        raise LaunchError(f"cannot run scontrol ({exc}): {SLURM_INSTALL_HINT}") from None
    if proc.returncode != 0 or " is UP" not in proc.stdout:
        said = error_summary(proc.stdout + "\n" + proc.stderr) or f"exit code {proc.returncode}"
        raise LaunchError(
            f"no Slurm controller answers (scontrol ping: {said}; {slurm_environment_summary()})"
            f": {SLURM_INSTALL_HINT}"
        )


# --------------------------------------------------------------------------------------------
# Trials
# --------------------------------------------------------------------------------------------


class CheckpointableTrial(submitit.helpers.Checkpointable):
    """A trial ``fn(spec)`` that submitit requeues on time-out or preemption.

    On the signal that precedes a time-out or a preemption, submitit calls :meth:`checkpoint`,
    stores the returned submission and requeues the job. The re-run calls ``fn(spec)`` again; the
    trial function resumes from the checkpoint it keeps in its own folder (and returns its stored
    result at once if it had finished). Nothing of the interrupted process is pickled besides
    ``fn``, ``spec`` and the requeue count.

    Args:
        fn: the trial function; must be picklable (a module-level function or a picklable
            callable object).
        spec: its argument, picklable.
    """

    def __init__(self, fn: Callable[[Any], Any], spec: Any) -> None:
        self.fn = fn
        self.spec = spec
        self.requeues = 0

    def __call__(self) -> Any:
        return self.fn(self.spec)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Returns the submission that re-runs this trial after a requeue."""
        resumed = CheckpointableTrial(self.fn, self.spec)
        resumed.requeues = self.requeues + 1
        return DelayedSubmission(resumed, *args, **kwargs)

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", type(self.fn).__name__)
        return f"CheckpointableTrial({name}, requeues={self.requeues})"


@dataclass
class TrialOutcome:
    """How one job ended.

    Attributes:
        index: position of the trial in the submitted (or attached) sequence.
        job_id: the scheduler's job id (``"<array id>_<task>"`` for an array task).
        ok: whether the trial function returned.
        result: what it returned (None when not ``ok``).
        error: for a failed job, the trial's traceback or the scheduler's account of the crash.
    """

    index: int
    job_id: Optional[str]
    ok: bool
    result: Any = None
    error: Optional[str] = None

    @property
    def message(self) -> str:
        """One line about the failure (see :func:`error_summary`), or ``""``."""
        return error_summary(self.error or "")


class TrialHandle:
    """A submitted trial; its outcome is filled in by :class:`TrialLauncher` when it finishes."""

    def __init__(
        self,
        index: int,
        kind: str,
        job: Optional["submitit.Job[Any]"] = None,
        trial: Optional[CheckpointableTrial] = None,
    ) -> None:
        self.index = index
        self.kind = kind
        self.job = job
        self.outcome: Optional[TrialOutcome] = None
        self._trial = trial  # not yet submitted (local launcher waiting for a free slot)
        self._final_since: Optional[float] = None  # scheduler says final, result not seen yet
        self._final_state: Optional[str] = None
        #: Wall-clock time (``time.time()``) just before the job was submitted; None while
        #: waiting, or for an attached job whose submission time is not known.
        self.submitted_at: Optional[float] = None

    @property
    def job_id(self) -> Optional[str]:
        """The scheduler's job id; None while a local trial waits for a free slot."""
        return None if self.job is None else self.job.job_id

    @property
    def done(self) -> bool:
        """Whether the outcome is known."""
        return self.outcome is not None

    @property
    def status(self) -> str:
        """``"waiting"`` (not submitted yet), ``"submitted"``, ``"succeeded"`` or ``"failed"``."""
        if self.outcome is not None:
            return "succeeded" if self.outcome.ok else "failed"
        return "waiting" if self.job is None else "submitted"

    @property
    def log_paths(self) -> List[Path]:
        """stdout and stderr files of the job (they may not exist yet)."""
        if self.job is None:
            return []
        return [self.job.paths.stdout, self.job.paths.stderr]

    def __repr__(self) -> str:
        return f"TrialHandle(index={self.index}, job_id={self.job_id}, status={self.status})"


ProgressCallback = Callable[[TrialOutcome, int, int], None]


def launcher_options(settings: LauncherSettings) -> Dict[str, Any]:
    """The keyword arguments of :class:`TrialLauncher` (all but ``kind`` and ``folder``) that
    the ``launcher`` section of the search settings sets.

    Args:
        settings: the search's launcher settings; the Slurm options only for ``kind: slurm``.
    """
    options: Dict[str, Any] = {
        "parallel": settings.parallel,
        "poll_interval_s": settings.poll_interval_s,
        "timeout_min": settings.timeout_min,
        "gpus_per_node": settings.gpus_per_node,
        "max_num_timeout": settings.max_num_timeout,
        "setup": list(settings.setup) or None,
    }
    if settings.kind == "slurm":
        options.update(
            partition=settings.partition,
            account=settings.account,
            qos=settings.qos,
            cpus_per_task=settings.cpus_per_task,
            mem_gb=settings.mem_gb,
            array_parallelism=settings.array_parallelism,
            additional_parameters=dict(settings.additional_parameters) or None,
            scheduler_poll_s=min(10.0, max(settings.poll_interval_s, 1.0)),
        )
    return options


class TrialLauncher:
    """Submits rounds of trials and collects their outcomes.

    Args:
        kind: ``"debug"``, ``"local"`` or ``"slurm"``.
        folder: submitit folder for pickles and logs (stable across controller restarts).
        parallel: local launcher only: how many trials run at once, counting every job of this
            launcher whose outcome is not known yet (re-attached ones included).
        poll_interval_s: pause between checks for results.
        scheduler_poll_s: Slurm only: minimal pause between two ``squeue`` calls.
        result_grace_s: how long a job that the scheduler reports as ended may take to show
            its result file (shared file systems lag) before it counts as crashed.
        **executor_options: passed to :func:`make_executor`.
    """

    def __init__(
        self,
        kind: str,
        folder: Union[str, Path],
        *,
        parallel: int = 1,
        poll_interval_s: float = 1.0,
        scheduler_poll_s: float = 10.0,
        result_grace_s: float = 15.0,
        **executor_options: Any,
    ) -> None:
        if kind not in LAUNCHER_KINDS:
            raise ValueError(
                f"unknown launcher kind {kind!r}; expected one of {', '.join(LAUNCHER_KINDS)}"
            )
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {parallel}")
        self.kind = kind
        self.folder = Path(folder).expanduser().absolute()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.parallel = parallel
        self.poll_interval_s = poll_interval_s
        self.scheduler_poll_s = scheduler_poll_s
        self.result_grace_s = result_grace_s
        self.executor = make_executor(kind, self.folder, **executor_options)
        self._slurm_states: Dict[str, str] = {}
        self._last_squeue = float("-inf")
        self._live: List[TrialHandle] = []  # local jobs started or attached, outcome unknown

    # ---------------------------------------------------------------------------- submission

    def submit(self, fn: Callable[[Any], Any], specs: Sequence[Any]) -> List[TrialHandle]:
        """Submits one round: ``fn(spec)`` for every spec (one Slurm job array).

        Args:
            fn: the trial function (picklable; see :class:`CheckpointableTrial`).
            specs: one picklable spec per trial.

        Returns:
            One handle per spec, in order. Slurm and started local jobs carry their job id.

        Raises:
            LaunchError: when the scheduler rejects the submission.
        """
        trials = [CheckpointableTrial(fn, spec) for spec in specs]
        if not trials:
            return []
        if self.kind == "local":
            handles = [TrialHandle(i, self.kind, trial=t) for i, t in enumerate(trials)]
            self._start_waiting(handles)
            return handles
        submitted_at = time.time()
        try:
            jobs = self.executor.submit_array(trials)
        except Exception as e:  # sbatch's own message says what is wrong
            where = f" ({slurm_environment_summary()})" if self.kind == "slurm" else ""
            raise LaunchError(
                f"submitting {len(trials)} trial(s) with the {self.kind!r} launcher failed{where}:"
                f" {e}"
            ) from e
        handles = [TrialHandle(i, self.kind, job=job) for i, job in enumerate(jobs)]
        for handle in handles:
            handle.submitted_at = submitted_at
        return handles

    def attach(
        self,
        job_ids: Sequence[Optional[str]],
        submitted_at: Optional[Sequence[Optional[float]]] = None,
    ) -> List[TrialHandle]:
        """Rebuilds handles for jobs submitted earlier from :attr:`folder` (after a restart).

        Args:
            job_ids: job ids as stored by the controller, in trial order.
            submitted_at: for each job, the :attr:`TrialHandle.submitted_at` it had (None where
                unknown). A local job's result file older than that was left by an earlier job
                with the same process id, and is ignored.

        Returns:
            One handle per id, with ``index`` the position in ``job_ids``. A job that neither
            runs any more nor left a result is reported failed by the next poll, so the
            controller launches it again. Local jobs count towards ``parallel`` until their
            outcome is known.

        Raises:
            ValueError: for the debug launcher, whose jobs live only in the process that ran them,
                or an empty job id.
        """
        if self.kind == "debug":
            raise ValueError("debug jobs cannot be re-attached: launch the trials again")
        if submitted_at is not None and len(submitted_at) != len(job_ids):
            raise ValueError("submitted_at must give one time per job id")
        handles = []
        for index, job_id in enumerate(job_ids):
            if not job_id:
                raise ValueError(f"job id #{index} is empty: launch that trial again instead")
            job_id = str(job_id)
            if self.kind == "slurm":
                job: "submitit.Job[Any]" = submitit.SlurmJob(folder=self.folder, job_id=job_id)
            else:
                job = submitit.LocalJob(folder=self.folder, job_id=job_id)
            handle = TrialHandle(index, self.kind, job=job)
            handle.submitted_at = None if submitted_at is None else submitted_at[index]
            handles.append(handle)
        if self.kind == "local":
            self._live.extend(handles)
        return handles

    def cancel(self, handles: Iterable[TrialHandle]) -> None:
        """Cancels unfinished trials (those waiting for a slot are dropped)."""
        pending = [h for h in handles if not h.done]
        slurm_ids = []
        for handle in pending:
            if handle.job is None or self.kind == "debug":
                handle._trial = None
                handle.outcome = TrialOutcome(handle.index, handle.job_id, False, error="cancelled")
            elif self.kind == "slurm":
                slurm_ids.append(handle.job_id)
            else:
                handle.job.cancel(check=False)
        if slurm_ids:
            subprocess.run(["scancel", *slurm_ids], check=False, capture_output=True)

    # ---------------------------------------------------------------------------- collection

    def poll(self, handles: Sequence[TrialHandle]) -> List[TrialOutcome]:
        """Checks unfinished handles once; returns the outcomes that became known.

        The debug launcher runs (at most) one trial per call, in this process.
        """
        newly: List[TrialOutcome] = []
        if self.kind == "debug":
            for handle in handles:
                if not handle.done:
                    newly.append(self._run_debug(handle))
                    break
            return newly
        if self.kind == "local":
            self._start_waiting(handles)
        running = [h for h in handles if not h.done and h.job is not None]
        states: Optional[Dict[str, str]] = None
        if self.kind == "slurm" and any(not self._result_ready(h) for h in running):
            states = self._query_slurm([h.job_id for h in running if h.job_id])
        for handle in running:
            outcome = self._check(handle, states)
            if outcome is not None:
                handle.outcome = outcome
                newly.append(outcome)
        if self.kind == "local" and newly:
            self._start_waiting(handles)
        return newly

    def as_completed(
        self, handles: Sequence[TrialHandle], timeout_s: Optional[float] = None
    ) -> Iterator[TrialOutcome]:
        """Yields outcomes as the trials finish (already finished ones first).

        Raises:
            TimeoutError: if trials are still unfinished after ``timeout_s`` seconds.
        """
        start = time.monotonic()
        for handle in handles:
            if handle.outcome is not None:
                yield handle.outcome
        while not all(h.done for h in handles):
            newly = self.poll(handles)
            yield from newly
            if all(h.done for h in handles):
                break
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                unfinished = [h for h in handles if not h.done]
                raise TimeoutError(
                    f"{len(unfinished)} of {len(handles)} trial(s) unfinished after {timeout_s:.0f}"
                    f" s: {', '.join(str(h.job_id or '(waiting)') for h in unfinished[:10])}"
                )
            if not newly:
                time.sleep(self.poll_interval_s)

    def wait(
        self,
        handles: Sequence[TrialHandle],
        callback: Optional[ProgressCallback] = None,
        timeout_s: Optional[float] = None,
    ) -> List[TrialOutcome]:
        """Waits for all trials; returns their outcomes in handle order.

        Args:
            handles: from :meth:`submit` or :meth:`attach`.
            callback: called as ``callback(outcome, n_done, n_total)`` after each trial finishes
                (e.g. to print "trials done k/n").
            timeout_s: give up (``TimeoutError``) after this many seconds.
        """
        n_done = sum(h.done for h in handles)
        already = {id(h.outcome) for h in handles if h.outcome is not None}
        for outcome in self.as_completed(handles, timeout_s=timeout_s):
            if id(outcome) in already:
                continue
            n_done += 1
            if callback is not None:
                callback(outcome, n_done, len(handles))
        return [h.outcome for h in handles]  # type: ignore[misc]

    # ---------------------------------------------------------------------------- internals

    def running_jobs(self) -> int:
        """Local launcher: jobs started or attached whose outcome is not known yet."""
        self._live = [h for h in self._live if not h.done]
        return len(self._live)

    def _start_waiting(self, handles: Sequence[TrialHandle]) -> None:
        running = self.running_jobs()
        for handle in handles:
            if running >= self.parallel:
                break
            if handle.job is None and handle._trial is not None:
                handle.submitted_at = time.time()
                try:
                    handle.job = self.executor.submit(handle._trial)
                except Exception as e:
                    handle.submitted_at = None
                    raise LaunchError(f"starting a local trial failed: {e}") from e
                handle._trial = None
                self._live.append(handle)
                running += 1

    def _run_debug(self, handle: TrialHandle) -> TrialOutcome:
        assert handle.job is not None
        submission = handle.job.submission()
        saved = os.environ.get("SUBMITIT_DEBUG_JOB_ID")
        os.environ["SUBMITIT_DEBUG_JOB_ID"] = handle.job.job_id
        try:
            result = submission.result()
            outcome = TrialOutcome(handle.index, handle.job_id, True, result=result)
        except Exception:  # a failing trial is reported, not raised
            outcome = TrialOutcome(handle.index, handle.job_id, False, error=traceback.format_exc())
        finally:
            if saved is None:
                os.environ.pop("SUBMITIT_DEBUG_JOB_ID", None)
            else:
                os.environ["SUBMITIT_DEBUG_JOB_ID"] = saved
        handle.outcome = outcome
        return outcome

    def _result_ready(self, handle: TrialHandle) -> bool:
        """Whether the job's result file exists and was written by this job.

        A local job's file from before its submission is an earlier job's (process ids are
        reused). Slurm job ids do not come back soon, and a shared file system's times need not
        match this host's clock: there only the caller's check of the result applies.
        """
        if handle.job is None:
            return False
        path = handle.job.paths.result_pickle
        try:
            modified = path.stat().st_mtime
        except OSError:
            return False
        if self.kind == "local" and handle.submitted_at is not None:
            return modified >= handle.submitted_at
        return True

    def _check(
        self, handle: TrialHandle, slurm_states: Optional[Dict[str, str]]
    ) -> Optional[TrialOutcome]:
        job = handle.job
        assert job is not None
        if self._result_ready(handle):
            return self._read_result(handle)
        if self.kind == "slurm":
            if slurm_states is None:  # squeue did not answer this time: no news
                return None
            state = slurm_states.get(job.job_id)
            if state is not None and state.split()[0] in SLURM_ACTIVE_STATES:
                handle._final_since = None
                return None
            final_state = state or "no longer known to Slurm"
            grace_s = self.result_grace_s
        else:
            if _local_job_active(job):
                return None
            # A local job writes its result before its process exits, but the process may have
            # ended between the look for a result above and the look at the process.
            if self._result_ready(handle):
                return self._read_result(handle)
            final_state, grace_s = "process ended", 0.0
        now = time.monotonic()
        if handle._final_since is None:
            handle._final_since = now
            handle._final_state = final_state
            if grace_s > 0:
                return None
        if now - handle._final_since < grace_s:
            return None
        return TrialOutcome(
            handle.index, job.job_id, False, error=_crash_report(job, handle._final_state)
        )

    def _read_result(self, handle: TrialHandle) -> TrialOutcome:
        job = handle.job
        assert job is not None
        path = job.paths.result_pickle
        for attempt in range(3):
            try:
                status, value = pickle_load(path)
                break
            except (EOFError, OSError) as e:  # still being moved into place
                if attempt == 2:
                    return TrialOutcome(
                        handle.index, job.job_id, False, error=f"unreadable result {path}: {e}"
                    )
                time.sleep(1.0)
        if status == "success":
            return TrialOutcome(handle.index, job.job_id, True, result=value)
        return TrialOutcome(handle.index, job.job_id, False, error=str(value))

    def _query_slurm(self, job_ids: Sequence[str]) -> Optional[Dict[str, str]]:
        """States of the given jobs from one ``squeue`` call (cached for scheduler_poll_s)."""
        now = time.monotonic()
        if now - self._last_squeue < self.scheduler_poll_s and all(
            jid in self._slurm_states for jid in job_ids
        ):
            return self._slurm_states
        states = squeue_states(job_ids)
        if states is not None:
            self._slurm_states = states
            self._last_squeue = now
        return states


def _local_job_active(job: "submitit.Job[Any]") -> bool:
    state = job.get_info().get("jobState")
    if state == "RUNNING":
        return True
    if getattr(job, "_process", None) is None:
        # Re-attached after a restart: the local job id is the pid of submitit's job controller.
        # (submitit calls such a job finished as soon as a result file exists, which may be an
        # earlier job's: look at the process itself.)
        try:
            proc = Path("/proc") / str(int(job.job_id))
            # "pid (comm) S ...": a zombie (Z) or dead (X) process no longer runs the job.
            if proc.joinpath("stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X"):
                return False
            cmdline = proc.joinpath("cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return False
        # The command line reads empty for an instant while a process is being exec'd.
        return not cmdline or b"submitit.local._local" in cmdline
    return False


def _tail(path: Path, n_lines: int = 30) -> str:
    try:
        with open(path, "r", errors="replace") as f:
            return "".join(f.readlines()[-n_lines:])
    except OSError:
        return ""


def _crash_report(job: "submitit.Job[Any]", state: Optional[str]) -> str:
    lines = [f"job {job.job_id} ended without a result ({state})"]
    for path in (job.paths.stderr, job.paths.stdout):
        text = _tail(path).rstrip()
        if text:
            lines += [f"--- end of {path} ---", text]
            break
    else:
        lines.append(f"no log at {job.paths.stdout}")
    return "\n".join(lines)
