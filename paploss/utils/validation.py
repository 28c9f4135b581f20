"""Checks of plain setting values, with messages that name the setting.

YAML and JSON give ``true`` as a Python ``bool``, which is an ``int`` subclass: ``rounds: true``
must not pass as one round. One definition of "an integer" for every setting::

    check_int(value, "search.rounds", minimum=1)   # -> the int, or ValueError naming the key
"""

import numbers
from typing import Any, Optional, Type

__all__ = ["is_int", "check_int"]


def is_int(value: Any, minimum: Optional[int] = None) -> bool:
    """Whether ``value`` is an integer (Python or NumPy, not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return False
    return minimum is None or value >= minimum


def check_int(
    value: Any,
    name: str,
    minimum: Optional[int] = None,
    error: Type[Exception] = ValueError,
) -> int:
    """``value`` as an ``int``, or ``error`` saying what ``name`` must be.

    Args:
        value: the value to check.
        name: the setting, as the user writes it (``"search.rounds"``).
        minimum: smallest allowed value (None: any integer).
        error: exception class to raise (a ``ValueError`` subclass keeps callers simple).

    Raises:
        error: ``"<name> must be an integer >= <minimum>, got <value>"``.
    """
    if not is_int(value, minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise error(f"{name} must be an integer{bound}, got {value!r}")
    return int(value)
