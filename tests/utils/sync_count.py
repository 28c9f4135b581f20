"""Count the operators that make the host wait for the device.

On an accelerator, reading a tensor's value on the host (``.item()``, ``float(t)``, ``if t:``, all
of them ``aten::_local_scalar_dense``) or producing a tensor whose shape depends on its data
(``aten::nonzero``, behind boolean indexing and ``torch.nonzero``) blocks the host until the device
has caught up. The same operators run on the CPU, so a :mod:`torch.profiler` trace of a CPU run
counts the synchronisations a device run would make, without a device.
"""

from collections import Counter
from typing import Callable, Dict

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["SYNC_OPS", "count_syncs"]

#: The operators that synchronise with the device: a scalar read (``aten::item``, ``is_nonzero``
#: and ``float(t)`` all call ``aten::_local_scalar_dense``, counted through it), or an output shape
#: that depends on the data (``aten::nonzero``, behind boolean indexing; ``aten::masked_select``;
#: ``aten::_unique2``; ``aten::bincount``, whose device kernel reads the input's minimum and maximum
#: on the host, which its CPU kernel does without a visible operator). ``aten::nonzero_static`` has a
#: fixed shape and does not synchronise.
SYNC_OPS = (
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique2",
    "aten::bincount",
)


def count_syncs(fn: Callable[[], object]) -> Dict[str, int]:
    """Run ``fn`` under the CPU profiler and count its synchronising operators.

    Args:
        fn: the work to count (e.g. a loss's forward and backward).

    Returns:
        ``{operator name: number of calls}`` for every name of :data:`SYNC_OPS` (0 included).
    """
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts = Counter(event.name for event in prof.events())
    return {name: counts[name] for name in SYNC_OPS}
