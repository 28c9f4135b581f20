"""Trials: one short proxy training of a candidate loss, scored by COCO AP (``proxy.reward_task``:
box AP, or mask AP for a Mask R-CNN).

* :mod:`~paploss.search.trials.runner`: the picklable trial spec, its result and
  :func:`run_trial`, which a launcher runs in a job (idempotent: resumes, reuses, never trains a
  folder twice).
* :mod:`~paploss.search.trials.proxy`: the Detectron2 trainer of a proxy training.
* :mod:`~paploss.search.trials.warm_start`: the checkpoint every proxy training of a search can
  start from (``proxy.warm_start``).
* :mod:`~paploss.search.trials.proxy_config`: the proxy training's Detectron2 config keys, the
  check of its reward task against the model, its early-stop hook (from the search settings).

The names below load from their modules on first access.
"""

from paploss.utils.lazy import lazy_exports

_LAZY = {
    "TRIAL_RESULT_STATUSES": "runner",
    "TrialSpec": "runner",
    "TrialResult": "runner",
    "TrialFolderError": "runner",
    "TrialFunction": "runner",
    "run_trial": "runner",
    "load_result": "runner",
    "read_starts": "runner",
    "remove_checkpoints": "runner",
    "ProxyTrainer": "proxy",
    "proxy_config_opts": "proxy_config",
    "check_reward_task": "proxy_config",
    "early_stop_hook": "proxy_config",
    "WARM_START_FOLDER": "warm_start",
    "warm_start_spec": "warm_start",
    "warm_start_weights": "warm_start",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
