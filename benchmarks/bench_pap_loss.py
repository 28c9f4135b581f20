"""Speed and memory of the PAP loss: dense [P, M] reference vs the exact sort + prefix-sum version.

Usage::

    python benchmarks/bench_pap_loss.py            # M in {1e4, 1e5, 1e6}, P in {100, 1000}
    python benchmarks/bench_pap_loss.py --quick    # fewer repeats, dense only up to 1e7 pairs

Every row (implementation, M, P) runs in a fresh Python process, so peak memory is measured
without other rows' allocations or allocator caches:

* time: one forward + backward of ``pap_loss(logits, targets, quality, functions)`` (published
  RetinaNet functions, P positives, the rest negatives); one warm-up call, then the median of
  ``--repeats`` timed calls.
* peak memory on CPU: the extra peak resident set size of the worker process, i.e. ``VmHWM``
  minus ``VmRSS`` from ``/proc/self/status``, with the high-water mark reset (``echo 5 >
  /proc/self/clear_refs``) after the inputs are built; it covers the warm-up and timed calls and
  counts every allocation of the process (PyTorch's allocator, temporaries, autograd buffers),
  not only Python objects. Where the reset is not available the worker's lifetime ``ru_maxrss``
  minus the RSS after the inputs are built is used (an upper bound). On CUDA:
  ``torch.cuda.max_memory_allocated`` minus the memory allocated after the inputs are built.

The dense reference runs only where its estimated peak fits in ``--dense-limit-gib`` (8 GiB by
default): the estimate is bytes-per-(positive, entry) pair, measured by a small calibration run of
the dense loss in this invocation, times ``P * M``. Ratios are computed from rows of the same
invocation.
"""

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

GIB = 1024**3
MIB = 1024**2


def _proc_status_bytes(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_worker(args: argparse.Namespace) -> None:
    """Time and measure one (implementation, M, P) row; print one JSON line."""
    import gc

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout
    from paploss.losses import PAPFunctions, pap_loss, pap_loss_dense

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)
    num, num_pos = args.num_entries, args.num_positives
    logits_data = torch.randn(num, generator=generator).to(device=device, dtype=dtype)
    targets = torch.zeros(num, dtype=torch.long)
    targets[torch.randperm(num, generator=generator)[:num_pos]] = 1
    targets = targets.to(device)
    quality_data = torch.rand(num, generator=generator).to(device=device, dtype=dtype)
    functions = PAPFunctions.published("retinanet").to(device)
    loss_fn = pap_loss_dense if args.worker == "dense" else pap_loss

    def step():
        logits = logits_data.clone().requires_grad_(True)
        quality = quality_data.clone().requires_grad_(True)
        loss_fn(logits, targets, quality, functions).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        method = "cuda max_memory_allocated"
    else:
        baseline = _proc_status_bytes("VmRSS") or 0
        method = "VmHWM after clear_refs" if _reset_peak_rss() else "ru_maxrss"
    step()  # warm-up (included in the peak)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    elif method.startswith("VmHWM"):
        peak = _proc_status_bytes("VmHWM") or 0
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = dict(time_s=statistics.median(times), peak_extra_bytes=max(peak - baseline, 0))
    result["memory_method"] = method
    print(json.dumps(result))


def run_row(impl: str, num: int, num_pos: int, args: argparse.Namespace) -> Dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        "--num-entries",
        str(num),
        "--num-positives",
        str(num_pos),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{impl} M={num} P={num_pos} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_time(seconds: float) -> str:
    return f"{seconds * 1e3:9.1f} ms" if seconds < 10 else f"{seconds:10.2f} s"


def format_memory(num_bytes: float) -> str:
    return f"{num_bytes / GIB:7.2f} GiB" if num_bytes >= GIB else f"{num_bytes / MIB:7.1f} MiB"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats, dense up to 1e7 pairs")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (3)")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6])
    parser.add_argument("--positives", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--dense-limit-gib", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--worker", choices=["dense", "fast"], help=argparse.SUPPRESS)
    parser.add_argument("--num-entries", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--num-positives", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    if args.worker:
        run_worker(args)
        return

    dense_pair_limit = 1e7 if args.quick else float("inf")
    calibration = run_row("dense", 20_000, 200, args)
    bytes_per_pair = calibration["peak_extra_bytes"] / (20_000 * 200)
    print(
        f"PAP loss forward + backward, {args.dtype} on {args.device}, {args.threads} thread(s), "
        f"median of {args.repeats} runs after 1 warm-up; peak memory = "
        f"{calibration['memory_method']} (extra over the inputs), fresh process per row. "
        f"Dense estimate: {bytes_per_pair:.0f} bytes per (positive, entry) pair."
    )
    header = (
        f"{'M':>9} {'P':>6} | {'dense time':>12} {'dense peak':>11} | {'fast time':>12} "
        f"{'fast peak':>11} | {'speed-up':>9} {'memory':>8}"
    )
    print(header)
    print("-" * len(header))
    rows = {}
    for num in (int(m) for m in args.sizes):
        for num_pos in args.positives:
            fast = run_row("fast", num, num_pos, args)
            estimate = bytes_per_pair * num * num_pos
            dense = None
            if estimate > args.dense_limit_gib * GIB:
                dense_text = f"skipped ({estimate / GIB:.0f} GiB)"
            elif num * num_pos > dense_pair_limit:
                dense_text = "skipped (--quick)"
            else:
                dense = run_row("dense", num, num_pos, args)
                dense_text = (
                    f"{format_time(dense['time_s'])} {format_memory(dense['peak_extra_bytes'])}"
                )
            ratios = ""
            if dense is not None:
                speed_up = dense["time_s"] / fast["time_s"]
                memory = dense["peak_extra_bytes"] / max(fast["peak_extra_bytes"], 1)
                ratios = f"{speed_up:8.1f}x {memory:7.1f}x"
            print(
                f"{num:>9} {num_pos:>6} | {dense_text:>24} | {format_time(fast['time_s'])} "
                f"{format_memory(fast['peak_extra_bytes'])} | {ratios}",
                flush=True,
            )
            rows[(num, num_pos)] = (dense, fast)

    print()
    row = rows.get((100_000, 1000))
    if row and row[0] is not None:
        speed_up = row[0]["time_s"] / row[1]["time_s"]
        verdict = "met" if speed_up >= 20 else "NOT met"
        print(f"target fast >= 20x faster than dense at M=1e5, P=1e3: {speed_up:.0f}x ({verdict})")
    row = rows.get((1_000_000, 1000))
    if row:
        extra = row[1]["peak_extra_bytes"]
        verdict = "met" if extra < GIB else "NOT met"
        print(
            f"target fast M=1e6, P=1e3 extra memory < 1 GiB: {format_memory(extra).strip()} "
            f"({verdict})"
        )


if __name__ == "__main__":
    main()
