#!/usr/bin/env python
"""Train the tiny Deformable DETR with several losses on one schedule; print AP, time, loss curves.

Each config is trained by the project's ``train_net.py`` in its own process (same ``SEED``,
iterations, batch and datasets; ``--parallel`` runs at a time, each with ``--threads`` torch
threads), evaluated with COCO AP on the test set, and summarised from its ``metrics.json``:
median seconds per iteration after the first logged window, and the total loss (Detectron2's
20-iteration median) every ``--curve-every`` iterations. Losses differ in scale between loss
types, so compare curves within a row, AP across rows.

    python projects/DeformableDETR/benchmarks/compare_losses.py --iters 2000
    python projects/DeformableDETR/benchmarks/compare_losses.py --configs \\
        projects/DeformableDETR/configs/deformable_detr_tiny_stock.yaml --iters 200
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

PROJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ROOT = os.path.join(PROJECT, "..", "..")
DEFAULT_CONFIGS = [
    os.path.join(PROJECT, "configs", f"deformable_detr_tiny_{loss}.yaml")
    for loss in ("stock", "pap")
]


def run(config, args):
    name = os.path.splitext(os.path.basename(config))[0]
    out = os.path.join(args.output, name)
    step = f"({int(args.iters * 0.8)},)"  # the published drop at 40 of 50 epochs
    cmd = [sys.executable, os.path.join(PROJECT, "train_net.py"), "--config-file", config,
           "SOLVER.MAX_ITER", str(args.iters), "SOLVER.STEPS", step, "SEED", str(args.seed),
           "SOLVER.IMS_PER_BATCH", str(args.batch), "DATASETS.TEST", f"('{args.test_set}',)",
           "SOLVER.CHECKPOINT_PERIOD", str(10 * args.iters), "OUTPUT_DIR", out,
           *args.opts]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    log = result.stdout + result.stderr
    if result.returncode != 0:
        return {"config": name, "error": log.strip().splitlines()[-1][:80]}
    names = re.findall(r"copypaste: (AP,AP50,AP75.*)", log)[-1].split(",")
    values = re.findall(r"copypaste: ([\d.nan]+,[\d.nan]+,[\d.nan]+.*)", log)[-1].split(",")
    metrics = dict(zip(names, map(float, values)))
    with open(os.path.join(out, "metrics.json")) as f:
        records = [json.loads(line) for line in f]
    times = [r["time"] for r in records if "time" in r][1:]
    metrics["s/iter"] = statistics.median(times) if times else float("nan")
    curve = {r["iteration"] + 1: r["total_loss"] for r in records if "total_loss" in r}
    return {"config": name, "curve": curve, **metrics}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training")
    parser.add_argument("--parallel", type=int, default=1, help="trainings at a time")
    parser.add_argument("--curve-every", type=int, default=200)
    parser.add_argument("--test-set", default="synthetic_shapes_val")
    parser.add_argument("--output", default=os.path.join("output", "compare_deformable_detr"))
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="extra overrides")
    args = parser.parse_args()
    args.output = os.path.abspath(args.output)

    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda config: run(config, args), args.configs))

    print(f"\n{args.iters} iterations x {args.batch} images, seed {args.seed}, "
          f"test set {args.test_set}, {args.threads} thread(s) per training\n")  # fmt: skip
    header = ["config", "AP", "AP50", "AP75", "APs", "APm", "APl", "s/iter"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        if "error" in row:
            print(f"| {row['config']} | failed: {row['error']} |")
            continue
        cells = [row["config"]] + [f"{row.get(k, float('nan')):.2f}" for k in header[1:-1]]
        print("| " + " | ".join(cells + [f"{row['s/iter']:.3f}"]) + " |")
    marks = list(range(args.curve_every, args.iters + 1, args.curve_every))
    print("\ntotal training loss (20-iteration median) at iteration\n")
    print("| config | " + " | ".join(str(m) for m in marks) + " |")
    print("|---|" + "|".join("---" for _ in marks) + "|")
    for row in rows:
        if "curve" in row:
            values = [row["curve"].get(m) for m in marks]
            cells = ["-" if v is None else f"{v:.3f}" for v in values]
            print(f"| {row['config']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
