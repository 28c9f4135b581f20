"""Reports on a search: its settings in a few lines, and its journal, which the reports read only
(no Detectron2, no running search needed).

* :mod:`~paploss.search.reports.summary`: the search's settings in a few lines (its log).
* :mod:`~paploss.search.reports.status`: the table of rounds and trials (``paploss-search status``).
* :mod:`~paploss.search.reports.export`: the searched loss as a ready-to-train Detectron2
  config (``paploss-search export``).
* :mod:`~paploss.search.reports.plots`: reward per round and the searched functions as PNG files
  (``paploss-search plot``).

The names below load from their modules on first access.
"""

from paploss.utils.lazy import lazy_exports

_LAZY = {
    "RoundSummary": "status",
    "round_summaries": "status",
    "format_status": "status",
    "result_file_problem": "status",
    "search_method": "status",
    "EXPORT_CHOICES": "export",
    "ExportResult": "export",
    "export_config": "export",
    "round_overrides": "export",
    "space_from_journal": "export",
    "settings_summary": "summary",
    "screening_summary": "summary",
    "plot_rewards": "plots",
    "plot_functions": "plots",
    "write_plots": "plots",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
