"""Loss search from scratch with only the cheap screening: how many graph losses it explores, how
many the checks remove, what the checks would save in front of proxy trainings, and the best
screened graphs; evolution against random search on the same number of candidates.

Usage::

    python experiments/bench_evolution.py                        # 300 candidates per method
    python experiments/bench_evolution.py --candidates 100 --methods evolution
    python experiments/bench_evolution.py --proxy-seconds 60 --output output/bench_evolution.json
    python experiments/bench_evolution.py --score-table          # rejection scores of known graphs
    python experiments/bench_evolution.py --score-table --options "linear, final, 200 steps"

What runs (model: ``--config``, a Faster R-CNN with ``LOSS: "graph"``; images of
``synthetic_shapes_search_train``): the ROI head's fixed batch of a random detector is recorded
once; then each method (``Evolution``, ``RandomSearch`` of
``paploss.search.proposers.graph_evolution``) proposes ``--per-round`` candidates at a time, each
candidate is

* fingerprinted on the probes (validity: finite loss and gradients, a gradient in each searched
  branch; gradient equivalence with every earlier valid candidate), and
* scored by the search's loss-rejection protocol (``--steps`` Adam steps on the predictions, AP
  measured every ``--eval-every`` steps), *always*, also when the pipeline would have stopped
  earlier, so that every row of the ablation is measured on the same candidates;

and the method is told the reward ``mean AP gain over the protocol's curve`` of the candidates
the pipeline accepts (``None`` for invalid, duplicate and rejected ones).

Printed:

* per method: candidates explored per second by the screening pipeline (validity and equivalence
  first, the protocol only for new valid candidates; measured times), the shares of invalid,
  duplicate, rejected and accepted candidates, and the best accepted graphs;
* the ablation in the shape of AutoLoss-Zero's table: cost per explored candidate and explored
  candidates per CPU-hour when every candidate that passes the checks of a row is proxy-trained
  for ``--proxy-seconds`` (modelled; the screening times are measured): naive evolution (every
  candidate trained), + loss rejection, + equivalence check, + the validity check on the probes
  (this project's early stop of invalid losses before training; the stop of trainings that
  become invalid later, ``screening.early_stop``, acts inside the proxy trainings, not run here);
* the reward of CE + GIoU and CE + L1 written as graphs, for scale;
* evolution vs random search: best reward and accepted candidates on the same candidate budget.

With ``--score-table`` it runs only the rejection protocol on a fixed list of hand-written graphs
(working ones: CE + L1, CE + GIoU, CE + a smooth-L1-like loss, a focal-like loss, scaled
variants; weak or degenerate ones: CE on the negatives only ("push negatives down"), on the
positives only, a classification loss scaled to nothing ("box loss only"), a box loss scaled to
nothing, a loss that pushes every score down) under each option of ``SCORE_OPTIONS`` and prints
each graph's rejection score per option and, in brackets, as a share of CE + L1's score on the
same batch: which option separates degenerate from working losses, and orders working ones.
The ``linear`` options (``screening.rejection.predictions: linear``) train a fresh linear box
predictor on the box features of the warm start of ``HEAD_PROXY_SEARCH`` (its model trained once
with its stock losses, 600 iterations x 4 images; trained on first use into ``--warm-start``, or
``--weights``) and measure AP on 8 held-out images of ``synthetic_shapes_search_val``;
``--options`` picks columns::

    python experiments/bench_evolution.py --score-table \
        --options "auc, 20 steps, lr/10" "linear, final, 200 steps" "linear, auc, 200 steps"

All timings are wall times on this machine with ``--threads`` torch threads.
"""

import argparse
import dataclasses
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout

DEFAULT_CONFIG = "configs/synthetic/graph_faster_rcnn.yaml"
SEARCH_TRAIN = "synthetic_shapes_search_train"
SEARCH_VAL = "synthetic_shapes_search_val"
#: The search whose warm start ``--score-table``'s linear rejection scores start from.
HEAD_PROXY_SEARCH = "configs/search/evolution_faster_rcnn_head_proxy.yaml"
#: Where that warm start is trained once and cached (``output/`` is not versioned).
DEFAULT_WARM_START = "output/bench_evolution/warm_start"
#: Rejection thresholds (AP points) of the threshold table.
THRESHOLDS = (5.0, 20.0, 50.0, 80.0, 90.0)
#: Proxy training of the default search (400 iterations x 4 images, evaluation included, one
#: core; configs/search/default.yaml).
DEFAULT_PROXY_SECONDS = 33.0


@dataclass
class Record:
    """One candidate through every check."""

    index: int
    origin: str
    cls: str
    box: str
    invalid: Optional[str]
    duplicate_of: Optional[int]
    gain: float
    mean_gain: float
    passed: bool
    probe_seconds: float
    rejection_seconds: float

    @property
    def accepted(self) -> bool:
        return self.invalid is None and self.duplicate_of is None and self.passed

    @property
    def pipeline_seconds(self) -> float:
        """Cost in the screening pipeline: the protocol runs only for new valid candidates."""
        new_valid = self.invalid is None and self.duplicate_of is None
        return self.probe_seconds + (self.rejection_seconds if new_valid else 0.0)


def _measure(screener: Any, registry: Any, candidate: Any, min_gain: float) -> Record:
    start = time.perf_counter()
    fingerprint = screener.fingerprint(candidate)
    reason = fingerprint.invalid_reason(screener.branches)
    duplicate_of = None
    if reason is None:
        duplicate_of = registry.lookup(fingerprint.digest)
        if duplicate_of is None:
            registry.register(fingerprint.digest, candidate.index)
    probe_seconds = time.perf_counter() - start
    (result,) = screener.reject_score(candidate).values()
    return Record(
        index=candidate.index,
        origin=candidate.origin,
        cls=str(candidate.cls),
        box=str(candidate.box),
        invalid=reason,
        duplicate_of=duplicate_of,
        gain=result.gain,
        mean_gain=result.mean_gain,
        passed=result.gain >= min_gain,
        probe_seconds=probe_seconds,
        rejection_seconds=result.seconds,
    )


def _run_method(method: str, screener: Any, args: argparse.Namespace) -> List[Record]:
    from paploss.search.proposers.graph_evolution import Evolution, EvolutionSettings, RandomSearch
    from paploss.search.screening import EquivalenceRegistry

    settings = EvolutionSettings(
        seed=args.seed, population_size=args.population, tournament_size=args.tournament
    )
    search = (Evolution if method == "evolution" else RandomSearch)(settings)
    registry = EquivalenceRegistry()
    records: List[Record] = []
    start = time.perf_counter()
    while len(records) < args.candidates:
        candidates = search.propose(min(args.per_round, args.candidates - len(records)))
        batch = [_measure(screener, registry, c, args.min_gain) for c in candidates]
        search.tell(candidates, [r.mean_gain if r.accepted else None for r in batch])
        records += batch
        if len(records) % 50 < args.per_round:
            best = search.best
            best_text = "-" if best is None else f"{best[1]:.1f}"
            print(f"  [{method}] {len(records)} candidates, best reward {best_text}", flush=True)
    print(f"  [{method}] {time.perf_counter() - start:.0f} s wall (every check on every candidate)")
    return records


def _share(records: List[Record], predicate) -> str:
    return f"{100.0 * sum(1 for r in records if predicate(r)) / max(len(records), 1):5.1f} %"


def _summary(method: str, records: List[Record], top: int) -> None:
    pipeline = sum(r.pipeline_seconds for r in records)
    probe = statistics.mean(r.probe_seconds for r in records)
    rejection = statistics.mean(r.rejection_seconds for r in records)
    print(f"\n## {method}: {len(records)} candidates")
    print(f"explored per second (screening pipeline) : {len(records) / pipeline:8.2f}")
    print(f"mean probe check (validity + fingerprint): {1000 * probe:8.1f} ms")
    print(f"mean rejection protocol                  : {1000 * rejection:8.1f} ms")
    print(f"invalid on the probes                    : {_share(records, lambda r: r.invalid)}")
    duplicate = _share(records, lambda r: r.invalid is None and r.duplicate_of is not None)
    print(f"duplicate (gradient-equivalent)          : {duplicate}")
    rejected = _share(
        records, lambda r: r.invalid is None and r.duplicate_of is None and not r.passed
    )
    print(f"rejected by the protocol                 : {rejected}")
    print(f"accepted                                 : {_share(records, lambda r: r.accepted)}")
    accepted = sorted((r for r in records if r.accepted), key=lambda r: -r.mean_gain)
    if accepted:
        print(f"\nbest accepted graphs (reward = mean AP gain over the protocol's curve):")
        print(f"{'#':>5} {'origin':>8} {'reward':>7} {'gain':>6}  cls | box")
        for r in accepted[:top]:
            print(f"{r.index:5d} {r.origin:>8} {r.mean_gain:7.1f} {r.gain:6.1f}  {r.cls} | {r.box}")


def _ablation(records: List[Record], proxy_seconds: float) -> None:
    """Cost per explored candidate when what passes a row's checks is proxy-trained."""
    t_proxy = proxy_seconds
    rows = [
        ("naive evolution (every candidate trained)", lambda r: t_proxy),
        (
            "+ loss rejection",
            lambda r: r.rejection_seconds + (t_proxy if r.passed else 0.0),
        ),
        (
            "+ gradient-equivalence check",
            lambda r: r.probe_seconds
            + (0.0 if r.duplicate_of is not None else r.rejection_seconds)
            + (t_proxy if r.passed and r.duplicate_of is None else 0.0),
        ),
        (
            "+ validity check on the probes",
            lambda r: r.pipeline_seconds + (t_proxy if r.accepted else 0.0),
        ),
    ]
    naive = t_proxy
    print(f"\n## ablation (proxy training {t_proxy:.0f} s each, modelled; screening measured)")
    print(f"{'setting':<44} {'s / candidate':>13} {'per CPU-hour':>13} {'speed-up':>9}")
    for name, cost in rows:
        mean = statistics.mean(cost(r) for r in records)
        print(f"{name:<44} {mean:13.2f} {3600.0 / mean:13.0f} {naive / mean:8.1f}x")
    print("\nall checks, by rejection threshold (AP gain of the protocol's last step):")
    print(
        f"{'min gain':>9} {'accepted':>9} {'s / candidate':>13} {'per CPU-hour':>13} {'speed-up':>9}"
    )
    for threshold in THRESHOLDS:
        passed = [
            r.invalid is None and r.duplicate_of is None and r.gain >= threshold for r in records
        ]
        mean = statistics.mean(
            r.pipeline_seconds + (t_proxy if ok else 0.0) for r, ok in zip(records, passed)
        )
        share = 100.0 * sum(passed) / len(records)
        print(
            f"{threshold:9.0f} {share:8.1f}% {mean:13.2f} {3600.0 / mean:13.0f} {naive / mean:8.1f}x"
        )


def _references(screener: Any, args: argparse.Namespace) -> None:
    """The reward of the hand-written losses, written as graphs, for scale."""
    from paploss.losses.graph import CE_EXPRESSION, GIOU_EXPRESSION, L1_EXPRESSION, parse
    from paploss.search.proposers.graph_evolution import GraphCandidate
    from paploss.search.screening import EquivalenceRegistry

    print(f"\n{'reference':<12} {'reward':>7} {'gain':>6}  (mean / last AP gain of the protocol)")
    for name, box in (("CE + GIoU", GIOU_EXPRESSION), ("CE + L1", L1_EXPRESSION)):
        candidate = GraphCandidate(parse(CE_EXPRESSION), parse(box))
        record = _measure(screener, EquivalenceRegistry(), candidate, args.min_gain)
        print(f"{name:<12} {record.mean_gain:7.1f} {record.gain:6.1f}")


#: Focal-loss-like classification (γ = 2, no α) and a smooth-L1-like box loss (quadratic below 1).
FOCAL_EXPRESSION = (
    "neg(add(mul(mul(y,square(sub(1,x))),log(x)),mul(mul(sub(1,y),square(x)),log(sub(1,x)))))"
)
SMOOTH_L1_EXPRESSION = "min(mul(0.5,square(sub(d,t))),abs(sub(d,t)))"
#: Rejection settings compared by ``--score-table`` (on top of ``--images``).
SCORE_OPTIONS = {
    "final, 50 steps": {"steps": 50, "eval_every": 10},
    "auc, 50 steps": {"steps": 50, "eval_every": 5, "score": "auc"},
    "final, 20 steps, lr/10": {"steps": 20, "eval_every": 0, "logit_lr": 0.01, "box_lr": 0.002},
    "auc, 20 steps, lr/10": {
        "steps": 20,
        "eval_every": 4,
        "score": "auc",
        "logit_lr": 0.01,
        "box_lr": 0.002,
    },
    "final, 20 steps, sgd": {"steps": 20, "optimizer": "sgd", "logit_lr": 1.0, "box_lr": 1.0},
    # A fresh linear predictor trained on the warm start's box features, AP on 8 held-out images.
    "linear, final, 200 steps": {
        "predictions": "linear",
        "steps": 200,
        "eval_every": 50,
        "logit_lr": 0.001,
        "box_lr": 0.001,
    },
    "linear, auc, 200 steps": {
        "predictions": "linear",
        "steps": 200,
        "eval_every": 50,
        "score": "auc",
        "logit_lr": 0.001,
        "box_lr": 0.001,
    },
    "linear, final, 200 sgd": {
        "predictions": "linear",
        "steps": 200,
        "eval_every": 50,
        "optimizer": "sgd",
        "logit_lr": 0.01,
        "box_lr": 0.001,
    },
}


def warm_start_checkpoint(folder: str) -> str:
    """The warm-start checkpoint of ``HEAD_PROXY_SEARCH`` (its model trained once with its stock
    losses, as the search's ``proxy.warm_start`` trains it), trained in ``folder`` on first use.

    Raises:
        RuntimeError: when the training fails.
    """
    import os

    from paploss.data import datasets_root
    from paploss.search.settings_loading import load_settings
    from paploss.search.trials.runner import run_trial
    from paploss.search.trials.warm_start import warm_start_spec, warm_start_weights

    settings = load_settings(HEAD_PROXY_SEARCH)
    spec = warm_start_spec(
        settings.proxy, settings.model.config, os.path.abspath(folder), datasets_root()
    )
    assert spec is not None, f"{HEAD_PROXY_SEARCH} has no proxy.warm_start"
    weights = warm_start_weights(spec)
    if not os.path.isfile(weights):
        print(f"training the warm start of {HEAD_PROXY_SEARCH} in {folder} (once)", flush=True)
        start = time.perf_counter()
        result = run_trial(spec)
        if result.status != "done" or not os.path.isfile(weights):
            raise RuntimeError(f"the warm start in {folder} failed: {result.reason}")
        print(f"  warm start: {time.perf_counter() - start:.0f} s, bbox AP {result.reward:.2f}")
    return weights


def score_table_graphs() -> Dict[str, Any]:
    """Name → (classification, box) expression of the graphs ``--score-table`` scores."""
    from paploss.losses.graph import CE_EXPRESSION, GIOU_EXPRESSION, L1_EXPRESSION

    ce, l1 = CE_EXPRESSION, L1_EXPRESSION
    return {
        "CE + L1": (ce, l1),
        "CE + GIoU": (ce, GIOU_EXPRESSION),
        "CE + smooth-L1-like": (ce, SMOOTH_L1_EXPRESSION),
        "focal-like + L1": (FOCAL_EXPRESSION, l1),
        "CE/100 + L1": (f"mul(0.01,{ce})", l1),
        "CE + L1/100": (ce, f"mul(0.01,{l1})"),
        "negatives down only + L1": ("neg(mul(sub(1,y),log(sub(1,x))))", l1),
        "positives up only + L1": ("neg(mul(y,log(x)))", l1),
        "box loss only (CE*1e-6) + L1": (f"mul(0.000001,{ce})", l1),
        "CE + no box loss (L1*1e-6)": (ce, f"mul(0.000001,{l1})"),
        "every score down (x) + L1": ("x", l1),
    }


def _score_table(cfg: Any, args: argparse.Namespace) -> None:
    """Each graph's rejection score under each of ``SCORE_OPTIONS`` (or ``--options``), and its
    share of CE + L1's; the linear options train on the warm start of ``HEAD_PROXY_SEARCH``."""
    from paploss.losses.graph import BOX, CLS
    from paploss.search.screening.graph_screener import GraphScreener
    from paploss.search.settings import ScreeningSettings

    graphs = score_table_graphs()
    options = args.options or list(SCORE_OPTIONS)
    unknown = [option for option in options if option not in SCORE_OPTIONS]
    if unknown:
        raise SystemExit(f"unknown --options {unknown}; known: {list(SCORE_OPTIONS)}")
    scores: Dict[str, Dict[str, float]] = {}
    batches: Dict[str, Any] = {}  # predictions kind -> the ROI batch
    results: Dict[Any, Any] = {}  # (settings but the score, graph) -> RejectionResult
    for option in options:
        values = SCORE_OPTIONS[option]
        rejection = {"num_images": args.images, "min_ap_gain": args.min_gain, **values}
        settings = ScreeningSettings.from_dict({"rejection": rejection})
        kind = settings.rejection.predictions
        if kind not in batches:
            start = time.perf_counter()
            weights = None
            if kind == "linear":
                weights = args.weights or warm_start_checkpoint(args.warm_start)
            batches[kind] = GraphScreener.build(
                settings, cfg, dataset=SEARCH_TRAIN, val_dataset=SEARCH_VAL, weights=weights
            ).protocol.batch
            print(f"{kind} ROI batch ({time.perf_counter() - start:.0f} s): "
                  f"{batches[kind].summary()}" + (f", from {weights}" if weights else ""))  # fmt: skip
        screener = GraphScreener(settings, batches[kind], cfg=cfg)
        # Options that differ only in the score share their (deterministic) runs.
        run_key = json.dumps({**settings.rejection.to_dict(), "score": None}, sort_keys=True)
        start = time.perf_counter()
        scores[option] = {}
        for name, (cls, box) in graphs.items():
            if (run_key, name) not in results:
                overrides = {CLS.config_key: cls, BOX.config_key: box}
                (results[run_key, name],) = screener.reject_score(overrides).values()
            result = dataclasses.replace(
                results[run_key, name], score_kind=settings.rejection.score
            )
            scores[option][name] = result.score
        seconds = (time.perf_counter() - start) / len(graphs)
        print(f"  {option}: {seconds:.1f} s per graph", flush=True)
    width = max(len(name) for name in graphs)
    print(f"\n## rejection score per option (AP points; in brackets: share of CE + L1's)")
    print(" | ".join([f"{'graph':<{width}}"] + [f"{option:>22}" for option in options]))
    for name in graphs:
        cells = []
        for option in options:
            score, reference = scores[option][name], scores[option]["CE + L1"]
            share = f"{100.0 * score / reference:4.0f}%" if reference > 0 else "    -"
            cells.append(f"{score:14.1f} ({share})")
        print(" | ".join([f"{name:<{width}}"] + cells))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--candidates", type=int, default=300, help="candidates per method")
    parser.add_argument("--per-round", type=int, default=10, help="proposals per propose/tell")
    parser.add_argument("--methods", nargs="+", default=["evolution", "random"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--population", type=int, default=20)
    parser.add_argument("--tournament", type=int, default=5)
    parser.add_argument("--images", type=int, default=4, help="images of the fixed batch")
    parser.add_argument("--steps", type=int, default=50, help="rejection protocol's Adam steps")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--min-gain", type=float, default=5.0, help="AP points")
    parser.add_argument("--proxy-seconds", type=float, default=DEFAULT_PROXY_SECONDS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--output", help="write every record as JSON here")
    parser.add_argument(
        "--score-table",
        action="store_true",
        help="only the rejection scores of hand-written graphs under each of SCORE_OPTIONS",
    )
    parser.add_argument(
        "--options", nargs="+", help="--score-table: only these of SCORE_OPTIONS (default: all)"
    )
    parser.add_argument(
        "--warm-start",
        default=DEFAULT_WARM_START,
        help="--score-table: folder of the warm start the linear options read (trained once)",
    )
    parser.add_argument(
        "--weights",
        help="--score-table: use this checkpoint for the linear options instead of the warm start",
    )
    args = parser.parse_args(argv)

    import torch

    from paploss.engine import setup_cfg
    from paploss.search.screening.graph_screener import GraphScreener
    from paploss.search.settings import ScreeningSettings

    torch.set_num_threads(args.threads)
    cfg = setup_cfg(args.config)
    if args.score_table:
        _score_table(cfg, args)
        return
    settings = ScreeningSettings.from_dict(
        {
            "rejection": {
                "num_images": args.images,
                "steps": args.steps,
                "eval_every": args.eval_every,
                "min_ap_gain": args.min_gain,
            }
        }
    )
    start = time.perf_counter()
    screener = GraphScreener.build(settings, cfg, dataset=SEARCH_TRAIN)
    print(f"fixed ROI batch: {screener.protocol.batch.summary()}, "
          f"{time.perf_counter() - start:.1f} s; probes: {screener.probes.num_samples} samples; "
          f"{args.threads} thread(s), seed {args.seed}")  # fmt: skip
    _references(screener, args)
    results: Dict[str, List[Record]] = {}
    for method in args.methods:
        results[method] = _run_method(method, screener, args)
        _summary(method, results[method], args.top)
        _ablation(results[method], args.proxy_seconds)
    if len(results) > 1:
        print(f"\n## best reward on {args.candidates} candidates (mean AP gain, accepted only)")
        for method, records in results.items():
            accepted = [r.mean_gain for r in records if r.accepted]
            best = f"{max(accepted):.1f}" if accepted else "-"
            print(f"{method:<10} best {best:>6}   accepted {len(accepted):4d}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        data = {m: [asdict(r) for r in records] for m, records in results.items()}
        Path(args.output).write_text(json.dumps({"args": vars(args), "records": data}, indent=1))


if __name__ == "__main__":
    main()
