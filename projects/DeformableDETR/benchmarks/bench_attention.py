#!/usr/bin/env python
"""Multi-scale deformable attention sampling: ``grid_sample`` path vs the naive loop reference.

Times :func:`ms_deform_attn_sample` and :func:`ms_deform_attn_reference` (forward, and forward +
backward to value, locations and weights) on random inputs of a few sizes, alternating the two in
each repetition; prints medians, the speed-up and the largest difference of the outputs.

    python projects/DeformableDETR/benchmarks/bench_attention.py [--reps 5] [--threads 1]
    python projects/DeformableDETR/benchmarks/bench_attention.py --device <torch device>
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from deformable_detr.attention import (  # noqa: E402
    ms_deform_attn_reference,
    ms_deform_attn_sample,
)

# name: (images, queries, heads, head_dim, points, spatial shapes)
CASES = {
    "tiny encoder (128 px)": (4, 340, 4, 16, 2, [(16, 16), (8, 8), (4, 4), (2, 2)]),
    "tiny decoder (50 queries)": (4, 50, 4, 16, 2, [(16, 16), (8, 8), (4, 4), (2, 2)]),
    "R50 decoder (512 px, 300 q)": (1, 300, 8, 32, 4, [(64, 64), (32, 32), (16, 16), (8, 8)]),
    "R50 encoder (512 px)": (1, 5440, 8, 32, 4, [(64, 64), (32, 32), (16, 16), (8, 8)]),
}


def _inputs(case, device):
    n, queries, heads, head_dim, points, shapes = case
    pixels = sum(h * w for h, w in shapes)
    value = torch.randn(n, pixels, heads, head_dim, device=device, requires_grad=True)
    locations = torch.rand(n, queries, heads, len(shapes), points, 2, device=device)
    weights = torch.rand(n, queries, heads, len(shapes), points, device=device)
    return value, locations.requires_grad_(), weights.requires_grad_(), shapes


def _sync(device):
    if device.type != "cpu" and hasattr(torch, device.type):
        getattr(torch, device.type).synchronize()


def _time(function, inputs, backward, device):
    value, locations, weights, shapes = inputs
    _sync(device)
    start = time.perf_counter()
    out = function(value, shapes, locations, weights)
    if backward:
        out.backward(torch.ones_like(out))
    _sync(device)
    return time.perf_counter() - start, out.detach()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device {device}, {args.threads} thread(s), median of {args.reps} (+1 warm-up)\n")
    print("| case | pass | grid_sample ms | loop ms | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|")
    for name, case in CASES.items():
        inputs = _inputs(case, device)
        for backward in (False, True):
            times = {"fast": [], "loop": []}
            for rep in range(args.reps + 1):
                fast, fast_out = _time(ms_deform_attn_sample, inputs, backward, device)
                loop, loop_out = _time(ms_deform_attn_reference, inputs, backward, device)
                if rep:
                    times["fast"].append(fast)
                    times["loop"].append(loop)
            fast_ms = 1000 * statistics.median(times["fast"])
            loop_ms = 1000 * statistics.median(times["loop"])
            diff = (fast_out - loop_out).abs().max().item()
            kind = "fwd+bwd" if backward else "fwd"
            print(
                f"| {name} | {kind} | {fast_ms:.2f} | {loop_ms:.2f} | {loop_ms / fast_ms:.1f}x "
                f"| {diff:.1e} |"
            )


if __name__ == "__main__":
    main()
