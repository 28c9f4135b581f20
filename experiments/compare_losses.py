#!/usr/bin/env python
"""Train every (detector, loss) row over several seeds under one optimiser; print a mean ± std table.

Each row is a synthetic config (plus overrides) trained by its detector's training script
(``tools/train_net.py``; Deformable DETR: ``projects/DeformableDETR/train_net.py``, which imports
the project) in its own process with one torch thread, for every seed, on its detector's schedule
(iterations, batch, LR steps) and the same datasets, and evaluated with COCO AP on the test set.
Every row of a table shares one optimiser per detector (the configs': SGD for RetinaNet, Faster
and Mask R-CNN, the published AdamW for Deformable DETR) and one gradient-clipping setting: on for
all rows (the default; each parameter's gradient norm at most 0.3, Deformable DETR the whole
model's at 0.1 as published: without it AP-Loss, aLRP and PAP with identity functions diverge or
do not learn at these batch sizes and learning rates, so a table without it compares losses with
trainings that failed) or ``--clip off`` for all rows (the setting of
``configs/Base-Synthetic.yaml`` and of the published RetinaNet and Faster R-CNN code); ``--clip
both`` makes both tables. The table reports, per row, the mean ± sample standard deviation over
the seeds of AP, AP50, AP75 (box AP), of the mask AP for detectors with masks (Mask R-CNN; the
column appears when such rows are in the table), and the median seconds per iteration.

Rows:

* ``main``: stock, AP-Loss, aLRP, RS and PAP (identity and published functions) for RetinaNet and
  Faster R-CNN, each config as shipped (the PAP configs carry the published PAP recipe); Mask
  R-CNN stock, RS, PAP with the box quality and PAP with the mask-IoU quality
  (``configs/synthetic/*mask_rcnn*.yaml`` as shipped; the PAP ones in the recipe of the Faster
  R-CNN PAP rows); Deformable DETR stock, PAP with identity and with RetinaNet's published
  functions, and RS, every ranking loss with the project's L1 term
  (``projects/DeformableDETR/configs/deformable_detr_tiny_*.yaml``).
* ``ablation``: PAP with identity functions with one recipe choice at a time switched back to
  what the PAP heads used before: RPN ranking all anchors, R-CNN proposals with ground-truth
  boxes added (all, or Detectron2's 128-RoI sample), box-delta weights (1, 1, 1, 1), 3 RetinaNet
  anchor scales per octave; and the other gradient-clipping setting than the table's. The
  remaining rows are a diagnosis, not departures: identity functions with the published
  box-gradient scales λ (``GRAD_SCALE``: RetinaNet 4.12; RPN 1.70 and R-CNN head 7.13), which
  tells how much of the published functions' lead over identity is the scale of the gradient that
  reaches the boxes, and the same with the box deltas (1, 1, 1, 1) as well (both box-gradient
  fixes at once; in RetinaNet also with 3 anchor scales: every recipe choice that costs on the
  synthetic set switched back at once).

Trainings run ``--jobs`` at a time (longest first); each writes ``result.json`` into its own
folder under ``<output>/runs`` and is reused by a later call with the same command (delete the
folder, or pass ``--fresh``, to retrain). The summary goes to ``<output>/results.json`` and
``<output>/table.md``.

    python experiments/compare_losses.py --seeds 3 --jobs 16 --output output/compare_losses
    python experiments/compare_losses.py --rows main --detectors retinanet --seeds 1 \\
        --iterations 400 --jobs 2
    python experiments/compare_losses.py --iterations retinanet=1500 faster_rcnn=600 --clip both
    python experiments/compare_losses.py --detectors mask_rcnn --seeds 3 --jobs 2
    python experiments/compare_losses.py --detectors deformable_detr --seeds 3 --jobs 2
"""

import argparse
import concurrent.futures
import dataclasses
import datetime
import heapq
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DETECTORS = ("retinanet", "faster_rcnn", "mask_rcnn", "deformable_detr")
DETECTOR_NAMES = {
    "retinanet": "RetinaNet",
    "faster_rcnn": "Faster R-CNN",
    "mask_rcnn": "Mask R-CNN",
    "deformable_detr": "Deformable DETR",
}
#: The script that trains a detector's rows, relative to the repository root (a Detectron2
#: project's own ``train_net.py`` imports the project); others: ``tools/train_net.py``.
TRAINING_SCRIPTS = {"deformable_detr": os.path.join("projects", "DeformableDETR", "train_net.py")}
DEFAULT_TRAINING_SCRIPT = os.path.join("tools", "train_net.py")
#: Detectors that predict instance masks: their rows also report COCO mask (segm) AP.
DETECTORS_WITH_MASKS = ("mask_rcnn",)
#: Default iterations per detector (batch 8, 600 training images: 75 iterations per epoch).
#: At 400 iterations stock RetinaNet is at 1.75 AP (noise); at 1500 it reaches 16-20 AP. Faster
#: R-CNN learns faster per iteration (its RPN and sampled RoIs see many positives): after 300
#: iterations (4 epochs, clipping on) every row is at 13-35 AP, stock at 13.7 ± 0.6 over 3 seeds;
#: its all-RoI rows cost three RetinaNet iterations each. Mask R-CNN is the same detector with a
#: mask branch: the Faster R-CNN schedule, so that its box AP compares with the Faster R-CNN
#: rows. Deformable DETR keeps its project's tiny schedule (2000 iterations x 4 images, 13
#: epochs: DETR-style models learn slowly; stock at 18.9 / 20.0 AP on seeds 0 / 1).
DEFAULT_ITERATIONS = {
    "retinanet": 1500,
    "faster_rcnn": 300,
    "mask_rcnn": 300,
    "deformable_detr": 2000,
}
#: Default images per iteration per detector (the tiny Deformable DETR config's batch: its
#: AdamW learning rate is set for it).
DEFAULT_BATCH = {"retinanet": 8, "faster_rcnn": 8, "mask_rcnn": 8, "deformable_detr": 4}
#: LR drops (x 0.1) at these fractions of the iterations; Deformable DETR: the published single
#: drop at 40 of 50 epochs, as its tiny config.
LR_STEP_FRACTIONS = {"deformable_detr": (0.8,)}
DEFAULT_LR_STEP_FRACTIONS = (0.75, 0.92)
#: Reference seconds per iteration (batch 8, one torch thread, this project's 2-core CPU machine)
#: used to start the longest trainings first and to estimate the wall time. Mask R-CNN: two runs
#: of 20 iterations of each row, two at a time on a busy machine (stock 1.27 / 1.56, PAP box
#: quality 1.49 / 1.57, PAP mask_iou quality 1.35 / 1.67, RS 3.31 / 2.69; the PAP rows then
#: ranked 128 sampled RoIs). Since the PAP rows rank all RoIs (the Faster R-CNN PAP recipe) their
#: cost grows as the RPN finds the objects: every positive RoI also trains the mask branch. PAP
#: box quality, one run on a heavily loaded machine (load average about 8): 2.3, 7.3 and 8.4 s per
#: iteration over iterations 1-20, 21-40 and 41-60, and 7.4 / 25.9 in a second run beside a test
#: run; so the "mask_rcnn_all" reference below is optimistic for them. Deformable DETR: 0.48-0.55
#: in the project's measurements (two side by side), 0.93-1.04 here on the loaded machine.
SECONDS_PER_ITERATION = {
    "retinanet": 0.11,
    "faster_rcnn_sampled": 0.43,
    "faster_rcnn_all": 1.27,
    "mask_rcnn_sampled": 1.5,
    "mask_rcnn_all": 3.0,
    "deformable_detr": 0.5,
}
#: Start-up and evaluation (200 images) of one training, in seconds, same machine; the mask AP
#: evaluation pastes and encodes every detection's mask (about 85 s of the Mask R-CNN's).
OVERHEAD_SECONDS = {
    "retinanet": 30.0,
    "faster_rcnn": 30.0,
    "mask_rcnn": 105.0,
    "deformable_detr": 30.0,
}
#: The gradient-clipping setting of a table when ``--clip`` is not given (see the module
#: docstring): on, the one setting in which every loss of the table trains.
DEFAULT_CLIP = "on"


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the table: a config with overrides, trained for every seed.

    Attributes:
        detector: a name in :data:`DETECTORS`.
        name: the row's label in the table.
        config: the config file, relative to the repository root.
        opts: Detectron2 overrides ``(key, value, key, value, ...)``.
        group: ``"main"`` or ``"ablation"``.
        cost: key of :data:`SECONDS_PER_ITERATION`.
        flip_clip: train with the other gradient-clipping setting than the table's.
    """

    detector: str
    name: str
    config: str
    opts: Tuple[str, ...] = ()
    group: str = "main"
    cost: str = "retinanet"
    flip_clip: bool = False

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_")


def _rows() -> List[Row]:
    path = "configs/synthetic/{}.yaml"
    rows = [
        Row("retinanet", name, path.format(config))
        for name, config in [
            ("stock (focal + smooth L1)", "retinanet_stock"),
            ("ap", "ap_retinanet"),
            ("alrp", "alrp_retinanet"),
            ("rs", "rs_retinanet"),
            ("pap identity", "pap_retinanet_identity"),
            ("pap published", "pap_retinanet_published"),
            # the published functions on the base recipe of the rows above (3 anchor scales, box
            # deltas (1, 1, 1, 1), test NMS 0.5), not the published PAP recipe: only the loss differs
            ("pap published, base recipe", "pap_retinanet_published_base_recipe"),
            # the loss configs/search/cmaes_retinanet.yaml found, on the same recipe
            ("pap searched", "pap_retinanet_searched"),
        ]
    ]
    rows += [
        Row("faster_rcnn", name, path.format(config), cost=cost)
        for name, config, cost in [
            (
                "stock (CE + smooth L1, 128 sampled RoIs)",
                "faster_rcnn_stock",
                "faster_rcnn_sampled",
            ),
            ("ap (all RoIs)", "ap_faster_rcnn", "faster_rcnn_all"),
            ("alrp (all RoIs)", "alrp_faster_rcnn", "faster_rcnn_all"),
            ("rs (all RoIs)", "rs_faster_rcnn", "faster_rcnn_all"),
            ("pap identity", "pap_faster_rcnn_identity", "faster_rcnn_all"),
            ("pap published", "pap_faster_rcnn_published", "faster_rcnn_all"),
        ]
    ]
    pap_retina = path.format("pap_retinanet_identity")
    three_scales = "[[8.0, 10.08, 12.7], [16.0, 20.16, 25.4], [32.0, 40.32, 50.8], [64.0, 80.63, 101.59], [128.0, 161.27, 203.19]]"  # fmt: skip
    # overrides the ablation rows combine; the λs are the published functions' box-gradient scales
    retina_scales = ("MODEL.ANCHOR_GENERATOR.SIZES", three_scales)
    retina_deltas = ("MODEL.RETINANET.BBOX_REG_WEIGHTS", "(1.0, 1.0, 1.0, 1.0)")
    retina_lambda = ("MODEL.PAPLOSS.RETINANET.GRAD_SCALE", "4.1231")
    rpn_deltas = ("MODEL.RPN.BBOX_REG_WEIGHTS", "(1.0, 1.0, 1.0, 1.0)")
    frcnn_lambdas = ("MODEL.PAPLOSS.RPN.GRAD_SCALE", "1.695",
                     "MODEL.PAPLOSS.ROI_HEADS.GRAD_SCALE", "7.1324")  # fmt: skip
    rows += [
        Row("retinanet", f"pap identity, {name}", pap_retina, opts, "ablation")
        for name, opts in [
            ("box deltas (1, 1, 1, 1)", retina_deltas),
            ("3 anchor scales per octave", retina_scales),
            # not departures: the published box-gradient scale alone and with the departures
            ("box gradient λ 4.12 (published)", retina_lambda),
            ("box deltas (1, 1, 1, 1) + λ 4.12", retina_deltas + retina_lambda),
            ("3 anchor scales + box deltas (1, 1, 1, 1) + λ 4.12",
             retina_scales + retina_deltas + retina_lambda),
        ]
    ]  # fmt: skip
    rows.append(
        Row("retinanet", "pap identity, clipping", pap_retina, (), "ablation", flip_clip=True)
    )
    pap_frcnn = path.format("pap_faster_rcnn_identity")
    rows += [
        Row("faster_rcnn", f"pap identity, {name}", pap_frcnn, opts, "ablation", cost)
        for name, opts, cost in [
            ("RPN ranks all anchors", ("MODEL.PAPLOSS.RPN.SAMPLE_ANCHORS", "False"), "faster_rcnn_all"),
            ("RoIs + ground truth", ("MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", "True"), "faster_rcnn_all"),
            ("128 sampled RoIs + ground truth",
             ("MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", "True",
              "MODEL.PAPLOSS.ROI_HEADS.SAMPLE_PROPOSALS", "True"), "faster_rcnn_sampled"),
            ("RPN box deltas (1, 1, 1, 1)", rpn_deltas, "faster_rcnn_all"),
            # not departures: the published box-gradient scales alone and with the departure
            ("box gradient λ 1.70 / 7.13 (published)", frcnn_lambdas, "faster_rcnn_all"),
            ("RPN box deltas (1, 1, 1, 1) + λ 1.70 / 7.13", rpn_deltas + frcnn_lambdas,
             "faster_rcnn_all"),
        ]
    ]  # fmt: skip
    rows.append(
        Row("faster_rcnn", "pap identity, clipping", pap_frcnn, (), "ablation", "faster_rcnn_all",
            flip_clip=True)
    )  # fmt: skip
    # last, so that the rows before keep their order in stored results
    rows += [
        Row("mask_rcnn", name, path.format(config), cost=cost)
        for name, config, cost in [
            ("stock (CE + smooth L1, BCE masks; 128 sampled RoIs)", "mask_rcnn_stock",
             "mask_rcnn_sampled"),
            ("rs (all RoIs)", "rs_mask_rcnn", "mask_rcnn_all"),
            ("pap identity, box quality (all RoIs)", "pap_mask_rcnn", "mask_rcnn_all"),
            ("pap identity, mask_iou quality (all RoIs)", "pap_mask_rcnn_mask_iou",
             "mask_rcnn_all"),
        ]
    ]  # fmt: skip
    detr = "projects/DeformableDETR/configs/deformable_detr_tiny_{}.yaml"
    rows += [
        Row("deformable_detr", name, detr.format(config), cost="deformable_detr")
        for name, config in [
            ("stock (focal + L1 + GIoU)", "stock"),
            ("pap identity + L1", "pap"),
            ("pap published (RetinaNet's functions, λ 4.12) + L1", "pap_published"),
            ("rs + L1", "rs"),
        ]
    ]
    return rows


ROWS = _rows()


@dataclasses.dataclass(frozen=True)
class Job:
    """One training: a row of the table with gradient clipping ``clip`` (on / off), and a seed."""

    row: Row
    clip: bool
    seed: int
    iterations: int
    batch: int

    @property
    def clip_in_training(self) -> bool:
        return self.clip != self.row.flip_clip

    @property
    def label(self) -> str:
        if self.row.flip_clip:
            return f"{self.row.name} {'on' if self.clip_in_training else 'off'}"
        return self.row.name

    def folder(self, output: str) -> str:
        setting = "clip_on" if self.clip else "clip_off"
        slug = re.sub(r"[^a-z0-9]+", "_", self.label.lower()).strip("_")
        return os.path.join(output, "runs", setting, self.row.detector, slug, f"seed{self.seed}")

    @property
    def estimated_seconds(self) -> float:
        overhead = OVERHEAD_SECONDS[self.row.detector]
        return SECONDS_PER_ITERATION[self.row.cost] * self.iterations + overhead


def parse_per_detector(
    values: Sequence[str], defaults: Dict[str, int], option: str, minimum: int
) -> Dict[str, int]:
    """``["1500"]`` (every detector) or ``["retinanet=1500", "faster_rcnn=600"]`` over
    ``defaults``; ``option`` names the argument in errors, ``minimum`` is the smallest count."""
    counts = dict(defaults)
    for value in values:
        detector, _, count = value.rpartition("=")
        targets = [detector] if detector else list(DETECTORS)
        if detector and detector not in DETECTORS:
            raise SystemExit(f"{option}: unknown detector {detector!r} (use {DETECTORS})")
        if not count.isdigit() or int(count) < minimum:
            raise SystemExit(f"{option}: {value!r} is not a count >= {minimum} (or detector=count)")
        for target in targets:
            counts[target] = int(count)
    return counts


def parse_iterations(values: Sequence[str]) -> Dict[str, int]:
    """``["1500"]`` (every detector) or ``["retinanet=1500", "faster_rcnn=600"]``."""
    return parse_per_detector(values, DEFAULT_ITERATIONS, "--iterations", 10)


def parse_batch(values: Sequence[str]) -> Dict[str, int]:
    """``["8"]`` (every detector) or ``["deformable_detr=4", ...]``."""
    return parse_per_detector(values, DEFAULT_BATCH, "--batch", 1)


def clip_opts(detector: str, clip: bool) -> List[str]:
    """The overrides that switch a detector's gradient clipping on or off: Detectron2's
    per-parameter clipping (``configs/Base-Synthetic.yaml``: norm 0.3), or for Deformable DETR,
    whose optimizer refuses that, its published clipping of the whole model's gradient norm."""
    if detector == "deformable_detr":
        return ["MODEL.DEFORMABLE_DETR.OPTIMIZER.CLIP_MAX_NORM", "0.1" if clip else "0.0"]
    return ["SOLVER.CLIP_GRADIENTS.ENABLED", str(clip)]


def training_script(detector: str) -> str:
    """The script that trains ``detector``'s rows, relative to the repository root."""
    return TRAINING_SCRIPTS.get(detector, DEFAULT_TRAINING_SCRIPT)


def training_command(job: Job, args: argparse.Namespace) -> List[str]:
    n = job.iterations
    fractions = LR_STEP_FRACTIONS.get(job.row.detector, DEFAULT_LR_STEP_FRACTIONS)
    steps = str(tuple(int(n * fraction) for fraction in fractions))
    clip = clip_opts(job.row.detector, job.clip_in_training)
    device = ["MODEL.DEVICE", args.device] if args.device else []
    return [sys.executable, os.path.join(ROOT, training_script(job.row.detector)),
            "--config-file", job.row.config,
            "SOLVER.MAX_ITER", str(n), "SOLVER.STEPS", steps, "SEED", str(job.seed),
            "SOLVER.IMS_PER_BATCH", str(job.batch), "DATASETS.TEST", f"('{args.test_set}',)",
            "SOLVER.CHECKPOINT_PERIOD", str(10 * n), "TEST.EVAL_PERIOD", "0",
            "OUTPUT_DIR", job.folder(args.output),
            *job.row.opts, *clip, *device, *args.opts]  # fmt: skip


#: Table metrics of a run: (name in the records, key in Detectron2's metrics.json).
BOX_METRICS = (("AP", "bbox/AP"), ("AP50", "bbox/AP50"), ("AP75", "bbox/AP75"))
MASK_METRICS = (("mask AP", "segm/AP"), ("mask AP50", "segm/AP50"), ("mask AP75", "segm/AP75"))


def _read_metrics(folder: str, masks: bool) -> Dict[str, float]:
    records = []
    with open(os.path.join(folder, "metrics.json")) as f:
        for line in f:
            line = line.strip()
            if line:
                records.append(json.loads(line))
    evaluated = [r for r in records if "bbox/AP" in r]
    if not evaluated:
        raise ValueError("no bbox/AP in metrics.json")
    final = max(evaluated, key=lambda r: r.get("iteration", -1))
    if masks and "segm/AP" not in final:
        raise ValueError("no segm/AP in metrics.json")
    times = [r["time"] for r in records if "time" in r]
    times = times[1:] or times  # the first period's times include the start; keep a lone one
    metrics = {name: final[key] for name, key in BOX_METRICS + (MASK_METRICS if masks else ())}
    metrics["s/iter"] = statistics.median(times) if times else float("nan")
    return metrics


def run_job(job: Job, args: argparse.Namespace) -> dict:
    """Train and evaluate one job (or reuse its earlier result); return its record."""
    folder = job.folder(args.output)
    command = training_command(job, args)
    result_file = os.path.join(folder, "result.json")
    if not args.fresh and os.path.isfile(result_file):
        with open(result_file) as f:
            record = json.load(f)
        if record.get("command") == command[1:] and record.get("status") == "ok":
            return {**record, "reused": True}
    os.makedirs(folder, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    start = time.time()
    with open(os.path.join(folder, "train.log"), "w") as log:
        returncode = subprocess.call(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    record = {
        "detector": job.row.detector,
        "row": job.label,
        "order": args.table_rows.index(job.row),
        "group": job.row.group,
        "clip": job.clip,
        "seed": job.seed,
        "iterations": job.iterations,
        "batch": job.batch,
        "command": command[1:],
        "wall_s": round(time.time() - start, 1),
    }
    try:
        if returncode != 0:
            raise RuntimeError(f"exit code {returncode}")
        masks = job.row.detector in DETECTORS_WITH_MASKS
        record.update(status="ok", **_read_metrics(folder, masks))
        if not args.keep_checkpoints:  # a table needs the metrics only; keep the output small
            for name in os.listdir(folder):
                if name.endswith(".pth") or name == "last_checkpoint":
                    os.remove(os.path.join(folder, name))
    except (OSError, ValueError, RuntimeError) as e:
        with open(os.path.join(folder, "train.log")) as log:
            lines = [line.strip() for line in log if line.strip()]
        last = lines[-1][:160] if lines else ""
        diverged = any(
            "FloatingPointError" in line or "NaN or infinite" in line for line in lines[-50:]
        )
        record.update(status="diverged" if diverged else "failed", error=f"{e}: {last}")
    with open(result_file, "w") as f:
        json.dump(record, f, indent=1)
    return record


def estimated_wall_seconds(jobs: Sequence[Job], parallel: int) -> float:
    """Makespan of longest-first scheduling on ``parallel`` slots, from the reference timings."""
    slots = [0.0] * max(1, min(parallel, len(jobs)))
    for job in sorted(jobs, key=lambda j: -j.estimated_seconds):
        heapq.heapreplace(slots, slots[0] + job.estimated_seconds)
    return max(slots) if jobs else 0.0


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaN for none or a NaN value)."""
    if not values or any(math.isnan(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(records: List[dict]) -> List[dict]:
    """One entry per (optimiser setting, row), in table order."""
    groups: Dict[Tuple[bool, str, str], List[dict]] = {}
    for record in records:
        groups.setdefault((record["clip"], record["detector"], record["row"]), []).append(record)
    summary = []
    for (clip, detector, name), group in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[1][0]["order"])
    ):
        ok = [r for r in group if r["status"] == "ok"]
        entry = {
            "clip": clip,
            "detector": detector,
            "row": name,
            "group": group[0]["group"],
            "iterations": group[0]["iterations"],
            "seeds": sorted(r["seed"] for r in ok),
            "not_ok": {r["seed"]: r["status"] for r in group if r["status"] != "ok"},
        }
        metrics = [name for name, _ in BOX_METRICS] + ["s/iter"]
        if detector in DETECTORS_WITH_MASKS:
            metrics += [name for name, _ in MASK_METRICS]
        for metric in metrics:
            entry[metric] = dict(zip(("mean", "std"), mean_std([r[metric] for r in ok])))
        summary.append(entry)
    return summary


def _cell(entry: dict, metric: str) -> str:
    """``mean ± std`` of ``metric``, or "–" (not measured, or no mask AP for this detector)."""
    value = entry.get(metric, {"mean": math.nan})
    return "–" if math.isnan(value["mean"]) else f"{value['mean']:.2f} ± {value['std']:.2f}"


def markdown_table(summary: List[dict]) -> str:
    """One table per gradient-clipping setting; box AP columns, and a mask AP column when the
    table has a detector with masks ("–" in the rows of the others)."""
    lines = []
    for clip in sorted({entry["clip"] for entry in summary}):
        entries = [e for e in summary if e["clip"] == clip]
        metrics = ["AP", "AP50", "AP75"]
        if any(e["detector"] in DETECTORS_WITH_MASKS for e in entries):
            metrics.append("mask AP")
        lines += [
            f"Gradient clipping {'on' if clip else 'off'} in every row (but the clipping ablation):",
            "",
            f"| model | row | {' | '.join(metrics)} | s/iter | seeds |",
            "| --- | --- | " + "---: | " * len(metrics) + "---: | ---: |",
        ]
        for entry in entries:
            cells = [_cell(entry, metric) for metric in metrics]
            s_iter = entry["s/iter"]["mean"]
            seeds = str(len(entry["seeds"]))
            if entry["not_ok"]:
                seeds += " (" + ", ".join(f"seed {k} {v}" for k, v in entry["not_ok"].items()) + ")"
            name = f"↳ {entry['row']}" if entry["group"] == "ablation" else entry["row"]
            lines.append(
                f"| {DETECTOR_NAMES[entry['detector']]} | {name} | {' | '.join(cells)} | "
                f"{'–' if math.isnan(s_iter) else f'{s_iter:.3f}'} | {seeds} |"
            )
        lines.append("")
    return "\n".join(lines)


def added_row(detector: str, name: str, config: str) -> Row:
    """A main row of ``--add-row``: ``config`` trained as shipped, ranking every RoI."""
    if detector not in DETECTORS:
        raise SystemExit(f"--add-row: unknown detector {detector!r} (use {DETECTORS})")
    if not os.path.isfile(config):
        raise SystemExit(f"--add-row: config file {config!r} does not exist")
    cost = detector if detector in ("retinanet", "deformable_detr") else f"{detector}_all"
    return Row(detector, name, os.path.abspath(config), cost=cost)


def build_jobs(
    args: argparse.Namespace, iterations: Dict[str, int], batch: Dict[str, int]
) -> List[Job]:
    clips = {"off": [False], "on": [True], "both": [False, True]}[args.clip]
    jobs = []
    for clip in clips:
        for row in args.table_rows:
            if row.detector not in args.detectors or args.rows not in ("all", row.group):
                continue
            if args.match and not re.search(args.match, f"{row.detector} | {row.name}"):
                continue
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                jobs.append(Job(row, clip, seed, iterations[row.detector], batch[row.detector]))
    return jobs


def _prepare_datasets(names: Sequence[str]) -> None:
    """Generate the synthetic splits once, before parallel trainings would race to do it."""
    sys.path.insert(0, ROOT)
    from paploss.data import ensure_dataset_files

    for name in names:
        ensure_dataset_files(name)


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per row (0, 1, ...)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument(
        "--iterations", nargs="+", default=[], metavar="N|DETECTOR=N",
        help=f"schedule: one count for every detector or per detector (default {DEFAULT_ITERATIONS})",
    )  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="trainings in parallel (1 thread each)")
    parser.add_argument("--clip", choices=("off", "on", "both"), default=DEFAULT_CLIP,
                        help="gradient clipping of every row (the ablation row flips it)")  # fmt: skip
    parser.add_argument("--rows", choices=("all", "main", "ablation"), default="all")
    parser.add_argument("--detectors", nargs="+", choices=DETECTORS, default=list(DETECTORS))
    parser.add_argument("--match", help="only rows whose 'detector | row' matches this regex")
    parser.add_argument(
        "--batch", nargs="+", default=[], metavar="N|DETECTOR=N",
        help=f"images per iteration: one count for every detector or per detector "
        f"(default {DEFAULT_BATCH})",
    )  # fmt: skip
    parser.add_argument("--test-set", default="synthetic_shapes_val")
    parser.add_argument("--output", default=os.path.join("output", "compare_losses"))
    parser.add_argument("--device", help="MODEL.DEVICE of every run (default: the configs' cpu)")
    parser.add_argument("--fresh", action="store_true", help="retrain even if a result exists")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep each run's model_final.pth (deleted by default)")  # fmt: skip
    parser.add_argument(
        "--dry-run", action="store_true", help="list the trainings and the estimate"
    )
    parser.add_argument(
        "--opts", nargs="*", default=[], metavar="KEY VALUE", help="config overrides for every run"
    )
    parser.add_argument(
        "--add-row", nargs=3, action="append", default=[], metavar=("DETECTOR", "NAME", "CONFIG"),
        help="one more main row: a config file (e.g. a searched loss's export) for a detector",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.table_rows = ROWS + [added_row(*values) for values in args.add_row]
    if args.seeds < 1 or args.jobs < 1:
        raise SystemExit("--seeds and --jobs must be >= 1")
    args.output = os.path.abspath(args.output)
    iterations = parse_iterations(args.iterations)
    batch = parse_batch(args.batch)
    jobs = build_jobs(args, iterations, batch)
    # the settings of the detectors in the table (all of them only if none is)
    shown = {job.row.detector for job in jobs} or set(DETECTORS)
    iterations = {d: n for d, n in iterations.items() if d in shown}
    batch = {d: n for d, n in batch.items() if d in shown}
    estimate = estimated_wall_seconds(jobs, args.jobs)
    print(
        f"{len(jobs)} trainings ({args.seeds} seeds), iterations {iterations}, batch {batch}, "
        f"clipping {args.clip}, test {args.test_set}, {args.jobs} in parallel; estimated wall "
        f"time {estimate / 60:.1f} min at the reference CPU s/iter {SECONDS_PER_ITERATION}"
        + (f" (not for --device {args.device})" if args.device else "")
        + (f", overrides {' '.join(args.opts)}" if args.opts else ""),
        flush=True,
    )
    if args.dry_run:
        for job in sorted(jobs, key=lambda j: -j.estimated_seconds):
            print(f"  {job.estimated_seconds:7.0f} s  {' '.join(training_command(job, args)[2:])}")
        return []
    _prepare_datasets(["synthetic_shapes_train", args.test_set])
    records = []
    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            pool.submit(run_job, job, args): job
            for job in sorted(jobs, key=lambda j: -j.estimated_seconds)
        }
        for future in concurrent.futures.as_completed(futures):
            record = future.result()
            records.append(record)
            status = "reused" if record.get("reused") else record["status"]
            if record["status"] == "ok":
                ap = f"AP {record['AP']:.2f}"
                if "mask AP" in record:
                    ap += f", mask AP {record['mask AP']:.2f}"
            else:
                ap = record.get("error", "")
            print(
                f"[{len(records)}/{len(jobs)} {time.time() - start:6.0f} s] "
                f"{DETECTOR_NAMES[record['detector']]} | {record['row']}"
                f" | clipping {'on' if record['clip'] else 'off'} | seed {record['seed']}: "
                f"{status} {ap}",
                flush=True,
            )
    summary = summarise(records)
    table = markdown_table(summary)
    header = (
        f"{len(jobs)} trainings, seeds {args.first_seed}..{args.first_seed + args.seeds - 1}, "
        f"iterations {iterations}, batch {batch}, clipping {args.clip}, COCO AP on "
        f"{args.test_set}, {args.jobs} in parallel with 1 torch thread each, "
        f"{(time.time() - start) / 60:.1f} min wall ({datetime.date.today().isoformat()})"
    )
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump({"settings": header, "summary": summary, "runs": records}, f, indent=1)
    with open(os.path.join(args.output, "table.md"), "w") as f:
        f.write(header + "\n\n" + table + "\n")
    print("\n" + header + "\n\n" + table)
    return summary


if __name__ == "__main__":
    main()
