"""The number of torch CPU threads, for the duration of a block."""

import contextlib
from typing import Iterator

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(num_threads: int) -> Iterator[None]:
    """Run with ``num_threads`` torch CPU threads (0: leave the count as it is), then restore it.

    Torch is imported on entry, not with this module.
    """
    import torch

    saved = torch.get_num_threads()
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
