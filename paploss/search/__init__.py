"""Loss search: over PAP-loss parameters (``ppo``), or over loss graphs from scratch (``evolution``,
``random``). The flow of a search, one package or module per step::

    settings      the search's settings: their schema, one set of validators
    settings_loading
                  settings files (``_BASE_`` inheritance) and command-line overrides
    spaces/       what candidates are: flat θ ↔ ``MODEL.PAPLOSS`` config values (``pap``), or
                  loss graphs of the ROI head (``graph``)
    proposers/    the search method: proposes each round's candidates, learns from rewards
                  (PPO over θ; evolution and random search of loss graphs)
    screening/    rejects hopeless and duplicate candidates before any training
    trials/       one proxy training per candidate, scored by COCO bbox AP
    launchers/    runs trials in-process, as local processes or as Slurm job arrays
    journal       the durable record of rounds, trials and the method's state
    reports/      status tables, the exported config, plots
    steps/        what the round loop calls: warm start, waves of trials, retries, halving
    output        the layout of a search's output folder
    controller    the one orchestrator of the steps above: the round loop
    cli           ``paploss-search``

Importing this package is cheap: the names below are loaded from their modules on first access
(the policy needs scipy, the search space the loss functions, trials Detectron2).
"""

from paploss.utils.lazy import lazy_exports

_LAZY = {
    "SearchSpace": "spaces",
    "GraphLossSpace": "spaces",
    "Proposer": "proposers",
    "Candidate": "proposers",
    "ScoredCandidate": "proposers",
    "PROPOSER_REGISTRY": "proposers",
    "TruncatedNormalPolicy": "proposers",
    "UpdateStats": "proposers",
    "SearchJournal": "journal",
    "JournalError": "journal",
    "NewTrial": "journal",
    "TrialRecord": "journal",
    "RoundRecord": "journal",
    "TrialSpec": "trials",
    "TrialResult": "trials",
    "run_trial": "trials",
    "TrialLauncher": "launchers",
    "SearchSettings": "settings",
    "SettingsError": "settings",
    "ProxySettings": "settings",
    "SigmaSchedule": "settings",
    "PPOConfig": "settings",
    "ScreeningSettings": "settings",
    "load_settings": "settings_loading",
    "SearchController": "controller",
    "SearchError": "errors",
    "export_config": "reports",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
