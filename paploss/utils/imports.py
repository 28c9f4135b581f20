"""Importing the Python modules a search names (``model.imports``), with one-line errors.

A search of a Detectron2 project's model imports the project's modules before it reads the
model's config, in the controller and in every trial process: importing them registers the
project's meta-architecture, config keys (:func:`paploss.engine.register_config_extension`),
heads (:func:`paploss.heads.register_pap_heads`) and optimizer. ``model.python_path`` names
folders put in front of ``sys.path`` first (a project folder such as ``projects/DeformableDETR``
that holds the package).

:func:`check_importable` finds the modules without running them (cheap: the settings check it
when they are loaded); :func:`import_modules` imports them. Both raise :class:`ModuleImportError`
(an ``ImportError``) of one line that names the setting and the module.
"""

import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
from typing import Sequence

__all__ = ["ModuleImportError", "check_importable", "extend_sys_path", "import_modules"]

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class ModuleImportError(ImportError):
    """A module named by a setting cannot be found or fails while it is imported."""


def check_importable(
    modules: Sequence[str], python_path: Sequence[str] = (), key: str = "model.imports"
) -> None:
    """Check that each module's top-level package can be found, without importing anything.

    Looks in ``python_path`` (without changing ``sys.path``), then wherever ``import`` looks.

    Raises:
        ModuleImportError: naming ``key`` and the first module that is not a module name or
            cannot be found.
    """
    for name in modules:
        if not isinstance(name, str) or not _MODULE_NAME.match(name):
            raise ModuleImportError(f"{key}: {name!r} is not a Python module name")
        top = name.split(".")[0]
        if top in sys.modules:
            continue
        found = python_path and importlib.machinery.PathFinder.find_spec(top, list(python_path))
        if not found and importlib.util.find_spec(top) is None:
            where = f"model.python_path {list(python_path)} and " if python_path else ""
            raise ModuleImportError(f"{key}: no module named '{top}' (looked in {where}sys.path)")


def extend_sys_path(python_path: Sequence[str]) -> None:
    """Put the folders of ``python_path`` in front of ``sys.path`` (once each, in order)."""
    for folder in reversed([os.path.abspath(p) for p in python_path]):
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)


def import_modules(
    modules: Sequence[str], python_path: Sequence[str] = (), key: str = "model.imports"
) -> None:
    """Put ``python_path`` in front of ``sys.path`` and import ``modules`` in order.

    Raises:
        ModuleImportError: naming ``key``, the module and the first line of the error when a
            module cannot be found or raises while it is imported.
    """
    check_importable(modules, python_path, key)
    extend_sys_path(python_path)
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any error of the module's own code: report it in one line
            lines = str(exc).strip().splitlines()
            detail = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
            raise ModuleImportError(f"{key}: importing '{name}' failed ({detail})") from exc
