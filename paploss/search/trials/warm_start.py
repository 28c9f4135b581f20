"""The warm start of a search's proxy trainings (``proxy.warm_start``).

With ``proxy.warm_start.iterations > 0`` the searched model is first trained once with the stock
loss (``proxy.warm_start.loss``) on the proxy's training split, and every proxy training starts
from that checkpoint. It is an ordinary trial (:func:`paploss.search.trials.run_trial`) in the
search folder's ``warm_start/``: resumable, run by the search's launcher, trained once and reused
by every later round and by a resumed search. Its bbox AP on the proxy validation split is the
level the candidates' fine-tunings start from.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Tuple

from paploss.search.settings import ProxySettings, WarmStartSettings
from paploss.search.trials.runner import TRAIN_DIR, TrialSpec

__all__ = ["WARM_START_FOLDER", "warm_start_spec", "warm_start_weights"]

#: Folder of the warm-start trial inside a search's output folder.
WARM_START_FOLDER = "warm_start"
#: Trial id of the warm-start trial.
WARM_START_TRIAL_ID = "warm_start"


def warm_start_spec(
    proxy: ProxySettings,
    config_file: str,
    output_dir: str,
    datasets_root: Optional[str] = None,
    imports: Tuple[str, ...] = (),
    python_path: Tuple[str, ...] = (),
) -> Optional[TrialSpec]:
    """The trial that trains the warm-start checkpoint, or None without a warm start.

    Args:
        proxy: the search's proxy settings (``proxy.warm_start`` says what differs).
        config_file: the searched model's config file.
        output_dir: the warm-start trial's folder (``<search>/warm_start``).
        datasets_root: where datasets are generated/cached.
        imports, python_path: the search's ``model.imports`` and ``model.python_path``.
    """
    settings = proxy.warm_start
    if not settings.enabled:
        return None
    opts = {**proxy.opts, **settings.opts, "MODEL.PAPLOSS.LOSS": settings.loss}
    training = dataclasses.replace(
        proxy,
        iterations=settings.iterations,
        ims_per_batch=settings.ims_per_batch,
        opts=opts,
        keep_checkpoints=True,
        warm_start=WarmStartSettings(),
    )
    return TrialSpec(
        trial_id=WARM_START_TRIAL_ID,
        round=0,
        index=0,
        theta=(),
        overrides={},
        config_file=config_file,
        seed=settings.seed,
        proxy=training,
        output_dir=output_dir,
        datasets_root=datasets_root,
        early_stop=None,
        imports=tuple(imports),
        python_path=tuple(python_path),
    )


def warm_start_weights(spec: TrialSpec) -> str:
    """The final checkpoint of the warm-start trial ``spec`` (once it is done)."""
    return os.path.join(spec.output_dir, TRAIN_DIR, "model_final.pth")
