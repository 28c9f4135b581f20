"""Where the ranking losses may gather entries by index and where they keep fixed shapes.

The fast PAP, AP, aLRP and Rank & Sort losses have two ways of computing the same sums:

* gathering the positives with ``nonzero`` (sizes follow the data): cheapest on the CPU, where
  reading the number of positives costs nothing;
* fixed shapes (every entry takes part, the positives are a mask): no shape depends on the data and
  no value is read on the host, so on an accelerator the host never waits for the device.

:func:`needs_fixed_shapes` picks one by the device of the inputs; tests set
:data:`INDEXED_DEVICES` to ``()`` to run the fixed-shape way on the CPU.
"""

import torch

__all__ = ["INDEXED_DEVICES", "needs_fixed_shapes"]

#: Device types on which the losses gather the positives by index (see the module docstring); on
#: the others they keep fixed shapes.
INDEXED_DEVICES = ("cpu",)


def needs_fixed_shapes(device: torch.device) -> bool:
    """Whether the losses must keep every shape independent of the data on ``device``: true on
    accelerators, where reading the number of positives would make the host wait for the device;
    false on the CPU (:data:`INDEXED_DEVICES`), where the positives are gathered at no such cost
    and the fixed-shape way would only be slower."""
    return device.type not in INDEXED_DEVICES
