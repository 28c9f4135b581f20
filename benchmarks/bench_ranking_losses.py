"""Forward + backward time of the ranking-loss baselines: loop reference vs fast exact version.

For AP-Loss, aLRP Loss and Rank & Sort Loss, times one forward + backward pass of the published
per-positive loop (``paploss.losses.ranking_reference``) and of the sort + prefix-sum version used
by default, at P positives and N negatives, and prints the median time of each with their ratio.
Both are timed in the same run, on the same inputs; the largest gradient difference between them
is printed as a check.

Inputs: negatives' logits ~ N(0, 1) and positives' ~ N(1, 1), so nearly every negative lies within
delta of some positive (the pruning of low negatives removes little: a hard case for both).

    python benchmarks/bench_ranking_losses.py            # P in {100, 1000} x N in {1e4, 1e5}
    python benchmarks/bench_ranking_losses.py --quick    # two sizes, loop timed once
    python benchmarks/bench_ranking_losses.py --fixed-shapes  # the accelerators' way, on the CPU

Times are medians over ``--runs`` passes of the loop (one pass beyond ``--max-loop-work`` pairs, and
with ``--quick``) and at least five of the fast version, timed alternately so that both see the
same machine load. On a shared machine, compare the ratios of one run rather than absolute times
across runs.

``--fixed-shapes`` times the fast version as it runs on accelerators (every entry an anchor, the
positives a mask: no host synchronisation, :mod:`paploss.losses._devices`) instead of the CPU's
gathered positives; on the CPU that way is slower.
"""

import argparse
import statistics
import time
from typing import Callable, List, Tuple

import torch

from paploss.losses import _devices
from paploss.losses.alrp_loss import alrp_loss
from paploss.losses.ap_loss import ap_loss
from paploss.losses.rank_sort_loss import rank_sort_loss
from paploss.losses.ranking_reference import (
    alrp_loss_reference,
    ap_loss_reference,
    rank_sort_loss_reference,
)

LossCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _make_inputs(num_pos: int, num_neg: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.cat(
        [
            torch.randn(num_pos, generator=gen, dtype=dtype) + 1,
            torch.randn(num_neg, generator=gen, dtype=dtype),
        ]
    )
    targets = torch.cat([torch.ones(num_pos), torch.zeros(num_neg)]).long()
    permutation = torch.randperm(num_pos + num_neg, generator=gen)
    # Quality / localisation error per entry (read at the positives only).
    per_positive = torch.rand(num_pos + num_neg, generator=gen, dtype=dtype)
    return logits[permutation], targets[permutation], per_positive[permutation]


def _losses() -> List[Tuple[str, LossCall, LossCall]]:
    def ap(fn):
        return lambda logits, targets, extra, _: fn(logits, targets)

    def alrp(fn):
        def call(logits, targets, extra, extra_leaf):
            cls_loss, loc_loss = fn(logits, targets, extra_leaf)
            return cls_loss + loc_loss

        return call

    def rs(fn):
        return lambda logits, targets, extra, _: fn(logits, targets, extra)

    return [
        ("AP-Loss", ap(ap_loss_reference), ap(ap_loss)),
        ("aLRP Loss", alrp(alrp_loss_reference), alrp(alrp_loss)),
        ("RS Loss", rs(rank_sort_loss_reference), rs(rank_sort_loss)),
    ]


# Wall-clock time by default; "cpu" (this process's CPU time) is steadier on a shared machine.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _time_once(
    call: LossCall,
    inputs: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    clock: Callable[[], float],
) -> Tuple[float, torch.Tensor]:
    """Seconds of one forward + backward pass, and the logits' gradient."""
    logits, targets, extra = inputs
    leaf = logits.clone().requires_grad_(True)
    extra_leaf = extra.clone().requires_grad_(True)
    start = clock()
    call(leaf, targets, extra, extra_leaf).backward()
    return clock() - start, leaf.grad


def _time_pair(
    loop_call: LossCall,
    fast_call: LossCall,
    inputs: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    loop_runs: int,
    fast_runs: int,
    clock: Callable[[], float] = time.perf_counter,
) -> Tuple[float, float, float]:
    """Median seconds of the loop and of the fast version, timed alternately (so that both see the
    same machine load), and the largest difference between their gradients."""
    loop_times: List[float] = []
    fast_times: List[float] = []
    loop_grad = fast_grad = None
    for run in range(max(loop_runs, fast_runs)):
        if run < loop_runs:
            seconds, loop_grad = _time_once(loop_call, inputs, clock)
            loop_times.append(seconds)
        if run < fast_runs:
            seconds, fast_grad = _time_once(fast_call, inputs, clock)
            fast_times.append(seconds)
    grad_diff = (loop_grad - fast_grad).abs().max().item()
    return statistics.median(loop_times), statistics.median(fast_times), grad_diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two sizes, loop timed once")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument(
        "--dtype", choices=["float32", "float64"], default="float32", help="logits dtype"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall", help="wall-clock or process CPU time"
    )
    parser.add_argument(
        "--max-loop-work",
        type=float,
        default=1e9,
        help="time the loop only once above this many (positive, entry) pairs",
    )
    parser.add_argument(
        "--fixed-shapes",
        action="store_true",
        help="time the fast version's fixed-shape way (that of accelerators) on the CPU",
    )
    args = parser.parse_args()
    if args.fixed_shapes:
        _devices.INDEXED_DEVICES = ()
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    if args.quick:
        sizes, runs = [(100, 10_000), (1000, 100_000)], 1
    else:
        sizes = [(p, n) for p in (100, 1000) for n in (10_000, 100_000)]
        runs = args.runs
    fast_runs = max(runs, 5)

    # Warm-up (allocator, first-call overheads) on a small problem.
    small_inputs = _make_inputs(20, 200, dtype)
    for _, loop_call, fast_call in _losses():
        _time_pair(loop_call, fast_call, small_inputs, 1, 1)

    print(
        f"forward + backward, CPU, {args.dtype}, {torch.get_num_threads()} thread(s); "
        f"median {args.clock} time; fast version: "
        f"{'fixed shapes' if args.fixed_shapes else 'gathered positives'}"
    )
    header = f"{'loss':<10} {'P':>5} {'N':>7} {'loop (s)':>10} {'fast (s)':>10} {'speed-up':>9}"
    header += f" {'runs loop/fast':>15} {'max |grad diff|':>16}"
    print(header)
    print("-" * len(header))
    for num_pos, num_neg in sizes:
        inputs = _make_inputs(num_pos, num_neg, dtype)
        for name, loop_call, fast_call in _losses():
            # --max-loop-work: beyond this many (positive, entry) pairs the loop is timed once.
            loop_runs = 1 if num_pos * (num_pos + num_neg) > args.max_loop_work else runs
            loop_time, fast_time, grad_diff = _time_pair(
                loop_call, fast_call, inputs, loop_runs, fast_runs, clock
            )
            print(
                f"{name:<10} {num_pos:>5} {num_neg:>7} {loop_time:>10.4f} {fast_time:>10.4f} "
                f"{loop_time / fast_time:>8.1f}x {f'{loop_runs}/{fast_runs}':>15} "
                f"{grad_diff:>16.2e}"
            )


if __name__ == "__main__":
    main()
