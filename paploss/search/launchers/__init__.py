"""Where trials run: in the controller's process, local processes or Slurm job arrays
(through submitit).

* :mod:`~paploss.search.launchers.trial_launcher`: :class:`TrialLauncher` submits a round of
  trials and collects their outcomes; :func:`check_launcher` tells at once whether a kind can run.
* :mod:`~paploss.search.launchers.slurm`: job states from ``squeue``, the Slurm client tools.
* :mod:`~paploss.search.launchers.jobs`: the job a process runs in, and its distributed port.

The names below load from their modules on first access (a trial's job process needs only
:mod:`~paploss.search.launchers.jobs`, not submitit).
"""

from paploss.utils.lazy import lazy_exports

_LAZY = {
    "LAUNCHER_KINDS": "trial_launcher",
    "CheckpointableTrial": "trial_launcher",
    "LaunchError": "trial_launcher",
    "TrialHandle": "trial_launcher",
    "TrialLauncher": "trial_launcher",
    "TrialOutcome": "trial_launcher",
    "check_launcher": "trial_launcher",
    "error_summary": "trial_launcher",
    "make_executor": "trial_launcher",
    "current_job_id": "jobs",
    "distributed_port": "jobs",
    "distributed_url": "jobs",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
