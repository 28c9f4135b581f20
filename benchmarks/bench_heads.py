#!/usr/bin/env python
"""Seconds per training iteration: PAP RetinaNet vs stock RetinaNet on the same config.

Both models are built from ``configs/synthetic/pap_retinanet_identity.yaml`` (the stock one with
``MODEL.PAPLOSS.LOSS stock``, i.e. Detectron2's focal + smooth-L1 losses), start from the same
weights and see the same pre-loaded batches. Iterations (forward, backward, SGD step) alternate
between the two models in blocks so that both see the same machine load; the table reports the
median and the ratio of medians measured in this one run.

    python benchmarks/bench_heads.py [--iters 30] [--batch 8] [--threads 1]
"""

import argparse
import itertools
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detectron2.data import build_detection_train_loader  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from paploss.engine import setup_cfg  # noqa: E402

CONFIG = "configs/synthetic/pap_retinanet_identity.yaml"


def _step(model, optimizer, batch):
    start = time.perf_counter()
    losses = model(batch)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=30, help="timed iterations per model")
    parser.add_argument("--batch", type=int, default=8, help="images per batch")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--block", type=int, default=5, help="iterations per alternation block")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    opts = ["SOLVER.IMS_PER_BATCH", str(args.batch)]
    cfg_pap = setup_cfg(CONFIG, opts)
    cfg_stock = setup_cfg(CONFIG, opts + ["MODEL.PAPLOSS.LOSS", "stock"])
    torch.manual_seed(0)
    models = {"stock": build_model(cfg_stock), "pap": build_model(cfg_pap)}
    models["pap"].load_state_dict(models["stock"].state_dict())
    optimizers = {
        name: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for name, m in models.items()
    }
    for model in models.values():
        model.train()
    num_batches = args.warmup + args.iters
    batches = list(itertools.islice(iter(build_detection_train_loader(cfg_pap)), num_batches))

    times = {name: [] for name in models}
    with EventStorage(0):
        for name in models:
            for batch in batches[: args.warmup]:
                _step(models[name], optimizers[name], batch)
        for start in range(args.warmup, num_batches, args.block):
            for name in models:
                for batch in batches[start : start + args.block]:
                    times[name].append(_step(models[name], optimizers[name], batch))

    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"RetinaNet (tiny ResNet-FPN, {args.batch} images of 128 px), "
          f"{args.iters} iterations each, {args.threads} thread(s)")  # fmt: skip
    print(f"{'loss':<8}{'median s/iter':>15}{'min':>10}{'max':>10}")
    for name, t in times.items():
        print(f"{name:<8}{medians[name]:>15.4f}{min(t):>10.4f}{max(t):>10.4f}")
    print(f"ratio pap/stock (medians): {medians['pap'] / medians['stock']:.3f}")


if __name__ == "__main__":
    main()
