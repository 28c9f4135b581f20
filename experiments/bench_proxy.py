#!/usr/bin/env python
"""Proxy fidelity: does a search's proxy reward rank candidate losses as a longer training does?

For ``--candidates K`` candidates of a search (its start point ``search.init``; the published
functions when the start is elsewhere and a published config is known; the identity functions
with ``--identity``; then samples of the first round of its method, ``search.method``: for the
default CMA-ES search, working losses near the published functions) and ``--seeds S`` training
seeds, the search's proxy training is run exactly as a search trial runs it
(:func:`paploss.search.trials.run_trial`, warm start included, one torch thread per trial). With
``--reference-seeds`` > 0 each candidate is also trained with the loss table's schedule
(``experiments/compare_losses.py``: batch 8, its iterations per detector, gradient clipping on
as in the table unless ``--reference-clip off``, ``synthetic_shapes_train``) through the same
trial runner, and evaluated on ``synthetic_shapes_val``.
The table gives each candidate's proxy reward (mean ± std over seeds) and reference AP, and:

* **signal-to-noise**: the standard deviation of the candidates' mean rewards divided by the
  pooled standard deviation over seeds (the root mean of the candidates' sample variances);
  above 1 the proxy tells candidates apart more than it tells seeds apart.
* **Spearman ρ** between the candidates' mean proxy rewards and their mean reference APs.
* **seconds per trial**: the median of training + evaluation time of the proxy trials.

With ``--halving H`` every candidate × seed also runs the partial training of the search's
successive halving (``search.halving``: the same trial stopped after ``ceil(H * iterations)``
iterations of its schedule, in a folder of its own, so the full trials are reused), and the
script prints whether the partial reward ranks candidates as the full proxy reward does:
Spearman ρ between the candidates' mean partial and mean full rewards, per seed how many of the
top ``ceil(K/2)`` candidates by full reward the partial selection keeps (and whether it keeps the
best), and the compute of a halving round relative to a full one (in iterations, and measured:
partial trainings + evaluations, plus the continued candidates' remaining training and second
evaluation).

Trials keep their folders under ``--output`` and are reused by a later call with the same
settings (the reference trainings too, across proxies), so proxies are compared by calling the
script once per proxy::

    python experiments/bench_proxy.py --seeds 3 --jobs 2                        # default proxy
    python experiments/bench_proxy.py --set proxy.warm_start.iterations=1500    # warm start
    python experiments/bench_proxy.py --config configs/search/default.yaml \\
        --set proxy.iterations=800 --reference-seeds 2 --reference-device cuda
    python experiments/bench_proxy.py --seeds 3 --halving 0.5                   # halving
    python experiments/bench_proxy.py --candidates 12 --seeds 1 --reference-seeds 2 --jobs 2
        # the default search's proxy among 12 working candidates (one proxy training each, as the
        # search scores them; signal-to-noise needs --seeds 2 or more)
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

from paploss.search.settings import SearchLoopSettings  # noqa: E402
from paploss.search.settings import ProxySettings, SearchSettings  # noqa: E402
from paploss.search.settings_loading import load_settings  # noqa: E402
from paploss.search.steps.halving import better_half  # noqa: E402
from paploss.search.trials.runner import (  # noqa: E402
    TrialResult,
    TrialSpec,
    remove_checkpoints,
    run_trial,
)
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


def build_candidates(
    settings: SearchSettings, count: int, published_config: Optional[str], identity: bool
):
    """The search space and its candidates: the search's start point (``search.init``), the
    identity functions (``identity``, when the start is elsewhere), the published functions (when
    a config is known and the start is elsewhere), then samples of the search method's first
    round (for ``cmaes``: a Gaussian of step ``cmaes.sigma`` around the start)."""
    from paploss.engine import load_config
    from paploss.search.proposers import proposer_class
    from paploss.search.spaces import SearchSpace

    fixed = settings.model.fixed or None
    if settings.model.heads:
        space = SearchSpace(settings.model.heads, fixed=fixed)
    else:
        space = SearchSpace.from_config(load_config(settings.model.config), fixed=fixed)
    init = settings.search.init
    start_name = init if init in ("identity", "published") else f"start ({os.path.basename(init)})"
    points = [(start_name, space.initial_theta(init))]
    if identity and init != "identity":
        points.append(("identity", space.identity_theta()))
    if published_config and init != "published":
        points.append(("published", space.theta_from_config(load_config(published_config))))
    wanted = max(count - len(points), 4)  # one first round of the samples still wanted
    first_round = dataclasses.replace(
        settings, search=dataclasses.replace(settings.search, candidates=wanted)
    )
    proposer = proposer_class(settings.search.method).from_settings(first_round, space)
    samples = [c.theta for c in proposer.propose() if c.role == "sample"]
    method = settings.search.method
    points += [(f"{method} sample {i + 1}", theta) for i, theta in enumerate(samples)]
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


def halving_fidelity(
    names: Sequence[str],
    full: Dict[Tuple[str, int], TrialResult],
    partial: Dict[Tuple[str, int], TrialResult],
    seeds: int,
    share: float,
) -> Dict:
    """How well the partial reward picks the better half of the candidates (see the module
    docstring), and the compute of a halving round relative to a full one."""
    from scipy.stats import spearmanr

    def reward(result: TrialResult) -> float:
        return float(result.reward) if result.scored else math.nan

    keep = math.ceil(len(names) / 2)
    overlaps, best_kept = [], []
    for seed in range(seeds):
        full_r = [reward(full[(n, seed)]) for n in names]
        part_r = [reward(partial[(n, seed)]) for n in names]
        if any(math.isnan(r) for r in full_r + part_r):
            continue
        top_full, selected = better_half(full_r), set(better_half(part_r))
        overlaps.append(len(set(top_full) & selected))
        best_kept.append(top_full[0] in selected)
    full_means = [statistics.fmean(reward(full[(n, s)]) for s in range(seeds)) for n in names]
    part_means = [statistics.fmean(reward(partial[(n, s)]) for s in range(seeds)) for n in names]
    rho = float(spearmanr(part_means, full_means)[0])

    def seconds(result: TrialResult) -> Tuple[float, float]:
        return result.metrics.get("train_s", math.nan), result.metrics.get("eval_s", math.nan)

    full_s = partial_s = 0.0
    for seed in range(seeds):
        part_r = [reward(partial[(n, seed)]) for n in names]
        continued = set(better_half([-math.inf if math.isnan(r) else r for r in part_r]))
        for i, name in enumerate(names):
            train_s, eval_s = seconds(full[(name, seed)])
            p_train, p_eval = seconds(partial[(name, seed)])
            full_s += train_s + eval_s
            partial_s += p_train + p_eval
            if i in continued:
                partial_s += train_s * (1 - share) + eval_s
    return {
        "spearman_partial_full": rho,
        "partial_means": dict(zip(names, part_means)),
        "top_half_overlap": overlaps,
        "best_kept": best_kept,
        "keep": keep,
        "iteration_ratio": (len(names) * share + keep * (1 - share)) / len(names),
        "time_ratio": partial_s / full_s if full_s > 0 else math.nan,
    }


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
    parser.add_argument(
        "--identity",
        action="store_true",
        help="also score the identity functions when the search starts elsewhere",
    )
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
    parser.add_argument("--halving", type=float, default=0.0,
                        help="also run the partial trainings of search.halving=H and compare "
                        "their ranking with the full proxy's")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="trainings in parallel")
    parser.add_argument("--output", default=os.path.join("output", "bench_proxy"))
    args = parser.parse_args(argv)
    if args.candidates < 2 or min(args.seeds, args.jobs, 1 + args.reference_seeds) < 1:
        raise SystemExit("--candidates must be >= 2, --seeds and --jobs >= 1")
    if args.seeds < 2 and args.reference_seeds < 1:
        raise SystemExit("--seeds 1 measures nothing without --reference-seeds (signal-to-noise "
                         "needs 2 proxy seeds)")  # fmt: skip

    settings = load_settings(args.config, args.set)
    try:
        stop_after = SearchLoopSettings(halving=args.halving).partial_iterations(
            settings.proxy.iterations
        )
    except ValueError as exc:
        raise SystemExit(f"--halving: {exc}") from None
    config = settings.model.config
    published = args.published_config
    if published is None and "identity" in os.path.basename(config):
        guess = os.path.join(
            os.path.dirname(config), os.path.basename(config).replace("identity", "published")
        )
        published = guess if os.path.isfile(guess) else None
    space, candidates = build_candidates(settings, args.candidates, published, args.identity)

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
        partial_folders: Dict[Tuple[str, int], str] = {}  # (candidate, seed) -> its folder
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
                if stop_after is not None:
                    folder = os.path.join(proxy_folder, f"partial_{stop_after}")
                    partial = _spec(
                        candidate, i, seed, settings.proxy, config, folder, weights, early_stop
                    )
                    partial = dataclasses.replace(partial, stop_after=stop_after)
                    futures[pool.submit(run_trial, partial)] = ("partial", candidate.name, seed)
                    partial_folders[(candidate.name, seed)] = partial.output_dir
        for future in concurrent.futures.as_completed(futures):
            kind, name, seed = futures[future]
            result = future.result()
            results[(kind, name, seed)] = result
            if kind == "partial" and not result.reused:  # nothing continues from it here
                remove_checkpoints(partial_folders[(name, seed)])
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
    halving = None
    if stop_after is not None:
        names = [c.name for c in candidates]
        partial_results = {n: [] for n in names}
        for (kind, name, _), result in results.items():
            if kind == "partial" and result.scored:
                partial_results[name].append(result)
        halving = halving_fidelity(
            names,
            {(n, s): r for (k, n, s), r in results.items() if k == "proxy"},
            {(n, s): r for (k, n, s), r in results.items() if k == "partial"},
            args.seeds,
            args.halving,
        )
        lines += [
            "",
            f"successive halving {args.halving:g}: partial training {stop_after} of "
            f"{settings.proxy.iterations} iterations; the better {halving['keep']} of "
            f"{len(names)} continue",
            "",
            "| candidate | partial reward (mean ± std) | full proxy reward (mean ± std) |",
            "| --- | ---: | ---: |",
        ]
        for name in names:
            p_mean, p_std = mean_std([float(r.reward) for r in partial_results[name]])
            f_mean, f_std = mean_std(proxy_rewards[name])
            lines.append(f"| {name} | {p_mean:.2f} ± {p_std:.2f} | {f_mean:.2f} ± {f_std:.2f} |")
        overlaps = ", ".join(f"{o}/{halving['keep']}" for o in halving["top_half_overlap"])
        lines += [
            "",
            f"Spearman ρ partial vs full {halving['spearman_partial_full']:.2f}; top-half "
            f"overlap per seed {overlaps}; best candidate kept in "
            f"{sum(halving['best_kept'])}/{len(halving['best_kept'])} seeds; compute of a "
            f"halving round / a full round: {halving['iteration_ratio']:.2f} in iterations, "
            f"{halving['time_ratio']:.2f} measured (evaluations included)",
        ]
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
    if halving is not None:
        record["halving"] = {"share": args.halving, "stop_after": stop_after, **halving}
    os.makedirs(proxy_folder, exist_ok=True)
    suffix = "" if stop_after is None else f"_halving_{stop_after}"
    with open(os.path.join(proxy_folder, f"summary{suffix}.json"), "w") as f:
        json.dump(record, f, indent=1)
    with open(os.path.join(proxy_folder, f"table{suffix}.md"), "w") as f:
        f.write(text + "\n")
    return record


if __name__ == "__main__":
    main()
