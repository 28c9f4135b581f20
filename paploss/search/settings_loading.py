"""Loading search settings: YAML files with ``_BASE_`` inheritance, and command-line overrides.

A settings file (``configs/search/*.yaml``) names only what it changes from the defaults of
:mod:`paploss.search.settings`. It may start from another file with ``_BASE_: other.yaml``
(merged key by key, like Detectron2 configs). Paths in a file are relative to the file that sets
them, again like Detectron2's ``_BASE_``: ``model.config``, ``model.python_path``,
``model.train_script`` and a config file named by ``search.init``.

Command-line overrides are ``dotted.key=value`` strings whose values are parsed as YAML
(``search.rounds=3``, ``proxy.opts={SOLVER.BASE_LR: 0.01}``); relative paths given there are
relative to the working directory. Mappings whose keys are dotted names themselves
(``proxy.opts``, ``proxy.warm_start.opts``, ``model.fixed``, ``launcher.additional_parameters``)
are merged by those names, so ``proxy.opts.SOLVER.BASE_LR=0.01`` sets one key of ``proxy.opts``.

Every problem is a one-line :class:`~paploss.search.settings.SettingsError` naming the file (and
the line of a YAML error) or the override.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import yaml

from paploss.search.settings import INIT_POINTS, SearchSettings, SettingsError

__all__ = ["load_settings", "parse_overrides"]

_BASE_KEY = "_BASE_"
_MAX_BASE_DEPTH = 16


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """``["a.b=1", "c=[2, 3]"]`` → ``{"a": {"b": 1}, "c": [2, 3]}`` (values parsed as YAML).

    Raises:
        SettingsError: for an item without ``=`` or a value that is not valid YAML.
    """
    nested: Dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SettingsError(f"override {item!r} must look like section.key=value")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise SettingsError(
                f"override {item!r}: the value is not valid YAML: {_yaml_problem(exc)}"
            ) from None
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SettingsError(f"override {item!r} conflicts with an earlier override")
            node = child
        # proxy.opts / model.fixed take dotted keys themselves: "proxy.opts.SOLVER.BASE_LR=0.01".
        node[parts[-1]] = value
    return _regroup_dotted_maps(nested)


def load_settings(
    path: Optional[str] = None,
    overrides: Sequence[str] = (),
    base: Optional[Mapping[str, Any]] = None,
) -> SearchSettings:
    """Load search settings from a YAML file and/or command-line overrides.

    Args:
        path: a ``configs/search/*.yaml`` file (``_BASE_`` chains are followed).
        overrides: ``dotted.key=value`` strings applied on top.
        base: plain settings to start from instead of a file (e.g. those stored in a journal);
            ignored when ``path`` is given.

    Returns:
        Validated settings, with ``model.config`` made absolute.

    Raises:
        SettingsError: for a missing or malformed file, unknown keys or invalid values.
    """
    if path is not None:
        data = _read_with_bases(os.path.abspath(path), depth=0)
    else:
        data = _deep_copy(dict(base or {}))
    extra = parse_overrides(overrides)
    model_override = (extra.get("model") or {}).get("config")
    if isinstance(model_override, str) and model_override:
        extra["model"]["config"] = os.path.abspath(model_override)
    _resolve_init(extra, os.getcwd())
    path_override = (extra.get("model") or {}).get("python_path")
    if path_override is not None:
        extra["model"]["python_path"] = _resolved_folders(path_override, os.getcwd())
    script_override = (extra.get("model") or {}).get("train_script")
    if isinstance(script_override, str) and script_override:
        extra["model"]["train_script"] = os.path.abspath(script_override)
    data = _merge(data, extra)
    return SearchSettings.from_dict(data, source=None if path is None else os.path.abspath(path))


# ------------------------------------------------------------------------------------ files


def _read_with_bases(path: str, depth: int) -> Dict[str, Any]:
    if depth > _MAX_BASE_DEPTH:
        raise SettingsError(f"{path}: _BASE_ chain is deeper than {_MAX_BASE_DEPTH} (a cycle?)")
    if not os.path.isfile(path):
        raise SettingsError(f"search config file '{path}' does not exist")
    try:
        with open(path, "r") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        raise SettingsError(
            f"{path}{_yaml_where(exc)}: invalid YAML: {_yaml_problem(exc)}"
        ) from None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read search settings: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: search settings must be a YAML mapping at the top level")
    directory = os.path.dirname(path)
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("config"), str) and model["config"]:
        model["config"] = os.path.normpath(os.path.join(directory, model["config"]))
    if isinstance(model, dict) and model.get("python_path") is not None:
        model["python_path"] = _resolved_folders(model["python_path"], directory)
    if isinstance(model, dict) and isinstance(model.get("train_script"), str):
        if model["train_script"]:
            model["train_script"] = os.path.normpath(
                os.path.join(directory, os.path.expanduser(model["train_script"]))
            )
    _resolve_init(data, directory)
    base_path = data.pop(_BASE_KEY, None)
    if base_path is None:
        return _regroup_dotted_maps(data)
    if not isinstance(base_path, str):
        raise SettingsError(f"{path}: _BASE_ must be a file name, got {base_path!r}")
    base = _read_with_bases(os.path.normpath(os.path.join(directory, base_path)), depth + 1)
    return _merge(base, _regroup_dotted_maps(data))


def _resolve_init(data: Dict[str, Any], directory: str) -> None:
    """A config file named by ``search.init`` made absolute against ``directory``."""
    loop = data.get("search")
    init = loop.get("init") if isinstance(loop, dict) else None
    if isinstance(init, str) and init and init not in INIT_POINTS:
        loop["init"] = os.path.normpath(os.path.join(directory, os.path.expanduser(init)))


def _resolved_folders(value: Any, directory: str) -> Any:
    """``model.python_path`` with relative folders joined to ``directory`` (a malformed value is
    returned as it is, for the validation to report)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return value
    return [
        (
            os.path.normpath(os.path.join(directory, os.path.expanduser(v)))
            if isinstance(v, str)
            else v
        )
        for v in value
    ]


# Mappings whose keys are dotted names themselves: never merged key by key, replaced as a whole.
_OPAQUE_MAPS = (
    ("proxy", "opts"),
    ("proxy", "warm_start", "opts"),
    ("model", "fixed"),
    ("launcher", "additional_parameters"),
)


def _regroup_dotted_maps(data: Dict[str, Any]) -> Dict[str, Any]:
    """Turn ``{"proxy": {"opts": {"SOLVER": {"BASE_LR": x}}}}`` back into dotted keys."""
    for *parents, key in _OPAQUE_MAPS:
        node: Any = data
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(key), dict):
            node[key] = _flatten_keys(node[key])
    return data


def _flatten_keys(mapping: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(_flatten_keys(value, name))
        else:
            flat[name] = value
    return flat


def _merge(base: Dict[str, Any], update: Mapping[str, Any], path: Tuple[str, ...] = ()) -> Dict:
    merged = dict(base)
    for key, value in update.items():
        here = (*path, key)
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            if here in _OPAQUE_MAPS:
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = _merge(merged[key], value, here)
        else:
            merged[key] = value
    return merged


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _deep_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_deep_copy(item) for item in value]
    return value


def _yaml_where(exc: yaml.YAMLError) -> str:
    """``", line 3, column 7"`` for a YAML error that knows where it happened, else ``""``."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is None:
        return ""
    return f", line {mark.line + 1}, column {mark.column + 1}"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong, in one line (PyYAML's own text spans several, with a source excerpt)."""
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    if problem:
        text = f"{problem} ({context})" if context else str(problem)
    else:
        text = str(exc)
    return " ".join(text.split())
