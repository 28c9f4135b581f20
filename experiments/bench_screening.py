"""Screening of candidate losses: cost per candidate, share of random candidates rejected, and
(optionally) how the rejection score ranks candidates compared with proxy trainings.

Usage::

    python experiments/bench_screening.py --quick            # 32 random candidates, RetinaNet
    python experiments/bench_screening.py --candidates 64 --threads 2
    python experiments/bench_screening.py --quick --spearman 16 --search-set proxy.iterations=200

What is measured (model: ``--config``, images of ``synthetic_shapes_search_train``):

* the fixed batch: one forward of the randomly initialised detector (time, entries, positives);
* reference candidates (identity functions, the published parameters, H2 flat at 0, a decreasing
  I1 written into the knot buffers) and ``--candidates`` random candidates θ ~ U[0, 1]: the
  rejection protocol's AP before/after and gain, its wall time, and the fingerprint's wall time;
* the share of the random candidates rejected at the configured ``min_ap_gain`` and at a few
  other thresholds;
* with ``--spearman N``: the first N random candidates (and the identity) are also scored by the
  proxy training of ``--search-config`` (default: the default search's), run by the search's own
  trial runner (``paploss.search.trials.run_trial``) with the search's seed. Spearman's rank
  correlation between the screening scores and the rewards is printed. This takes about a
  minute per candidate on a CPU.

All timings are wall times on this machine with ``--threads`` torch threads.
"""

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout

DEFAULT_CONFIG = "configs/synthetic/pap_retinanet_identity.yaml"
DEFAULT_SEARCH_CONFIG = "configs/search/default.yaml"
SEARCH_TRAIN = "synthetic_shapes_search_train"
SEARCH_VAL = "synthetic_shapes_search_val"
THRESHOLDS = (1.0, 5.0, 10.0, 20.0, 40.0)


def _reference_candidates(space: Any) -> Dict[str, Dict[str, Any]]:
    """Identity and published overrides (for every searched head)."""
    from paploss.losses import PAPFunctions, published_grad_scale

    published_names = {"RETINANET": "retinanet", "RPN": "faster_rcnn_rpn"}
    published_names["ROI_HEADS"] = "faster_rcnn_roi"
    identity, published, flat_h2 = {}, {}, {}
    for head in space.heads:
        prefix = f"MODEL.PAPLOSS.{head}"
        for name, knots in PAPFunctions.identity().to_dict().items():
            identity[f"{prefix}.FUNCTIONS.{name}"] = knots
            flat_h2[f"{prefix}.FUNCTIONS.{name}"] = knots
        identity[f"{prefix}.GRAD_SCALE"] = flat_h2[f"{prefix}.GRAD_SCALE"] = 1.0
        flat_h2[f"{prefix}.FUNCTIONS.H2"] = [[0.25, 0.0], [0.5, 0.0], [0.75, 0.0], [0.9999, 0.0]]
        for name, knots in PAPFunctions.published(published_names[head]).to_dict().items():
            published[f"{prefix}.FUNCTIONS.{name}"] = knots
        published[f"{prefix}.GRAD_SCALE"] = published_grad_scale(published_names[head])
    return {"identity": identity, "published": published, "flat_h2": flat_h2}


def _decreasing_i1_results(screener: Any) -> Dict[str, Any]:
    """The rejection protocol with I1(u) = 1 - u, written into the knot buffers (the API only
    builds monotone functions)."""
    import torch

    from paploss.losses import PAPFunctions

    results = {}
    for head, protocol in screener.protocols.items():
        identity = {
            f"MODEL.PAPLOSS.{head}.FUNCTIONS.{name}": knots
            for name, knots in PAPFunctions.identity().to_dict().items()
        }
        head_loss = screener.head_losses(identity)[head]
        with torch.no_grad():
            head_loss.functions.I1.knots_y.copy_(1 - head_loss.functions.I1.knots_y)
        results[head] = protocol.run(head_loss)
    return results


def _proxy_reward(
    config: str,
    overrides: Dict[str, Any],
    search: Any,
    seed: int,
    folder: Path,
    name: str,
) -> Tuple[float, str, float]:
    """``(reward, status, seconds)`` of the search's proxy training of one candidate."""
    from paploss.search.trials import TrialSpec, run_trial

    start = time.perf_counter()
    spec = TrialSpec(
        trial_id=name,
        round=0,
        index=0,
        theta=(),
        overrides=overrides,
        config_file=str(Path(config).resolve()),
        seed=seed,
        proxy=search.proxy,
        output_dir=str(folder / name),
        early_stop=search.screening.early_stop,
    )
    result = run_trial(spec)
    reward = float("nan") if result.reward is None else float(result.reward)
    return reward, result.status, time.perf_counter() - start


def _spearman(x: List[float], y: List[float]) -> Tuple[float, float]:
    from scipy.stats import spearmanr

    result = spearmanr(x, y)
    return float(result.statistic if hasattr(result, "statistic") else result[0]), float(
        result.pvalue
    )


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="searched model's config")
    parser.add_argument("--quick", action="store_true", help="32 random candidates")
    parser.add_argument("--candidates", type=int, default=None, help="random candidates (64)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random candidates")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="screening settings, e.g. rejection.steps=200 (values parsed as YAML)",
    )
    parser.add_argument("--spearman", type=int, default=0, metavar="N", help="proxy-train N")
    parser.add_argument(
        "--search-config",
        default=DEFAULT_SEARCH_CONFIG,
        help="search settings whose proxy training (and early stop) score the candidates",
    )
    parser.add_argument(
        "--search-set",
        nargs="*",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="overrides of the search settings, e.g. proxy.iterations=200",
    )
    parser.add_argument("--json", type=str, default=None, help="also write all rows to this file")
    args = parser.parse_args(argv)
    num_random = args.candidates or (32 if args.quick else 64)

    import numpy as np
    import torch
    import yaml

    from paploss.engine import setup_cfg
    from paploss.search.screening import Screener
    from paploss.search.settings import ScreeningSettings
    from paploss.search.spaces import SearchSpace

    torch.set_num_threads(args.threads)
    data: Dict[str, Any] = {}
    for item in args.set:
        key, _, text = item.partition("=")
        section, _, name = key.partition(".")
        data.setdefault(section, {})[name] = yaml.safe_load(text)
    data.setdefault("rejection", {}).setdefault("eval_every", 25)
    settings = ScreeningSettings.from_dict(data)
    cfg = setup_cfg(args.config)
    space = SearchSpace.from_config(cfg)

    start = time.perf_counter()
    screener = Screener.build(settings, cfg, dataset=SEARCH_TRAIN)
    build_s = time.perf_counter() - start
    print(f"model: {args.config} ({space.dim} dims, heads {', '.join(space.heads)})")
    r = settings.rejection
    print(
        f"protocol: {r.steps} {r.optimizer} steps (lr logits {r.logit_lr}, boxes {r.box_lr}), "
        f"{r.num_images} images, reject if gain < {r.min_ap_gain} AP; threads {args.threads}"
    )
    for head, protocol in screener.protocols.items():
        summary = protocol.batch.summary()
        print(f"batch {head}: {summary}, AP before {protocol.ap_before:.2f}")
    print(f"batch built in {build_s:.2f} s (one network forward + data loading)\n")

    rows: List[Dict[str, Any]] = []
    candidates = dict(_reference_candidates(space))
    rng = np.random.default_rng(args.seed)
    thetas = {f"random{i:02d}": rng.uniform(size=space.dim) for i in range(num_random)}
    candidates.update({name: space.to_overrides(theta) for name, theta in thetas.items()})
    for name, overrides in candidates.items():
        t0 = time.perf_counter()
        fingerprint = screener.fingerprint(overrides)
        fingerprint_s = time.perf_counter() - t0
        results = screener.reject_score(overrides)
        rows.append(_row(name, results, fingerprint.digest, fingerprint_s, r.min_ap_gain))
    rows.insert(3, _row("decreasing_i1", _decreasing_i1_results(screener), "", 0.0, r.min_ap_gain))

    header = (
        f"{'candidate':<14} {'AP before':>9} {'AP after':>9} {'gain':>7} {'mean gain':>9} "
        f"{'decision':>9} {'protocol s':>10} {'fingerprint s':>13}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['name']:<14} {row['ap_before']:>9.2f} {row['ap_after']:>9.2f} "
            f"{row['gain']:>7.2f} {row['mean_gain']:>9.2f} {row['decision']:>9} "
            f"{row['seconds']:>10.2f} {row['fingerprint_s'] or float('nan'):>13.3f}"
        )
    random_rows = [row for row in rows if row["name"].startswith("random")]
    seconds = [row["seconds"] for row in random_rows]
    digests = {row["fingerprint"] for row in random_rows}
    print(
        f"\nrandom candidates: {len(random_rows)}; protocol seconds per candidate: mean "
        f"{statistics.mean(seconds):.2f}, median {statistics.median(seconds):.2f}, max "
        f"{max(seconds):.2f}; fingerprint: mean "
        f"{statistics.mean(row['fingerprint_s'] for row in random_rows):.3f} s; "
        f"distinct fingerprints {len(digests)}/{len(random_rows)}"
    )
    gains = [row["gain"] for row in random_rows]
    low, q1, q2, q3, high = np.percentile(gains, [0, 25, 50, 75, 100])
    print(
        f"gain of random candidates: min {low:.1f}, quartiles {q1:.1f} / {q2:.1f} / {q3:.1f}, "
        f"max {high:.1f}"
    )
    print(f"{'threshold (AP gain)':>20} {'rejected':>9} {'share':>7}")
    for threshold in sorted(set(THRESHOLDS) | {r.min_ap_gain}):
        rejected = sum(gain < threshold for gain in gains)
        marker = "  <- configured" if threshold == r.min_ap_gain else ""
        print(f"{threshold:>20.1f} {rejected:>9d} {rejected / len(gains):>7.1%}{marker}")

    if args.spearman:
        from paploss.search.settings_loading import load_settings

        search = load_settings(args.search_config, args.search_set)
        _run_spearman(args, search, rows, candidates, random_rows)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


def _row(name: str, results: Dict[str, Any], digest: str, fingerprint_s: float, threshold: float):
    gain = min(result.gain for result in results.values())
    return {
        "name": name,
        "ap_before": min(result.ap_before for result in results.values()),
        "ap_after": min(result.ap_after for result in results.values()),
        "gain": gain,
        "mean_gain": min(result.mean_gain for result in results.values()),
        "decision": "rejected" if gain < threshold else "accepted",
        "seconds": sum(result.seconds for result in results.values()),
        "fingerprint": digest,
        "fingerprint_s": fingerprint_s,
        "heads": {head: result.to_dict() for head, result in results.items()},
    }


def _run_spearman(args, search, rows, candidates, random_rows) -> None:
    chosen = [row for row in rows if row["name"] == "identity"] + random_rows[: args.spearman]
    proxy = search.proxy
    print(
        f"\nproxy trainings ({args.search_config}): {len(chosen)} candidates x "
        f"{proxy.iterations} iterations x {proxy.ims_per_batch} images ({proxy.train_dataset} -> "
        f"AP on {proxy.val_dataset}), seed {search.search.seed} for all, opts {proxy.opts}"
    )
    print(f"{'candidate':<14} {'gain':>7} {'mean gain':>9} {'reward':>7} {'status':>9} {'s':>7}")
    with tempfile.TemporaryDirectory(prefix="bench_screening_") as folder:
        for row in chosen:
            with contextlib.redirect_stdout(io.StringIO()):  # COCOeval's summary tables
                reward, status, seconds = _proxy_reward(
                    args.config,
                    candidates[row["name"]],
                    search,
                    seed=search.search.seed,
                    folder=Path(folder),
                    name=row["name"],
                )
            row.update(reward=reward, proxy_status=status, proxy_s=seconds)
            print(
                f"{row['name']:<14} {row['gain']:>7.2f} {row['mean_gain']:>9.2f} {reward:>7.2f} "
                f"{status:>9} {seconds:>7.0f}",
                flush=True,
            )
    scored = [row for row in chosen if row["reward"] == row["reward"]]
    rewards = [row["reward"] for row in scored]
    for key in ("gain", "mean_gain"):
        rho, p = _spearman([row[key] for row in scored], rewards)
        print(f"Spearman(screening {key}, proxy reward) over {len(scored)}: {rho:+.3f} (p={p:.3g})")


if __name__ == "__main__":
    main()
