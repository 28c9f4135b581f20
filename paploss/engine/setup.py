"""Building a frozen Detectron2 config with paploss's keys and datasets.

A config has paploss's keys and those of the projects that registered a config extension for its
meta-architecture (:func:`paploss.engine.extensions.register_config_extension`). Besides merging,
:func:`load_config` applies three rules that make a config fit the data it names (see
``docs/own_data.md``):

* relative ``json_file`` / ``image_root`` paths in ``MODEL.PAPLOSS.DATASETS`` resolve against the
  folder of the config file that sets them, as ``_BASE_`` paths do (paths given on the command
  line resolve against the working directory);
* a config file that does not set ``OUTPUT_DIR`` itself (nor the command line) writes to
  :func:`default_output_dir` of its path, never to a folder inherited from a ``_BASE_``;
* a non-empty ``MODEL.PAPLOSS.LR_STEP_FRACTIONS`` sets ``SOLVER.STEPS`` from ``SOLVER.MAX_ITER``
  (:func:`steps_from_fractions`) unless the command line sets ``SOLVER.STEPS``.
"""

import logging
import os
from typing import Any, List, Optional, Sequence, Tuple

import yaml
from detectron2.config import CfgNode, get_cfg

from .extensions import config_extensions

__all__ = [
    "default_output_dir",
    "load_config",
    "resolve_config_path",
    "setup_cfg",
    "steps_from_fractions",
]

logger = logging.getLogger(__name__)


def load_config(config_file: Optional[str] = None, opts: Sequence = ()) -> CfgNode:
    """A config with paploss's keys, merged from ``config_file`` and ``opts`` (not frozen).

    Importing :mod:`paploss.modeling` here registers the heads and the tiny backbones, and
    :mod:`paploss.data` registers the synthetic dataset, so any name a config uses resolves.
    The config extensions registered for the config's ``MODEL.META_ARCHITECTURE`` (as the
    overrides, else the file's ``_BASE_`` chain, set it) add their keys before the merge. Then
    the rules of this module's docstring are applied (dataset paths, ``OUTPUT_DIR``,
    ``SOLVER.STEPS``).

    Raises:
        FileNotFoundError: if ``config_file`` does not exist.
        ValueError: naming the source and the key when a key does not exist or a value has the
            wrong type, or when ``MODEL.PAPLOSS.LR_STEP_FRACTIONS`` is not a list of increasing
            fractions in (0, 1).
    """
    import paploss.data  # noqa: F401  (registers the synthetic splits)
    import paploss.modeling  # noqa: F401  (registers heads and backbones)
    from paploss.modeling.config import add_paploss_config

    cfg = get_cfg()
    add_paploss_config(cfg)
    if config_file and not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file '{config_file}' does not exist")
    for extend in config_extensions(_meta_architecture(cfg, config_file, opts)):
        extend(cfg)
    if config_file:
        _merge(cfg.merge_from_file, config_file, f"config file '{config_file}'")
    _merge(cfg.merge_from_list, list(opts), "command-line overrides")
    opt_keys = {str(key) for key in list(opts)[::2]}

    if config_file and "MODEL.PAPLOSS.DATASETS" not in opt_keys:
        source = _file_setting(config_file, ("MODEL", "PAPLOSS", "DATASETS"))
        if source is not None:
            cfg.MODEL.PAPLOSS.DATASETS = [
                _resolve_dataset_entry(entry, source) for entry in cfg.MODEL.PAPLOSS.DATASETS
            ]
    if config_file and "OUTPUT_DIR" not in opt_keys:
        if _file_setting(config_file, ("OUTPUT_DIR",), follow_base=False) is None:
            derived = default_output_dir(config_file)
            if cfg.OUTPUT_DIR != derived:
                logger.info(
                    "%s does not set OUTPUT_DIR; writing to %s (not to the inherited %s)",
                    config_file,
                    derived,
                    cfg.OUTPUT_DIR,
                )
            cfg.OUTPUT_DIR = derived
    fractions = list(cfg.MODEL.PAPLOSS.LR_STEP_FRACTIONS)
    if fractions and "SOLVER.STEPS" not in opt_keys:
        cfg.SOLVER.STEPS = steps_from_fractions(fractions, cfg.SOLVER.MAX_ITER)
    return cfg


def _meta_architecture(cfg: CfgNode, config_file: Optional[str], opts: Sequence) -> str:
    """``MODEL.META_ARCHITECTURE`` as the merge will set it: the last override, else the value
    of the nearest file of ``config_file``'s ``_BASE_`` chain, else ``cfg``'s default."""
    opts = list(opts)
    for key, value in reversed(list(zip(opts[::2], opts[1::2]))):
        if str(key) == "MODEL.META_ARCHITECTURE":
            return str(value)
    if config_file:
        found = _find_setting(config_file, ("MODEL", "META_ARCHITECTURE"))
        if found is not None:
            return str(found[1])
    return cfg.MODEL.META_ARCHITECTURE


def _merge(merge, source, description: str) -> None:
    # yacs reports unknown keys and type mismatches with bare assertions.
    try:
        merge(source)
    except (AssertionError, KeyError, TypeError) as e:
        raise ValueError(f"{description}: {e}") from e


def _resolve_dataset_entry(entry: Any, config_file: str) -> Any:
    """``[name, json_file, image_root]`` with both paths resolved against ``config_file`` (a
    malformed entry is returned as it is, for the registration to report)."""
    if (
        isinstance(entry, (list, tuple))
        and len(entry) == 3
        and all(isinstance(x, str) for x in entry)
    ):
        return [
            entry[0],
            resolve_config_path(entry[1], config_file),
            resolve_config_path(entry[2], config_file),
        ]
    return entry


def resolve_config_path(path: str, config_file: str) -> str:
    """``path`` as written in ``config_file``: ``~`` expanded, relative paths joined to the file's
    folder (as Detectron2 resolves ``_BASE_``), absolute paths unchanged."""
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(config_file)), path))


def default_output_dir(config_file: str) -> str:
    """``output/<folder of the config>/<config name>``, e.g. ``configs/own_data/trees.yaml`` →
    ``output/own_data/trees`` (relative to the working directory, like the shipped configs)."""
    path = os.path.abspath(config_file)
    folder = os.path.basename(os.path.dirname(path))
    return os.path.join("output", folder, os.path.splitext(os.path.basename(path))[0])


def steps_from_fractions(fractions: Sequence[float], max_iter: int) -> Tuple[int, ...]:
    """``SOLVER.STEPS`` at ``fractions`` of ``max_iter``: rounded, at least 1, below ``max_iter``.

    Raises:
        ValueError: if ``fractions`` are not increasing numbers in (0, 1).
    """
    values = list(fractions)
    if not all(isinstance(f, (int, float)) and 0 < f < 1 for f in values) or values != sorted(
        values
    ):
        raise ValueError(
            "MODEL.PAPLOSS.LR_STEP_FRACTIONS must be increasing fractions in (0, 1), "
            f"got {values}"
        )
    steps = sorted({max(1, int(round(f * max_iter))) for f in values})
    return tuple(s for s in steps if s < max_iter)


def _file_setting(
    config_file: str, keys: Tuple[str, ...], follow_base: bool = True
) -> Optional[str]:
    """The file of ``config_file``'s ``_BASE_`` chain whose value of ``keys`` the merge keeps
    (the one nearest to ``config_file`` that sets it), or None."""
    found = _find_setting(config_file, keys, follow_base)
    return None if found is None else found[0]


def _find_setting(
    config_file: str, keys: Tuple[str, ...], follow_base: bool = True
) -> Optional[Tuple[str, Any]]:
    """``(file, value)`` of the nearest file of ``config_file``'s ``_BASE_`` chain that sets
    ``keys``, or None."""
    seen: List[str] = []
    path: Optional[str] = config_file
    while path is not None and path not in seen and os.path.isfile(path):
        seen.append(path)
        with open(path) as f:
            content: Any = yaml.safe_load(f) or {}
        node = content
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            return path, node
        base = content.get("_BASE_") if isinstance(content, dict) and follow_base else None
        path = resolve_config_path(base, path) if isinstance(base, str) else None
    return None


def setup_cfg(
    config_file: Optional[str] = None, opts: Sequence = (), validate: bool = True
) -> CfgNode:
    """:func:`load_config`, register ``MODEL.PAPLOSS.DATASETS``, check dataset names, validate the
    config against its data (:func:`paploss.engine.validation.validate_config_data`), freeze.

    Args:
        config_file: YAML config file.
        opts: command-line style ``[key, value, ...]`` overrides.
        validate: load every dataset of ``DATASETS.TRAIN`` and ``DATASETS.TEST`` and check it
            against the config (class counts, images, category ids), logging the findings.

    Raises:
        paploss.data.DatasetError: naming an unknown dataset in ``DATASETS.TRAIN``/``TEST``.
        paploss.engine.validation.ConfigDataError: one line per problem of the config with its
            data, each naming the key or file and what to change.
    """
    from paploss.data import check_dataset_names, register_datasets_from_config

    from .validation import validate_config_data

    cfg = load_config(config_file, opts)
    register_datasets_from_config(cfg.MODEL.PAPLOSS.DATASETS)
    check_dataset_names(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
    check_dataset_names(cfg.DATASETS.TEST, "DATASETS.TEST")
    if validate:
        validate_config_data(cfg).log(logger)
    cfg.freeze()
    return cfg
