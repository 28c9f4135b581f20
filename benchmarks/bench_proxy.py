#!/usr/bin/env python
"""Proxy fidelity: does a search's proxy reward rank candidate losses as a longer training does?

For ``--candidates K`` candidates of a search (the identity functions, the published functions
and ``K - 2`` samples of the search's initial policy, all in its search space) and ``--seeds S``
training seeds, the search's proxy training is run exactly as a search trial runs it
(:func:`paploss.search.trials.run_trial`, warm start included, one torch thread per trial). With
``--reference-seeds`` > 0 each candidate is also trained with the loss table's schedule
(``benchmarks/compare_losses.py``: batch 8, 1500 iterations for RetinaNet and 500 for Faster
R-CNN, no gradient clipping, ``synthetic_shapes_train``) and evaluated on ``synthetic_shapes_val``.
The table gives each candidate's proxy reward (mean ± std over seeds) and reference AP, and:

* **signal-to-noise**: the standard deviation of the candidates' mean rewards divided by the
  pooled standard deviation over seeds (the root mean of the candidates' sample variances);
  above 1 the proxy tells candidates apart more than it tells seeds apart.
* **Spearman ρ** between the candidates' mean proxy rewards and their mean reference APs.
* **seconds per trial**: the median of training + evaluation time of the proxy trials.

Trials keep their folders under ``--output`` and are reused by a later call with the same
settings (the reference trainings too, across proxies), so proxies are compared by calling the
script once per proxy::

    python benchmarks/bench_proxy.py --seeds 3 --jobs 2                        # default proxy
    python benchmarks/bench_proxy.py --set proxy.warm_start.iterations=1500    # warm start
    python benchmarks/bench_proxy.py --config configs/search/default.yaml \\
        --set proxy.iterations=800 --reference-seeds 2 --reference-device cuda
"""

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compare_losses import DEFAULT_ITERATIONS, mean_std  # noqa: E402

from paploss.search.settings import ProxySettings, SearchSettings, load_settings  # noqa: E402
from paploss.search.trials.runner import TrialResult, TrialSpec, run_trial  # noqa: E402
from paploss.search.trials.warm_start import (  # noqa: E402
    WARM_START_FOLDER,
    warm_start_spec,
    warm_start_weights,
)

#: The loss table's training and test splits.
REFERENCE_TRAIN, REFERENCE_TEST = "synthetic_shapes_train", "synthetic_shapes_val"


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str
    theta: Tuple[float, ...]
    overrides: Dict


def build_candidates(settings: SearchSettings, count: int, published_config: Optional[str]):
    """The search space and its candidates: identity, published (when a config is known), and
    samples of the search's initial policy."""
    from paploss.engine import load_config
    from paploss.search.proposers import proposer_class
    from paploss.search.space import SearchSpace

    fixed = settings.model.fixed or None
    if settings.model.heads:
        space = SearchSpace(settings.model.heads, fixed=fixed)
    else:
        space = SearchSpace.from_config(load_config(settings.model.config), fixed=fixed)
    points = [("identity", space.identity_theta())]
    if published_config:
        points.append(("published", space.theta_from_config(load_config(published_config))))
    proposer = proposer_class("ppo").from_settings(settings, space)
    samples = [c.theta for c in proposer.propose() if c.role == "sample"]
    while len(points) < count:
        if not samples:
            samples = [c.theta for c in proposer.propose() if c.role == "sample"]
        points.append((f"policy sample {len(points) - 1}", samples.pop(0)))
    candidates = [
        Candidate(name, tuple(float(v) for v in theta), space.to_overrides(theta))
        for name, theta in points[:count]
    ]
    return space, candidates


def reference_proxy(iterations: int, clip: bool, device: Optional[str]) -> ProxySettings:
    """The loss table's schedule as proxy settings (batch 8, LR drops at 75 % and 92 %)."""
    opts = {"SOLVER.CLIP_GRADIENTS.ENABLED": clip}
    if device:
        opts["MODEL.DEVICE"] = device
    return ProxySettings(
        iterations=iterations,
        ims_per_batch=8,
        train_dataset=REFERENCE_TRAIN,
        val_dataset=REFERENCE_TEST,
        lr_step_fractions=(0.75, 0.92),
        checkpoint_period=iterations,
        opts=opts,
        num_threads=1,
    )


def _tag(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def _spec(candidate, index, seed, proxy, config, folder, init_weights, early_stop) -> TrialSpec:
    slug = candidate.name.replace(" ", "_")
    return TrialSpec(
        trial_id=f"{slug}_seed{seed}",
        round=0,
        index=index,
        theta=candidate.theta,
        overrides=candidate.overrides,
        config_file=config,
        seed=seed,
        proxy=proxy,
        output_dir=os.path.join(folder, slug, f"seed{seed}"),
        early_stop=early_stop,
        init_weights=init_weights,
    )


def fidelity(proxy: Dict[str, List[float]], reference: Dict[str, List[float]]) -> Dict:
    """Signal-to-noise ratio of the proxy rewards and their Spearman ρ with the reference APs."""
    from scipy.stats import spearmanr

    names = [n for n in proxy if len(proxy[n]) >= 2]
    means = [statistics.fmean(proxy[n]) for n in names]
    variances = [statistics.variance(proxy[n]) for n in names]
    pooled = math.sqrt(statistics.fmean(variances)) if variances else math.nan
    spread = statistics.stdev(means) if len(means) > 1 else math.nan
    snr = spread / pooled if pooled > 0 else math.nan
    paired = [n for n in proxy if proxy[n] and reference.get(n)]
    rho = math.nan
    if len(paired) >= 3:
        rho = float(
            spearmanr(
                [statistics.fmean(proxy[n]) for n in paired],
                [statistics.fmean(reference[n]) for n in paired],
            )[0]
        )
    return {"snr": snr, "spread": spread, "pooled_seed_std": pooled, "spearman": rho}


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs/search/default.yaml"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="search settings overrides, e.g. proxy.iterations=800")  # fmt: skip
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--published-config",
                        help="model config with the published functions (default: the searched "
                        "config's name with 'identity' replaced by 'published', if it exists)")  # fmt: skip
    parser.add_argument("--reference-seeds", type=int, default=0,
                        help="seeds of the loss table's schedule per candidate (0: none)")  # fmt: skip
    parser.add_argument("--reference-iterations", type=int,
                        help="default: the loss table's for the searched detector")  # fmt: skip
    parser.add_argument("--reference-clip", choices=("on", "off"), default="on",
                        help="gradient clipping of the reference trainings (the loss table's "
                        "--clip; on: the optimiser of the default proxy)")  # fmt: skip
    parser.add_argument("--reference-device", help="MODEL.DEVICE of the reference trainings")
    parser.add_argument("--reference-only", action="store_true",
                        help="run only the reference trainings")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="trainings in parallel")
    parser.add_argument("--output", default=os.path.join("output", "bench_proxy"))
    args = parser.parse_args(argv)
    if min(args.candidates, args.seeds) < 2 or min(args.jobs, 1 + args.reference_seeds) < 1:
        raise SystemExit("--candidates and --seeds must be >= 2, --jobs >= 1")

    settings = load_settings(args.config, args.set)
    config = settings.model.config
    published = args.published_config
    if published is None and "identity" in os.path.basename(config):
        guess = os.path.join(
            os.path.dirname(config), os.path.basename(config).replace("identity", "published")
        )
        published = guess if os.path.isfile(guess) else None
    space, candidates = build_candidates(settings, args.candidates, published)

    from paploss.data import ensure_dataset_files
    from paploss.engine import load_config

    cfg = load_config(config)
    for name in (settings.proxy.train_dataset, settings.proxy.val_dataset, REFERENCE_TRAIN,
                 REFERENCE_TEST):  # fmt: skip
        ensure_dataset_files(name)
    detector = "retinanet" if "RetinaNet" in cfg.MODEL.META_ARCHITECTURE else "faster_rcnn"
    ref_iterations = args.reference_iterations or DEFAULT_ITERATIONS[detector]

    output = os.path.abspath(args.output)
    config_name = os.path.relpath(config, ROOT)
    proxy_tag = _tag(
        [settings.proxy.to_dict(), settings.screening.early_stop.to_dict(), config_name]
    )
    proxy_folder = os.path.join(output, f"proxy_{proxy_tag}")
    ref_proxy = reference_proxy(ref_iterations, args.reference_clip == "on", args.reference_device)
    ref_folder = os.path.join(output, f"reference_{_tag([ref_proxy.to_dict(), config_name])}")
    early_stop = settings.screening.early_stop if settings.screening.early_stop.enabled else None
    print(
        f"proxy {proxy_tag}: {settings.proxy.iterations} iterations x "
        f"{settings.proxy.ims_per_batch} images on {settings.proxy.train_dataset} -> AP on "
        f"{settings.proxy.val_dataset}, warm start {settings.proxy.warm_start.iterations} "
        f"iterations, opts {settings.proxy.opts}; {len(candidates)} candidates x {args.seeds} "
        f"seeds; reference: {ref_iterations} iterations x 8 images x {args.reference_seeds} "
        f"seeds on {REFERENCE_TRAIN} -> {REFERENCE_TEST}, clipping {args.reference_clip}; "
        f"{args.jobs} in parallel",
        flush=True,
    )

    start = time.time()
    context = multiprocessing.get_context("spawn")
    results: Dict[Tuple[str, str, int], TrialResult] = {}
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = {}
        for seed in range(args.reference_seeds):  # the longest first
            for i, candidate in enumerate(candidates):
                spec = _spec(candidate, i, seed, ref_proxy, config, ref_folder, None, None)
                futures[pool.submit(run_trial, spec)] = ("reference", candidate.name, seed)
        weights = None
        warm = warm_start_spec(
            settings.proxy, config, os.path.join(proxy_folder, WARM_START_FOLDER)
        )
        if warm is not None and not args.reference_only:
            warm_result = pool.submit(run_trial, warm).result()
            if warm_result.status != "done":
                raise SystemExit(f"the warm start failed: {warm_result.reason}")
            weights = warm_start_weights(warm)
            print(f"warm start: AP {warm_result.reward:.2f} "
                  f"({warm_result.metrics.get('total_s', 0):.0f} s)", flush=True)  # fmt: skip
        for seed in range(0 if args.reference_only else args.seeds):
            for i, candidate in enumerate(candidates):
                spec = _spec(
                    candidate, i, seed, settings.proxy, config, proxy_folder, weights, early_stop
                )
                futures[pool.submit(run_trial, spec)] = ("proxy", candidate.name, seed)
        for future in concurrent.futures.as_completed(futures):
            kind, name, seed = futures[future]
            result = future.result()
            results[(kind, name, seed)] = result
            print(
                f"  [{len(results)}/{len(futures)} {time.time() - start:5.0f} s] {kind} {name} "
                f"seed {seed}: {result.status} "
                + ("" if result.reward is None else f"{result.reward:.2f}")
                + (f" ({result.reason})" if result.reason else ""),
                flush=True,
            )

    def rewards(kind: str) -> Dict[str, List[float]]:
        table: Dict[str, List[float]] = {c.name: [] for c in candidates}
        for (k, name, _), result in results.items():
            if k == kind and result.scored:
                table[name].append(float(result.reward))
        return table

    proxy_rewards, reference_aps = rewards("proxy"), rewards("reference")
    seconds = [
        r.metrics.get("train_s", 0.0) + r.metrics.get("eval_s", 0.0)
        for (k, _, _), r in results.items()
        if k == "proxy" and r.status == "done" and not r.reused
    ]
    summary = fidelity(proxy_rewards, reference_aps)
    summary["seconds_per_trial"] = statistics.median(seconds) if seconds else math.nan
    lines = [
        "| candidate | proxy reward (mean ± std) | reference AP |",
        "| --- | ---: | ---: |",
    ]
    for candidate in candidates:
        p_mean, p_std = mean_std(proxy_rewards[candidate.name])
        r_mean, r_std = mean_std(reference_aps[candidate.name])
        reference = "–" if math.isnan(r_mean) else f"{r_mean:.2f} ± {r_std:.2f}"
        lines.append(f"| {candidate.name} | {p_mean:.2f} ± {p_std:.2f} | {reference} |")
    lines.append("")
    lines.append(
        f"signal-to-noise {summary['snr']:.2f} (spread of candidate means "
        f"{summary['spread']:.2f} / pooled seed std {summary['pooled_seed_std']:.2f}); "
        f"Spearman ρ vs reference {summary['spearman']:.2f}; "
        f"{summary['seconds_per_trial']:.0f} s per proxy trial (median, train + eval, "
        f"{settings.proxy.num_threads} thread(s), {args.jobs} trainings in parallel)"
    )
    text = "\n".join(lines)
    print(text)
    record = {
        "proxy": settings.proxy.to_dict(),
        "config": config_name,
        "candidates": [dataclasses.asdict(c) for c in candidates],
        "proxy_rewards": proxy_rewards,
        "reference_aps": reference_aps,
        "reference_iterations": ref_iterations,
        **summary,
    }
    os.makedirs(proxy_folder, exist_ok=True)
    with open(os.path.join(proxy_folder, "summary.json"), "w") as f:
        json.dump(record, f, indent=1)
    with open(os.path.join(proxy_folder, "table.md"), "w") as f:
        f.write(text + "\n")
    return record


if __name__ == "__main__":
    main()
