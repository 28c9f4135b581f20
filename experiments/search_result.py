#!/usr/bin/env python
"""The proof of a search: its loss beside the handcrafted losses of the same detector, held out.

1. Runs the search of ``--config`` (default ``configs/search/default.yaml``, with ``--set``
   overrides) into ``<output>/search``, or resumes it there (a finished search is not rerun).
   The search scores candidates on ``synthetic_shapes_search_train`` → ``_search_val``.
2. Exports its loss (``--which best``: the best trial; ``mean``: the final policy mean) to
   ``<output>/searched_<which>.yaml``.
3. Trains that config and the searched detector's main rows of the loss table (stock, AP-Loss,
   aLRP, RS, the PAP rows) with the loss table's schedule
   (``experiments/compare_losses.py``: ``synthetic_shapes_train``, batch 8, every row under one
   optimiser) over ``--seeds`` and prints them as mean ± std of AP on ``synthetic_shapes_val``,
   which neither the search nor the loss table trains on.

The goal it checks: the searched loss above identity PAP by more than the seed std, and at or above
the best handcrafted loss of the same detector. Trainings are reused by a later call (the table's
folders under ``<output>/table``)::

    python experiments/search_result.py --seeds 3 --jobs 2
    python experiments/search_result.py --config configs/search/default.yaml \\
        --set search.rounds=10 proxy.warm_start.iterations=1000 --clip on --jobs 16
"""

import argparse
import os
import sys
from typing import List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compare_losses  # noqa: E402

from paploss.search import cli  # noqa: E402


def searched_detector(search_folder: str) -> str:
    """The loss table's detector name of the searched model config."""
    from paploss.engine import load_config

    cfg = load_config(os.path.join(search_folder, "model_config.yaml"))
    architecture = cfg.MODEL.META_ARCHITECTURE
    if architecture.endswith("RetinaNet"):
        return "retinanet"
    if architecture == "GeneralizedRCNN":
        return "mask_rcnn" if cfg.MODEL.MASK_ON else "faster_rcnn"
    if architecture == "PAPDeformableDETR":  # its project registered it when the search ran
        return "deformable_detr"
    raise SystemExit(f"the loss table has no rows for a {architecture} model")


def identity_row(rows: Sequence[str]) -> Optional[str]:
    """The detector's first PAP row with identity functions (e.g. ``pap identity``, Deformable
    DETR's ``pap identity + L1``), or None."""
    return next((row for row in rows if row.startswith("pap identity")), None)


def verdict(summary: List[dict], searched_row: str) -> List[str]:
    """Lines that say whether the goal is met, by how much (``summary``: the table's rows)."""
    rows = {
        entry["row"]: (entry["AP"]["mean"], entry["AP"]["std"])
        for entry in summary
        if entry["group"] == "main" and entry["seeds"]
    }
    identity_name = identity_row(list(rows))
    if searched_row not in rows or identity_name is None:
        return ["verdict: not enough finished trainings to compare"]
    (searched, searched_std), (identity, identity_std) = rows[searched_row], rows[identity_name]
    others = {name: ap for name, (ap, _) in rows.items() if name != searched_row}
    best_name = max(others, key=others.get)
    noise = max(searched_std, identity_std)
    return [
        f"searched {searched:.2f} vs {identity_name} {identity:.2f}: {searched - identity:+.2f} AP "
        f"({'more' if searched - identity > noise else 'not more'} than the larger seed std "
        f"{noise:.2f})",
        f"searched vs the best other row ({best_name}, {others[best_name]:.2f}): "
        f"{searched - others[best_name]:+.2f} AP",
    ]


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs/search/default.yaml"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="search settings overrides")  # fmt: skip
    parser.add_argument("--which", choices=("best", "mean"), default="best")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="trainings in parallel")
    parser.add_argument("--clip", choices=("off", "on"), default="on",
                        help="gradient clipping of every row of the table (on: the optimiser "
                        "of the default search's proxy)")  # fmt: skip
    parser.add_argument("--iterations", type=int, help="default: the loss table's")
    parser.add_argument("--device", help="MODEL.DEVICE of the table's trainings")
    parser.add_argument("--output", default=os.path.join("output", "search_result"))
    parser.add_argument("--match", help="train only the table's rows whose 'detector | row' "
                        "matches this regex (e.g. 'searched': the rows measured before are "
                        "quoted, not retrained)")  # fmt: skip
    args = parser.parse_args(argv)

    output = os.path.abspath(args.output)
    search = os.path.join(output, "search")
    resume = os.path.isfile(os.path.join(search, "journal.sqlite"))
    run = ["run", "--output", search, "--no-report"]
    run += ["--resume"] if resume else ["--config", args.config, *args.set]
    if cli.main(run) != 0:
        raise SystemExit("the search failed")
    exported = os.path.join(output, f"searched_{args.which}.yaml")
    if cli.main(["export", "--output", search, "--which", args.which, "--to", exported]) != 0:
        raise SystemExit("the export failed")

    detector = searched_detector(search)
    row = f"searched ({args.which})"
    table = [
        "--detectors", detector, "--rows", "main", "--seeds", str(args.seeds),
        "--jobs", str(args.jobs), "--clip", args.clip, "--output", os.path.join(output, "table"),
        "--add-row", detector, row, exported,
    ]  # fmt: skip
    if args.iterations:
        table += ["--iterations", f"{detector}={args.iterations}"]
    if args.device:
        table += ["--device", args.device]
    if args.match:
        table += ["--match", args.match]
    summary = compare_losses.main(table)
    for line in verdict(summary, row):
        print(line)
    return summary


if __name__ == "__main__":
    main()
