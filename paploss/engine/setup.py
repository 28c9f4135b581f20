"""Building a frozen Detectron2 config with paploss's keys and datasets."""

from typing import Optional, Sequence

from detectron2.config import CfgNode, get_cfg

__all__ = ["load_config", "setup_cfg"]


def load_config(config_file: Optional[str] = None, opts: Sequence = ()) -> CfgNode:
    """A config with paploss's keys, merged from ``config_file`` and ``opts`` (not frozen).

    Importing :mod:`paploss.modeling` here registers the heads and the tiny backbones, and
    :mod:`paploss.data` registers the synthetic dataset, so any name a config uses resolves.

    Raises:
        FileNotFoundError: if ``config_file`` does not exist.
        ValueError: naming the source and the key when a key does not exist or a value has the
            wrong type.
    """
    import os

    import paploss.data  # noqa: F401  (registers the synthetic splits)
    import paploss.modeling  # noqa: F401  (registers heads and backbones)
    from paploss.modeling.config import add_paploss_config

    cfg = get_cfg()
    add_paploss_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file '{config_file}' does not exist")
        _merge(cfg.merge_from_file, config_file, f"config file '{config_file}'")
    _merge(cfg.merge_from_list, list(opts), "command-line overrides")
    return cfg


def _merge(merge, source, description: str) -> None:
    # yacs reports unknown keys and type mismatches with bare assertions.
    try:
        merge(source)
    except (AssertionError, KeyError, TypeError) as e:
        raise ValueError(f"{description}: {e}") from e


def setup_cfg(config_file: Optional[str] = None, opts: Sequence = ()) -> CfgNode:
    """:func:`load_config`, then register ``MODEL.PAPLOSS.DATASETS``, check dataset names, freeze.

    Raises:
        paploss.data.DatasetError: naming an unknown dataset in ``DATASETS.TRAIN``/``TEST``.
    """
    from paploss.data import check_dataset_names, register_datasets_from_config

    cfg = load_config(config_file, opts)
    register_datasets_from_config(cfg.MODEL.PAPLOSS.DATASETS)
    check_dataset_names(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
    check_dataset_names(cfg.DATASETS.TEST, "DATASETS.TEST")
    cfg.freeze()
    return cfg
