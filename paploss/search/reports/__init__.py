"""Reports on a search journal: status tables, the exported config, plots.

The names below load from their modules on first access.
"""

from paploss.utils.lazy import lazy_exports

_LAZY = {
    "RoundSummary": "status",
    "round_summaries": "status",
    "format_status": "status",
    "result_file_problem": "status",
    "EXPORT_CHOICES": "status",
    "ExportResult": "status",
    "export_config": "status",
    "round_overrides": "status",
    "space_from_journal": "status",
    "plot_rewards": "status",
    "plot_functions": "status",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
