"""Search methods: what proposes each round's candidates and learns from their rewards.

* :mod:`~paploss.search.proposers.policy`: the truncated-normal policy over θ and its PPO update.
"""

from .policy import TruncatedNormalPolicy, UpdateStats

__all__ = ["TruncatedNormalPolicy", "UpdateStats"]
