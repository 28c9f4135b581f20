#!/usr/bin/env python
"""Search methods over θ and their advantage baselines at equal compute, on rewards shaped like a
search's.

Each method runs ``--rounds`` rounds of ``--candidates`` samples (plus its mean) in the
41-dimensional space of one PAP head, once per seed, on a synthetic reward with the features of
proxy rewards (no detector is trained; this measures the update rules only):

* a smooth objective: ``scale · exp(-‖θ - θ*‖² / width)`` with θ* a random point near the
  start (the identity functions, or the published ones with ``--init published``), so rewards
  are small far from θ*;
* seed noise: Gaussian with ``--noise`` standard deviation (AP points);
* broken candidates: with probability ``--broken`` a candidate scores 0 (a diverged or rejected
  trial) whatever its θ.

Methods (rows): the search's own proposers with the default settings of
``configs/search/default.yaml``: ``ppo`` with ``search.baseline`` ``round_mean`` and ``rank``,
``cmaes`` with ``cmaes.sigma`` 0.1 and 0.05; and ``random``: Gaussian samples of fixed
σ = 0.1 around the start (best of all). Every row scores the same number of candidates.

Columns: the noise-free objective at the method's final point (mean), the best noise-free
objective among the sampled candidates, and the objective of the candidate a search would
declare best: by its single noisy reward, or after a recheck of the top 3 with one more noisy
reward each (``search.recheck``; best mean of two), which shows the winner's curse::

    python experiments/bench_advantages.py --seeds 20
    python experiments/bench_advantages.py --seeds 20 --init published --rounds 6 --candidates 7
"""

import argparse
import os
import statistics
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paploss.search.proposers import ScoredCandidate, proposer_class  # noqa: E402
from paploss.search.settings_loading import load_settings  # noqa: E402
from paploss.search.spaces import SearchSpace  # noqa: E402

#: Rows: (name, search settings overrides); ``random`` is this benchmark's own baseline.
METHODS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("ppo, round_mean", ("search.method=ppo", "search.baseline=round_mean")),
    ("ppo, rank", ("search.method=ppo", "search.baseline=rank")),
    ("cmaes, sigma 0.1", ("search.method=cmaes", "cmaes.sigma=0.1")),
    ("cmaes, sigma 0.05", ("search.method=cmaes", "cmaes.sigma=0.05")),
    ("random, sigma 0.1", ()),
)
RECHECK_TOP = 3
COLUMNS = ("final", "best", "declared", "rechecked")


def run(method: str, overrides: Sequence[str], seed: int, args: argparse.Namespace) -> Dict:
    """One search on the synthetic reward: the objective at its end, the best one sampled and
    that of the declared best (by a single reward, and after a recheck)."""
    settings = load_settings(
        os.path.join(os.path.dirname(__file__), "..", "configs", "search", "default.yaml"),
        [
            *overrides,
            f"search.init={args.init}",
            f"search.seed={seed}",
            f"search.rounds={args.rounds}",
            f"search.candidates={args.candidates}",
        ],
    )
    space = SearchSpace(["RETINANET"])
    start = space.initial_theta(args.init)
    rng = np.random.default_rng(1000 + seed)
    optimum = np.clip(start + rng.normal(0.0, 0.15, space.dim), 0.0, 1.0)

    def objective(theta: np.ndarray) -> float:
        return args.scale * float(np.exp(-np.sum((np.asarray(theta) - optimum) ** 2) / args.width))

    def noisy(theta: np.ndarray) -> float:
        broken = rng.random() < args.broken
        return 0.0 if broken else objective(theta) + rng.normal(0.0, args.noise)

    seen: List[Tuple[float, np.ndarray]] = []  # (noisy reward, θ) of every candidate
    final: Optional[np.ndarray] = None  # random search learns no point
    if method.startswith("random"):
        for _ in range(args.rounds * (args.candidates + 1)):
            theta = np.clip(start + rng.normal(0.0, 0.1, space.dim), 0.0, 1.0)
            seen.append((noisy(theta), theta))
    else:
        proposer = proposer_class(settings.search.method).from_settings(settings, space)
        for _ in range(args.rounds):
            scored = []
            for candidate in proposer.propose():
                reward = noisy(np.asarray(candidate.theta))
                seen.append((reward, np.asarray(candidate.theta)))
                scored.append(ScoredCandidate(candidate.theta, candidate.role, reward, "done"))
            proposer.observe(scored)
        final = np.asarray(proposer.point())
    ranked = sorted(seen, key=lambda pair: -pair[0])
    top = ranked[:RECHECK_TOP]
    rechecked = max(top, key=lambda pair: (pair[0] + noisy(pair[1])) / 2.0)
    return {
        "start": objective(start),
        "final": float("nan") if final is None else objective(final),
        "best": max(objective(theta) for _, theta in seen),
        "declared": objective(ranked[0][1]),
        "rechecked": objective(rechecked[1]),
    }


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, List[float]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--init", choices=("identity", "published"), default="identity")
    parser.add_argument("--scale", type=float, default=10.0, help="objective at θ*, AP points")
    parser.add_argument("--width", type=float, default=1.0, help="squared distance scale")
    parser.add_argument("--noise", type=float, default=0.5, help="seed noise std, AP points")
    parser.add_argument("--broken", type=float, default=0.15, help="share of 0-reward candidates")
    args = parser.parse_args(argv)
    if args.seeds < 2 or args.rounds < 1 or args.candidates < 4:
        raise SystemExit(
            "--seeds must be >= 2 (the table gives a std), --rounds >= 1, --candidates >= 4 "
            "(the cmaes method's smallest population)"
        )

    results = {name: {key: [] for key in ("start",) + COLUMNS} for name, _ in METHODS}
    for name, overrides in METHODS:
        for seed in range(args.seeds):
            for key, value in run(name, overrides, seed, args).items():
                results[name][key].append(value)
    print(
        f"{args.seeds} seeds x {args.rounds} rounds x {args.candidates} candidates (+ the mean); "
        f"objective up to {args.scale} at θ*, noise std {args.noise}, {args.broken:.0%} broken"
    )
    start = results[METHODS[0][0]]["start"]
    print(f"objective at the start ({args.init}): {statistics.fmean(start):.3f}")
    print(
        "| method | objective at the final mean | best sampled | declared best (one reward) "
        f"| declared best (top {RECHECK_TOP} rechecked) |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, _ in METHODS:
        cells = [_mean_std(results[name][key]) for key in COLUMNS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return results


def _mean_std(values: List[float]) -> str:
    if all(np.isnan(values)):
        return "—"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


if __name__ == "__main__":
    main()
