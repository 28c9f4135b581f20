"""Lazy exports of a package: its public names load from their modules on first access.

Packages whose modules import torch or Detectron2 use it so that importing the package itself
stays cheap (``import paploss.search`` takes milliseconds; ``paploss.search.SearchController``
loads what the controller needs)::

    __getattr__, __dir__ = lazy_exports(__name__, globals(), {"SearchSpace": "space", ...})
"""

import importlib
from typing import Any, Callable, Dict, List, Mapping, Tuple

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, namespace: Dict[str, Any], names: Mapping[str, str]
) -> Tuple[Callable[[str], Any], Callable[[], List[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of a package with lazily loaded names.

    Args:
        package: the package's ``__name__``.
        namespace: the package's ``globals()``; a loaded name is cached there.
        names: public name → module (relative to ``package``) that defines it.
    """

    def __getattr__(name: str) -> Any:
        module_name = names.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module_name}"), name)
        namespace[name] = value
        return value

    def __dir__() -> List[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
