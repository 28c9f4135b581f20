"""Helpers shared by the search tests: tiny search settings, a small validation set, the CLI."""

import json
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import yaml

from paploss.search.journal import SearchJournal
from paploss.search.settings_loading import load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_CONFIG = str(REPO_ROOT / "configs" / "synthetic" / "pap_retinanet_identity.yaml")
# Timings and bookkeeping that legitimately differ between two runs of the same search.
RUN_SPECIFIC_METRICS = {"train_s", "eval_s", "total_s", "seconds_per_iter", "iterations"}
RUN_SPECIFIC_METRICS |= {"resumed_from", "reused"}
#: Screening settings of the tiny searches: the equivalence check and the early stop as by
#: default; the rejection protocol off (on 2 images for 10 steps it rejects many random samples,
#: which tests of other things should not depend on) but cheap (~0.1 s a candidate) where a test
#: turns it on with ``screening.rejection.enabled=true``.
TINY_SCREENING = [
    "screening.rejection.enabled=false",
    "screening.rejection.num_images=2",
    "screening.rejection.steps=10",
]


def tiny_val_dataset(folder: Path, num_images: int = 50) -> List[str]:
    """Write the first images of the synthetic search-val split as a COCO file in ``folder``.

    Returns:
        A ``MODEL.PAPLOSS.DATASETS`` entry ``[name, json_file, image_root]``; the name is unique
        to ``folder`` (a name can be registered with one file only). Evaluating on half
        of the split halves the evaluation time of a proxy trial, and still gives an almost
        untrained detector a non-zero AP.
    """
    from detectron2.data import MetadataCatalog

    from paploss.data import ensure_dataset_files

    ensure_dataset_files("synthetic_shapes_search_val")
    metadata = MetadataCatalog.get("synthetic_shapes_search_val")
    with open(metadata.json_file) as handle:
        content = json.load(handle)
    images = content["images"][:num_images]
    kept = {image["id"] for image in images}
    content["images"] = images
    content["annotations"] = [a for a in content["annotations"] if a["image_id"] in kept]
    name = f"synthetic_shapes_search_val_{num_images}_{zlib.crc32(str(folder).encode()):08x}"
    path = folder / f"{name}.json"
    path.write_text(json.dumps(content))
    return [name, str(path), metadata.image_root]


def tiny_search_overrides(
    folder: Path, rounds: int = 2, candidates: int = 2, launcher: str = "debug", **extra: Any
) -> List[str]:
    """Settings overrides of a search whose proxy trainings take a few seconds each."""
    val_entry = tiny_val_dataset(folder)
    opts = {
        "SOLVER.WARMUP_ITERS": 2,
        "MODEL.RETINANET.SCORE_THRESH_TEST": 0.0,  # an almost untrained model still scores
        "MODEL.PAPLOSS.DATASETS": [val_entry],
    }
    overrides = [
        f"model.config={MODEL_CONFIG}",
        "proxy.iterations=12",
        "proxy.ims_per_batch=2",
        "proxy.checkpoint_period=4",
        f"proxy.val_dataset={val_entry[0]}",
        f"proxy.opts={json.dumps(opts)}",
        f"search.rounds={rounds}",
        f"search.candidates={candidates}",
        "search.seed=7",
        f"launcher.kind={launcher}",
        "launcher.poll_interval_s=0.2",
        *TINY_SCREENING,
    ]
    overrides += [f"{key.replace('__', '.')}={json.dumps(value)}" for key, value in extra.items()]
    return overrides


def write_settings(folder: Path, overrides: List[str], name: str = "tiny.yaml") -> Path:
    """A settings file equal to ``overrides`` (what the CLI reads with --config)."""
    path = folder / name
    path.write_text(yaml.safe_dump(load_settings(None, overrides).to_dict()))
    return path


def journal_snapshot(path: Path) -> Dict[str, Any]:
    """Everything in a journal that a search's result consists of (no timings, no job ids)."""
    with SearchJournal.open(str(path), read_only=True) as journal:
        rounds = [
            (r.round, r.status, r.policy_state_start, r.policy_state_end, r.update_stats)
            for r in journal.rounds()
        ]
        trials = [
            {
                "key": (t.round, t.index, t.role),
                "theta": t.theta,
                "overrides": t.overrides,
                "seed": t.seed,
                "status": t.status,
                "reward": t.reward,
                "metrics": {
                    k: _without_timings(v) if k == "screening" else v
                    for k, v in sorted(t.metrics.items())
                    if k not in RUN_SPECIFIC_METRICS
                },
            }
            for t in journal.trials()
        ]
    # NaN metrics (COCO's APl on a set without large objects) compare equal as text.
    return json.loads(json.dumps({"rounds": rounds, "trials": trials}, default=str))


def _without_timings(value: Any) -> Any:
    """A screening record without its wall times (``seconds``, ``*_seconds`` at any depth)."""
    if isinstance(value, dict):
        return {
            k: _without_timings(v)
            for k, v in value.items()
            if k != "seconds" and not k.endswith("_seconds")
        }
    return value


def cli_command(*args: str) -> List[str]:
    """``python tools/search.py ARGS`` as an argument list."""
    return [sys.executable, str(REPO_ROOT / "tools" / "search.py"), *args]


def peak_overlap(intervals: Sequence[Tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` intervals that overlap at one moment."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = current = 0
    for _, step in events:  # at equal times an end (-1) sorts before a start (+1)
        current += step
        peak = max(peak, current)
    return peak


def dead_pid() -> int:
    """The id of a process that has just ended (not reused within a test's time)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
