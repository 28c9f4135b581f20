"""The proxy training's Detectron2 config, from the search settings.

* :func:`proxy_config_opts`: the config keys ``proxy`` sets (data, schedule, seed, output folder,
  then ``proxy.opts``), as ``cfg.merge_from_list`` takes them. A trial adds its start weights and
  the candidate's ``MODEL.PAPLOSS`` values (:meth:`~paploss.search.trials.runner.TrialSpec.
  config_opts`); the screening records its batch with a config set up the same way.
* :func:`check_reward_task`: whether the model can be scored by ``proxy.reward_task``.
* :func:`early_stop_hook`: the training hook of ``screening.early_stop``.

Nothing here imports Detectron2 or torch when the module is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional

from paploss.search.settings import EarlyStopSettings, ProxySettings, SettingsError

if TYPE_CHECKING:  # pragma: no cover
    from paploss.engine.hooks import InvalidTrainingHook

__all__ = ["proxy_config_opts", "check_reward_task", "early_stop_hook"]


def proxy_config_opts(proxy: ProxySettings, seed: int, output_dir: str) -> List[Any]:
    """The config overrides of a proxy training: its data, schedule, seed and output folder.

    ``SOLVER.STEPS`` comes from ``proxy.lr_step_fractions`` unless ``proxy.opts`` sets it;
    ``proxy.opts`` comes last.

    Args:
        proxy: the search's proxy settings.
        seed: the training seed (``SEED``).
        output_dir: the training's ``OUTPUT_DIR``.

    Returns:
        ``[key, value, ...]`` for ``cfg.merge_from_list``.
    """
    opts: List[Any] = [
        "DATASETS.TRAIN",
        (proxy.train_dataset,),
        "DATASETS.TEST",
        (proxy.val_dataset,),
        "SOLVER.MAX_ITER",
        proxy.iterations,
        "SOLVER.IMS_PER_BATCH",
        proxy.ims_per_batch,
        "SOLVER.CHECKPOINT_PERIOD",
        proxy.checkpoint_period,
        "TEST.EVAL_PERIOD",
        0,
        "SEED",
        int(seed),
        "OUTPUT_DIR",
        output_dir,
    ]
    if "SOLVER.STEPS" not in proxy.opts:
        steps = sorted({max(1, int(round(f * proxy.iterations))) for f in proxy.lr_step_fractions})
        opts += ["SOLVER.STEPS", tuple(s for s in steps if s < proxy.iterations)]
    for key, value in proxy.opts.items():
        opts += [key, value]
    return opts


def check_reward_task(proxy: ProxySettings, cfg: Any, config_file: str) -> None:
    """Check that the model can be scored by ``proxy.reward_task``.

    Args:
        proxy: the search's proxy settings (``proxy.opts`` may still override the model's
            ``MODEL.MASK_ON``).
        cfg: the searched model's Detectron2 config.
        config_file: the file ``cfg`` was read from (for the message).

    Raises:
        SettingsError: for ``reward_task: segm`` on a model without a mask branch.
    """
    mask_on = proxy.opts.get("MODEL.MASK_ON", cfg.MODEL.MASK_ON)
    if proxy.reward_task == "segm" and str(mask_on).lower() != "true":
        raise SettingsError(
            f"proxy.reward_task: 'segm' (mask AP) needs a model with a mask branch, but "
            f"MODEL.MASK_ON is {mask_on} for '{config_file}'"
        )


def early_stop_hook(early_stop: EarlyStopSettings) -> Optional["InvalidTrainingHook"]:
    """The hook that stops a proxy training whose loss is invalid, or None when disabled.

    Args:
        early_stop: the search's ``screening.early_stop`` settings.
    """
    if not early_stop.enabled:
        return None
    from paploss.engine.hooks import InvalidTrainingHook

    return InvalidTrainingHook(
        window=early_stop.window,
        tolerance=early_stop.tolerance,
        check_predictions=early_stop.check_predictions,
    )
