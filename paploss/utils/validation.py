"""Checks of plain setting and config values, with messages that name the key.

YAML and JSON give ``true`` as a Python ``bool``, which is an ``int`` subclass: ``rounds: true``
must not pass as one round, nor ``delta: true`` as a number. One definition of "an integer" and
"a number" for every setting of the search and every config value of the model::

    check_int(value, "search.rounds", minimum=1)              # -> the int, or ValueError
    check_number(value, "MODEL.PAPLOSS.AP.DELTA", low=0.0)    # -> the float, or ValueError

Every check takes the exception class to raise (``error``, a ``ValueError`` by default), so a
caller with its own error type (``SettingsError``) gets the same message in its type.
"""

import math
import numbers
from typing import Any, Optional, Type

__all__ = ["is_int", "is_number", "check_int", "check_number"]


def is_int(value: Any, minimum: Optional[int] = None) -> bool:
    """Whether ``value`` is an integer (Python or NumPy, not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return False
    return minimum is None or value >= minimum


def is_number(value: Any) -> bool:
    """Whether ``value`` is a finite real number (Python or NumPy int or float, not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(float(value))


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
        error: exception class to raise.

    Raises:
        error: ``"<name> must be an integer >= <minimum>, got <value>"``.
    """
    if not is_int(value, minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise error(f"{name} must be an integer{bound}, got {value!r}")
    return int(value)


def check_number(
    value: Any,
    name: str,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_inclusive: bool = False,
    high_inclusive: bool = False,
    error: Type[Exception] = ValueError,
) -> float:
    """``value`` as a ``float`` if it is a finite number in the interval, else ``error`` naming
    ``name`` and the interval.

    Args:
        value: the value to check.
        name: the setting or config key (``"MODEL.PAPLOSS.AP.DELTA"``).
        low, high: bounds of the interval (infinite: unbounded on that side).
        low_inclusive, high_inclusive: whether the bounds themselves are allowed.
        error: exception class to raise.

    Raises:
        error: ``"<name> must be a number in (<low>, <high>), got <value>"``.
    """
    inside = is_number(value) and (
        (value >= low if low_inclusive else value > low)
        and (value <= high if high_inclusive else value < high)
    )
    if not inside:
        interval = f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
        raise error(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)
