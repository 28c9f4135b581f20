#!/usr/bin/env python
"""Train several configs with the same schedule and seed; print one AP table.

Each config is trained by ``tools/train_net.py`` in its own process (same ``SEED``, iterations,
batch and datasets), evaluated with COCO AP on the chosen test set, and summarised from its
``metrics.json`` (median seconds per iteration after the first 10).

    python benchmarks/compare_losses.py                       # RetinaNet + Faster R-CNN, all losses
    python benchmarks/compare_losses.py --iters 600 --configs configs/synthetic/retinanet_stock.yaml \\
        configs/synthetic/pap_retinanet_identity.yaml
    python benchmarks/compare_losses.py --configs configs/synthetic/pap_faster_rcnn_identity.yaml \\
        --opts MODEL.PAPLOSS.ROI_HEADS.SAMPLE_PROPOSALS False --output output/compare_all_rois
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DEFAULT_CONFIGS = [
    "configs/synthetic/retinanet_stock.yaml",
    "configs/synthetic/ap_retinanet.yaml",
    "configs/synthetic/alrp_retinanet.yaml",
    "configs/synthetic/rs_retinanet.yaml",
    "configs/synthetic/pap_retinanet_identity.yaml",
    "configs/synthetic/pap_retinanet_published.yaml",
    "configs/synthetic/faster_rcnn_stock.yaml",
    "configs/synthetic/ap_faster_rcnn.yaml",
    "configs/synthetic/alrp_faster_rcnn.yaml",
    "configs/synthetic/rs_faster_rcnn.yaml",
    "configs/synthetic/pap_faster_rcnn_identity.yaml",
    "configs/synthetic/pap_faster_rcnn_published.yaml",
]


def run(config, args):
    name = os.path.splitext(os.path.basename(config))[0]
    out = os.path.join(args.output, name)
    steps = f"({int(args.iters * 0.75)}, {int(args.iters * 0.92)})"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", config,
           "SOLVER.MAX_ITER", str(args.iters), "SOLVER.STEPS", steps, "SEED", str(args.seed),
           "SOLVER.IMS_PER_BATCH", str(args.batch), "DATASETS.TEST", f"('{args.test_set}',)",
           "SOLVER.CHECKPOINT_PERIOD", str(10 * args.iters), "OUTPUT_DIR", out,
           *args.opts]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    log = result.stdout + result.stderr
    if result.returncode != 0:
        return {"config": name, "error": log.strip().splitlines()[-1][:80]}
    names = re.findall(r"copypaste: (AP,AP50,AP75.*)", log)[-1].split(",")
    values = re.findall(r"copypaste: ([\d.nan]+,[\d.nan]+,[\d.nan]+.*)", log)[-1].split(",")
    metrics = dict(zip(names, map(float, values)))
    with open(os.path.join(out, "metrics.json")) as f:
        times = [json.loads(line).get("time") for line in f]
    times = [t for t in times if t is not None][1:]
    metrics["s/iter"] = statistics.median(times) if times else float("nan")
    return {"config": name, **metrics}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-set", default="synthetic_shapes_val")
    parser.add_argument("--output", default=os.path.join("output", "compare_losses"))
    parser.add_argument(
        "--opts", nargs="*", default=[], metavar="KEY VALUE", help="config overrides for every run"
    )
    args = parser.parse_args()
    print(f"{args.iters} iterations, batch {args.batch}, seed {args.seed}, test {args.test_set}"
          + (f", overrides {' '.join(args.opts)}" if args.opts else ""))  # fmt: skip
    print(f"| {'config':<30} | {'AP':>6} | {'AP50':>6} | {'AP75':>6} | {'s/iter':>7} |")
    print(f"|{'-' * 32}|{'-' * 8}|{'-' * 8}|{'-' * 8}|{'-' * 9}|")
    for config in args.configs:
        if not os.path.isfile(os.path.join(ROOT, config)):
            print(f"| {os.path.basename(config):<30} | missing config |")
            continue
        row = run(config, args)
        if "error" in row:
            print(f"| {row['config']:<30} | failed: {row['error']} |")
        else:
            print(f"| {row['config']:<30} | {row['AP']:>6.2f} | {row['AP50']:>6.2f} | "
                  f"{row['AP75']:>6.2f} | {row['s/iter']:>7.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
