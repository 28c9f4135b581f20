"""Evolution against random search of loss graphs at equal compute: the same search settings,
screening and number of proxy trainings per round, only ``search.method`` differs.

Usage::

    python experiments/bench_search_methods.py               # configs/search/evolution_faster_rcnn.yaml
    python experiments/bench_search_methods.py --seeds 0 1 search.rounds=3
    python experiments/bench_search_methods.py --report-only # the table of finished searches
    python experiments/bench_search_methods.py --reference   # + CE + GIoU, one proxy training

Each (method, seed) runs the search of ``--config`` (with the trailing ``section.key=value``
overrides and ``search.seed``) into ``--output/<method>_seed<seed>``; a finished search is not
run again (a stopped one is resumed). The table lists per search: proxy trainings, proposals and
what the screening did with them, the best reward (bbox AP of the proxy on its validation split),
the best losses, and the wall time of the run. With ``search.max_proposals`` every round trains
``search.candidates`` candidates as long as enough proposals pass the screening, so both methods
spend the same proxy compute. ``--reference`` adds one proxy training of the hand-written
losses (the model config's expressions, CE + GIoU by default) with the seed of the searches'
first round, for scale.
"""

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout

DEFAULT_CONFIG = "configs/search/evolution_faster_rcnn.yaml"


def _run(config: str, method: str, seed: int, overrides: List[str], output: Path) -> float:
    """Run (or resume) one search; returns its wall seconds (0 when it had finished before)."""
    from paploss.search.cli import _setup_logging
    from paploss.search.controller import SearchController, SearchOutput
    from paploss.search.settings_loading import load_settings

    _setup_logging()
    settings = load_settings(config, [*overrides, f"search.method={method}", f"search.seed={seed}"])
    resume = SearchOutput(output).has_journal
    if resume and _closed_rounds(output) >= settings.search.rounds:
        return 0.0
    start = time.perf_counter()
    SearchController(settings, output, resume=resume).run()
    return time.perf_counter() - start


def _reference(config: str) -> List[str]:
    """Overrides of a one-trial search that trains the model config's own expressions."""
    import json

    from paploss.engine import load_config
    from paploss.search.settings_loading import load_settings

    graph = load_config(load_settings(config).model.config).MODEL.PAPLOSS.GRAPH
    initial = json.dumps([{"cls": graph.CLS, "box": graph.BOX}])
    return [
        "search.rounds=1",
        "search.candidates=1",
        "search.max_proposals=0",
        f"evolution.initial={initial}",
    ]


def _closed_rounds(output: Path) -> int:
    from paploss.search.journal import SearchJournal

    with SearchJournal.open(str(output / "journal.sqlite"), read_only=True) as journal:
        return sum(r.status == "closed" for r in journal.rounds())


def _row(output: Path, wall_s: Optional[float]) -> Dict[str, str]:
    from paploss.search.journal import SearchJournal

    with SearchJournal.open(str(output / "journal.sqlite"), read_only=True) as journal:
        trials = journal.trials()
        best = journal.best_trial()
        rounds = journal.rounds()
    statuses = [t.status for t in trials]
    invalid = sum(
        t.status == "rejected" and bool((t.metrics.get("screening") or {}).get("invalid"))
        for t in trials
    )
    trained = [t for t in trials if t.folder is not None]
    train_s = sum(float(t.metrics.get("total_s") or 0.0) for t in trained)
    span = (rounds[-1].finished_at or time.time()) - rounds[0].started_at if rounds else 0.0
    losses = "-"
    if best is not None:
        losses = (
            f"{best.overrides['MODEL.PAPLOSS.GRAPH.CLS']} \\| "
            f"{best.overrides['MODEL.PAPLOSS.GRAPH.BOX']}"
        )
    return {
        "search": output.name,
        "trained": str(len(trained)),
        "proposals": str(len(trials)),
        "invalid": str(invalid),
        "rejected": str(statuses.count("rejected") - invalid),
        "duplicate": str(statuses.count("duplicate")),
        "diverged": str(statuses.count("diverged")),
        "best AP": "-" if best is None else f"{best.reward:.2f}",
        "mean AP": _mean([t.reward for t in trials if t.status == "done"]),
        "train CPU-min": f"{train_s / 60:.1f}",
        "wall min": f"{(wall_s if wall_s else span) / 60:.1f}",
        "best losses (cls \\| box)": losses,
    }


def _mean(values: List[Optional[float]]) -> str:
    values = [v for v in values if v is not None]
    return f"{sum(values) / len(values):.2f}" if values else "-"


def _print_table(rows: List[Dict[str, str]]) -> None:
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row[key] for key in header) + " |")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--methods", nargs="+", default=["evolution", "random"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--output", default="output/bench_search_methods")
    parser.add_argument("--report-only", action="store_true", help="only print the table")
    parser.add_argument(
        "--reference", action="store_true", help="also train the model config's own losses once"
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings overrides")
    args = parser.parse_args(argv)

    runs = [(method, seed, args.overrides) for seed in args.seeds for method in args.methods]
    if args.reference:
        runs += [
            ("reference", seed, args.overrides + _reference(args.config)) for seed in args.seeds
        ]
    rows = []
    for method, seed, overrides in runs:
        output = Path(args.output).absolute() / f"{method}_seed{seed}"
        wall_s = None
        if not args.report_only:
            search = "evolution" if method == "reference" else method
            wall_s = _run(args.config, search, seed, overrides, output) or None
        if (output / "journal.sqlite").exists():
            rows.append(_row(output, wall_s))
    if rows:
        print(f"\n{args.config} {' '.join(args.overrides)}")
        _print_table(rows)


if __name__ == "__main__":
    main()
