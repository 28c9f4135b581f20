"""The warm start of a search (``proxy.warm_start``): the checkpoint every proxy training starts
from, trained once before the first round (or reused when its folder holds it).

The training itself is an ordinary trial (:mod:`paploss.search.trials.warm_start` makes its
spec), run on the search's launcher.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Optional

from paploss.search.errors import SearchError
from paploss.search.launchers.trial_launcher import TrialLauncher
from paploss.search.output import SearchOutput
from paploss.search.settings import SearchSettings
from paploss.search.trials.runner import TrialFunction
from paploss.search.trials.warm_start import WARM_START_FOLDER, warm_start_spec, warm_start_weights

__all__ = ["prepare_warm_start"]

logger = logging.getLogger(__name__)


def prepare_warm_start(
    settings: SearchSettings,
    output: SearchOutput,
    datasets_root: Optional[str],
    make_launcher: Callable[[], TrialLauncher],
    trial_fn: TrialFunction,
) -> Optional[str]:
    """Train (or reuse) the warm-start checkpoint of ``proxy.warm_start``.

    Args:
        settings: the search's settings.
        output: the search's output folder (the checkpoint's trial is its ``warm_start``).
        datasets_root: the datasets folder the trials use.
        make_launcher: the search's launcher (made on first use: not at all without a warm
            start).
        trial_fn: the search's trial function.

    Returns:
        The checkpoint's path, or None without a warm start.

    Raises:
        SearchError: when the warm-start training fails.
    """
    spec = warm_start_spec(
        settings.proxy,
        str(output.model_config),
        str(output.root / WARM_START_FOLDER),
        datasets_root,
        imports=settings.model.imports,
        python_path=settings.model.python_path,
    )
    if spec is None:
        return None
    weights = warm_start_weights(spec)
    logger.info(
        "warm start: training the searched model with the %s loss for %d iterations "
        "(once; every proxy training starts from it)",
        settings.proxy.warm_start.loss,
        spec.proxy.iterations,
    )
    launcher = make_launcher()
    (outcome,) = launcher.wait(launcher.submit(trial_fn, [spec]))
    result = outcome.result if outcome.ok else None
    if result is None or result.status != "done" or not os.path.isfile(weights):
        why = outcome.message if result is None else (result.reason or result.status)
        raise SearchError(f"the warm start in {spec.output_dir} did not finish: {why}")
    logger.info(
        "warm start: bbox AP %.2f on %s%s",
        result.reward,
        settings.proxy.val_dataset,
        " (reused)" if result.reused else "",
    )
    return weights
