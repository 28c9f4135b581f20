"""Search over PAP-loss parameters: search space, policy + PPO, trial journal, launchers,
proxy trials, the search controller and its reports.

Importing this package is cheap: the names below are loaded from their modules on first access
(the policy needs scipy, the search space the loss functions, trials Detectron2).
"""

import importlib
from typing import Any

__all__ = [
    "SearchSpace",
    "TruncatedNormalPolicy",
    "SigmaSchedule",
    "PPOConfig",
    "UpdateStats",
    "SearchJournal",
    "JournalError",
    "NewTrial",
    "TrialRecord",
    "RoundRecord",
    "ProxySettings",
    "TrialSpec",
    "TrialResult",
    "run_trial",
    "SearchSettings",
    "SettingsError",
    "load_settings",
    "SearchController",
    "SearchError",
    "export_config",
]

_LAZY = {
    "SearchSpace": "space",
    "TruncatedNormalPolicy": "policy",
    "SigmaSchedule": "policy",
    "PPOConfig": "policy",
    "UpdateStats": "policy",
    "SearchJournal": "journal",
    "JournalError": "journal",
    "NewTrial": "journal",
    "TrialRecord": "journal",
    "RoundRecord": "journal",
    "ProxySettings": "trial",
    "TrialSpec": "trial",
    "TrialResult": "trial",
    "run_trial": "trial",
    "SearchSettings": "settings",
    "SettingsError": "settings",
    "load_settings": "settings",
    "SearchController": "controller",
    "SearchError": "controller",
    "export_config": "report",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
