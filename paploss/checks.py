"""Checks of configuration values shared by the model and the search (no dependencies).

Booleans are ints in Python; a config value ``true`` is never accepted where a count or a number
is expected.
"""

import math
from typing import Any, Optional

__all__ = ["check_int", "check_number", "is_int", "is_number"]


def is_int(value: Any, minimum: Optional[int] = None) -> bool:
    """True for an ``int`` that is not a ``bool`` (and is ``>= minimum`` when given)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return minimum is None or value >= minimum


def is_number(value: Any) -> bool:
    """True for a finite ``int`` or ``float`` that is not a ``bool``."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def check_int(value: Any, key: str, *, minimum: int) -> int:
    """``value`` if it is an integer ``>= minimum``, else a ``ValueError`` naming ``key``."""
    if not is_int(value, minimum):
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def check_number(
    value: Any,
    key: str,
    *,
    low: float,
    high: float = math.inf,
    low_inclusive: bool = False,
    high_inclusive: bool = False,
) -> float:
    """``value`` as a float if it is a finite number in the interval, else a ``ValueError``
    naming ``key`` and the interval."""
    inside = is_number(value) and (
        (value >= low if low_inclusive else value > low)
        and (value <= high if high_inclusive else value < high)
    )
    if not inside:
        interval = f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
        raise ValueError(f"{key} must be a number in {interval}, got {value!r}")
    return float(value)
