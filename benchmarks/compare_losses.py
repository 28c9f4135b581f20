#!/usr/bin/env python
"""Train several configs with the same schedule and seeds; print one AP table.

Each config is trained by ``tools/train_net.py`` in its own process (same ``SEED``, iterations,
batch and datasets), evaluated with COCO AP on the chosen test set, and summarised from its
``metrics.json`` (median seconds per iteration after the first 10). Mask R-CNN configs
(``MODEL.MASK_ON``) also report mask AP. With several ``--seeds`` every cell is the mean ± the
sample standard deviation over the seeds.

    python benchmarks/compare_losses.py                       # RetinaNet + Faster R-CNN, all losses
    python benchmarks/compare_losses.py --iters 600 --configs configs/synthetic/retinanet_stock.yaml \\
        configs/synthetic/pap_retinanet_identity.yaml
    python benchmarks/compare_losses.py --configs configs/synthetic/pap_faster_rcnn_identity.yaml \\
        --opts MODEL.PAPLOSS.ROI_HEADS.SAMPLE_PROPOSALS False --output output/compare_all_rois
    python benchmarks/compare_losses.py --mask --iters 300 --batch 4 --seeds 0 1 2  # Mask R-CNN
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
#: ``--mask``: Mask R-CNN stock, RS, PAP (box quality) and PAP (mask-IoU quality).
MASK_CONFIGS = [
    "configs/synthetic/mask_rcnn_stock.yaml",
    "configs/synthetic/rs_mask_rcnn.yaml",
    "configs/synthetic/pap_mask_rcnn.yaml",
    "configs/synthetic/pap_mask_rcnn_mask_iou.yaml",
]
#: Columns of the table: (header, task in Detectron2's results, metric).
COLUMNS = [
    ("AP", "bbox", "AP"),
    ("AP50", "bbox", "AP50"),
    ("AP75", "bbox", "AP75"),
    ("mask AP", "segm", "AP"),
    ("mask AP50", "segm", "AP50"),
    ("mask AP75", "segm", "AP75"),
]


def parse_results(log):
    """``{task: {metric: value}}`` from Detectron2's ``copypaste`` lines (the last evaluation)."""
    results, task, names = {}, None, None
    for line in re.findall(r"copypaste: (.*)", log):
        if line.startswith("Task: "):
            task, names = line[len("Task: ") :].strip(), None
        elif names is None:
            names = line.strip().split(",")
        elif task is not None:
            results[task] = dict(zip(names, map(float, line.strip().split(","))))
            task = None
    return results


def run(config, seed, args):
    name = os.path.splitext(os.path.basename(config))[0]
    out = os.path.join(args.output, name if len(args.seeds) == 1 else f"{name}_seed{seed}")
    steps = f"({int(args.iters * 0.75)}, {int(args.iters * 0.92)})"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", config,
           "SOLVER.MAX_ITER", str(args.iters), "SOLVER.STEPS", steps, "SEED", str(seed),
           "SOLVER.IMS_PER_BATCH", str(args.batch), "DATASETS.TEST", f"('{args.test_set}',)",
           "SOLVER.CHECKPOINT_PERIOD", str(10 * args.iters), "OUTPUT_DIR", out,
           *args.opts]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    log = result.stdout + result.stderr
    if result.returncode != 0:
        return {"error": log.strip().splitlines()[-1][:80]}
    metrics = {
        header: parse_results(log).get(task, {}).get(metric) for header, task, metric in COLUMNS
    }
    with open(os.path.join(out, "metrics.json")) as f:
        times = [json.loads(line).get("time") for line in f]
    times = [t for t in times if t is not None][1:]
    metrics["s/iter"] = statistics.median(times) if times else float("nan")
    return metrics


def cell(values, digits):
    """``mean`` or ``mean ± std`` of the non-missing values; ``-`` when there are none."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=None)
    parser.add_argument("--mask", action="store_true", help="the Mask R-CNN configs")
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--test-set", default="synthetic_shapes_val")
    parser.add_argument("--output", default=os.path.join("output", "compare_losses"))
    parser.add_argument(
        "--opts", nargs="*", default=[], metavar="KEY VALUE", help="config overrides for every run"
    )
    args = parser.parse_args()
    configs = args.configs or (MASK_CONFIGS if args.mask else DEFAULT_CONFIGS)
    headers = [h for h, _, _ in COLUMNS if args.mask or not h.startswith("mask")] + ["s/iter"]
    seeds = ", ".join(map(str, args.seeds))
    print(f"{args.iters} iterations, batch {args.batch}, seeds {seeds}, test {args.test_set}"
          + (f", overrides {' '.join(args.opts)}" if args.opts else ""))  # fmt: skip
    print("| config | " + " | ".join(headers) + " |")
    print("| --- |" + " ---: |" * len(headers))
    for config in configs:
        name = os.path.splitext(os.path.basename(config))[0]
        if not os.path.isfile(os.path.join(ROOT, config)):
            print(f"| {name} | missing config |")
            continue
        rows = [run(config, seed, args) for seed in args.seeds]
        failed = [row["error"] for row in rows if "error" in row]
        if failed:
            print(f"| {name} | failed: {failed[0]} |", flush=True)
            continue
        cells = [cell([row[h] for row in rows], 3 if h == "s/iter" else 2) for h in headers]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
