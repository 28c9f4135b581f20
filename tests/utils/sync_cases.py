"""The cases whose host synchronisations the tests count: every loss and every head's losses.

Shared by ``tests/losses/test_host_syncs.py`` and ``tests/modeling/test_host_syncs.py``, and
runnable on its own (``python -m tests.utils.sync_cases``) to print the counts of a tree.
"""

import contextlib
from typing import Dict, Iterator

import torch

from .loss_snapshot import HEAD_CONFIGS, loss_cases, ranking_problem
from .sync_count import count_syncs

#: Loss cases that are references (their shapes depend on the data by design): not counted.
REFERENCE_CASES = ("pap_dense", "pap_dense_topk")


@contextlib.contextmanager
def as_on_accelerator() -> Iterator[None]:
    """Run the losses as on an accelerator, so that a CPU count stands for a device run: the
    input checks that read values are skipped
    (:data:`paploss.losses._checks.VALUE_CHECK_DEVICES`) and the ranking losses keep fixed shapes
    instead of gathering their positives (:data:`paploss.losses._devices.INDEXED_DEVICES`)."""
    from paploss.losses import _checks, _devices

    saved_checks = _checks.VALUE_CHECK_DEVICES
    saved_indexed = _devices.INDEXED_DEVICES
    _checks.VALUE_CHECK_DEVICES = ()
    _devices.INDEXED_DEVICES = ()
    try:
        yield
    finally:
        _checks.VALUE_CHECK_DEVICES = saved_checks
        _devices.INDEXED_DEVICES = saved_indexed


def loss_sync_counts(num_entries: int = 4000, num_positives: int = 60) -> Dict[str, int]:
    """Synchronising operators of one forward and backward of every loss (not the references)."""
    logits, targets, quality = ranking_problem(num_entries, num_positives)
    counts = {}
    with as_on_accelerator():
        for name, fn in loss_cases().items():
            if name in REFERENCE_CASES:
                continue
            s = logits.clone().requires_grad_(True)
            q = quality.clone().requires_grad_(True)
            counts[name] = sum(count_syncs(lambda: fn(s, targets, q).backward()).values())
    return counts


def head_sync_counts(batch_of) -> Dict[str, Dict[str, int]]:
    """Synchronising operators of every head's ``losses()`` and of the backward of the losses.

    Args:
        batch_of: config -> its fixed training batch.

    Returns:
        ``{config: {"<head class>.losses": n, ..., "backward": n}}``.
    """
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from paploss.engine import setup_cfg

    results = {}
    for config in HEAD_CONFIGS:
        cfg = setup_cfg(f"configs/synthetic/{config}.yaml", ["SOLVER.IMS_PER_BATCH", "4"])
        torch.manual_seed(0)
        model = build_model(cfg)
        model.train()
        counts: Dict[str, int] = {}
        for module in model.modules():
            if "losses" in type(module).__dict__ and not hasattr(module, "loss_name"):  # a head
                _count_losses(module, counts)
        with as_on_accelerator(), EventStorage(0):
            losses = model(batch_of(config))
            total = sum(losses.values())
            counts["backward"] = sum(count_syncs(total.backward).values())
        results[config] = counts
    return results


def _count_losses(module: torch.nn.Module, counts: Dict[str, int]) -> None:
    """Count the synchronising operators of every call of ``module.losses``."""
    losses = module.losses
    key = f"{type(module).__name__}.losses"

    def counted(*args, **kwargs):
        out = {}

        def run():
            out["losses"] = losses(*args, **kwargs)

        counts[key] = counts.get(key, 0) + sum(count_syncs(run).values())
        return out["losses"]

    module.losses = counted


def main() -> None:
    import itertools
    import random

    import numpy as np
    from detectron2.data import build_detection_train_loader

    from paploss.engine import setup_cfg

    torch.set_num_threads(1)
    for name, count in loss_sync_counts().items():
        print(f"loss {name}: {count}")

    def batch_of(config):
        cfg = setup_cfg(f"configs/synthetic/{config}.yaml", ["SOLVER.IMS_PER_BATCH", "4"])
        random.seed(0)
        np.random.seed(0)
        torch.manual_seed(0)
        return next(itertools.islice(iter(build_detection_train_loader(cfg)), 1))

    for config, counts in head_sync_counts(batch_of).items():
        print(f"head {config}: {counts}")


if __name__ == "__main__":
    main()
