"""The steps the search loop (:mod:`paploss.search.controller`) calls in a round, one module each.

* :mod:`~paploss.search.steps.warm_start`: the checkpoint every proxy training starts from
  (``proxy.warm_start``), trained once before the first round.
* :mod:`~paploss.search.steps.waves`: a wave of trials: launched or re-attached at once, each
  outcome recorded in the journal as it arrives.
* :mod:`~paploss.search.steps.retries`: trials without a result launched again up to
  ``search.max_attempts``; a round whose samples all failed retried on resume.
* :mod:`~paploss.search.steps.halving`: successive halving inside a round (``search.halving``).

The names below load from their modules on first access.
"""

from paploss.utils.lazy import lazy_exports

_LAZY = {
    "prepare_warm_start": "warm_start",
    "TrialWaves": "waves",
    "round_label": "waves",
    "retry_or_fail": "retries",
    "retry_unscorable_round": "retries",
    "PARTIAL_REWARD": "halving",
    "PARTIAL_ITERATIONS": "halving",
    "HALVING": "halving",
    "better_half": "halving",
    "partial_training_iterations": "halving",
    "selection_due": "halving",
    "select_halves": "halving",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
