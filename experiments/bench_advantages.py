#!/usr/bin/env python
"""Advantage baselines of the PPO search at equal compute, on rewards shaped like a search's.

The search's own PPO proposer (:class:`paploss.search.proposers.PPOProposer`, the default
``policy`` settings) runs ``--rounds`` rounds of ``--candidates`` samples in the 41-dimensional
space of one PAP head, once per ``search.baseline`` and seed, on a synthetic reward with the
features of proxy rewards (no detector is trained; this measures the update rule only):

* a smooth objective: ``scale · exp(-‖θ - θ*‖² / width)`` with θ* a random point near the
  identity functions (the policy's start), so rewards are small far from θ*;
* seed noise: Gaussian with ``--noise`` standard deviation (AP points);
* broken candidates: with probability ``--broken`` a candidate scores 0 (a diverged or rejected
  trial) whatever its θ.

It prints, per baseline, the mean ± std over seeds of the objective at the final policy mean
(noise-free) and of the best noise-free objective among the sampled candidates (and the
objective at the start, the identity functions): the same number
of candidates is scored for every baseline (equal compute)::

    python experiments/bench_advantages.py --seeds 20
"""

import argparse
import os
import statistics
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paploss.search.proposers import PPOProposer, ScoredCandidate  # noqa: E402
from paploss.search.settings import load_settings  # noqa: E402
from paploss.search.spaces import SearchSpace  # noqa: E402

BASELINES = ("round_mean", "rank")


def run(baseline: str, seed: int, args: argparse.Namespace) -> Dict[str, float]:
    """One search on the synthetic reward; the objective at its end and the best one seen."""
    settings = load_settings(
        os.path.join(os.path.dirname(__file__), "..", "configs", "search", "default.yaml"),
        [
            f"search.baseline={baseline}",
            f"search.seed={seed}",
            f"search.rounds={args.rounds}",
            f"search.candidates={args.candidates}",
        ],
    )
    space = SearchSpace(["RETINANET"])
    rng = np.random.default_rng(1000 + seed)
    optimum = np.clip(space.identity_theta() + rng.normal(0.0, 0.15, space.dim), 0.0, 1.0)

    def objective(theta: np.ndarray) -> float:
        return args.scale * float(np.exp(-np.sum((theta - optimum) ** 2) / args.width))

    proposer = PPOProposer.from_settings(settings, space)
    start = best = objective(np.asarray(proposer.point()))
    for _ in range(args.rounds):
        scored = []
        for candidate in proposer.propose():
            theta = np.asarray(candidate.theta)
            value = objective(theta)
            if candidate.role == "sample":
                best = max(best, value)
            broken = rng.random() < args.broken
            reward = 0.0 if broken else value + rng.normal(0.0, args.noise)
            scored.append(ScoredCandidate(candidate.theta, candidate.role, reward, "done"))
        proposer.observe(scored)
    return {"start": start, "final": objective(np.asarray(proposer.point())), "best": best}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, List[float]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--scale", type=float, default=10.0, help="objective at θ*, AP points")
    parser.add_argument("--width", type=float, default=1.0, help="squared distance scale")
    parser.add_argument("--noise", type=float, default=0.5, help="seed noise std, AP points")
    parser.add_argument("--broken", type=float, default=0.15, help="share of 0-reward candidates")
    args = parser.parse_args(argv)
    if args.seeds < 2 or args.rounds < 1 or args.candidates < 1:
        raise SystemExit("--seeds must be >= 2 (the table gives a std), --rounds/--candidates >= 1")

    results = {b: {"start": [], "final": [], "best": []} for b in BASELINES}
    for baseline in BASELINES:
        for seed in range(args.seeds):
            for key, value in run(baseline, seed, args).items():
                results[baseline][key].append(value)
    print(
        f"{args.seeds} seeds x {args.rounds} rounds x {args.candidates} candidates (+ the mean); "
        f"objective up to {args.scale} at θ*, noise std {args.noise}, {args.broken:.0%} broken"
    )
    start = results[BASELINES[0]]["start"]
    print(f"objective at the initial mean (identity): {statistics.fmean(start):.3f}")
    print("| search.baseline | objective at the final mean | best sampled objective |")
    print("| --- | ---: | ---: |")
    for baseline in BASELINES:
        final, best = results[baseline]["final"], results[baseline]["best"]
        print(
            f"| {baseline} | {statistics.fmean(final):.3f} ± {statistics.stdev(final):.3f} | "
            f"{statistics.fmean(best):.3f} ± {statistics.stdev(best):.3f} |"
        )
    return results


if __name__ == "__main__":
    main()
