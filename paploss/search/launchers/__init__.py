"""Where trials run: in the controller's process, local processes or Slurm job arrays
(through submitit).

* :mod:`~paploss.search.launchers.trial_launcher`: :class:`TrialLauncher` submits a round of
  trials and collects their outcomes; :func:`check_launcher` tells at once whether a kind can run.
* :mod:`~paploss.search.launchers.slurm`: job states from ``squeue``, the Slurm client tools.

The job a process runs in and its distributed port are :mod:`paploss.utils.jobs` (a trial's job
process needs them, not submitit). The names below load from their modules on first access.
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
    "launcher_options": "trial_launcher",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
