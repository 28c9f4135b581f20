"""Where trials run: in the controller's process, local processes or Slurm job arrays
(through submitit).

* :mod:`~paploss.search.launchers.trial_launcher`: :class:`TrialLauncher` submits a round of
  trials and collects their outcomes; job ids and the distributed port of a job.
"""

from .trial_launcher import (
    LAUNCHER_KINDS,
    CheckpointableTrial,
    LaunchError,
    TrialHandle,
    TrialLauncher,
    TrialOutcome,
    check_launcher,
    current_job_id,
    distributed_port,
    distributed_url,
    error_summary,
    make_executor,
)

__all__ = [
    "LAUNCHER_KINDS",
    "CheckpointableTrial",
    "LaunchError",
    "TrialHandle",
    "TrialLauncher",
    "TrialOutcome",
    "check_launcher",
    "current_job_id",
    "distributed_port",
    "distributed_url",
    "error_summary",
    "make_executor",
]
