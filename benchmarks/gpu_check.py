#!/usr/bin/env python
"""GPU check: correctness, speed and memory of the losses, and detector training steps.

One command for a GPU machine; it prints one table and exits with status 1 if any check fails::

    python benchmarks/gpu_check.py                          # CUDA, COCO-scale sizes (minutes)
    python benchmarks/gpu_check.py --json output/gpu.json   # also write every row as JSON
    python benchmarks/gpu_check.py --device cpu --quick     # a tiny version of every section

Sections (``--only`` picks some):

* ``correctness``: each loss (PAP with the identity and with the published RetinaNet functions,
  AP-Loss, aLRP Loss, RS Loss) on the device, in float32 and in float64, against the CPU
  float64 result on the same inputs: values and gradients (logits, and the quality or
  localisation errors where they get one). Cases: random logits with ignored entries, logits and
  qualities on a coarse grid (many exact ties between positives, negatives and ignored entries),
  no positives, and one large problem. Tolerances: a value ``v`` must satisfy
  ``|v - v_ref| <= rtol |v_ref| + atol`` and a gradient ``g`` ``max|g - g_ref| <= rtol
  max|g_ref| + atol``, with (rtol, atol) = (1e-5, 1e-6) for values and (1e-4, 1e-12) for
  gradients in float32, (1e-10, 1e-14) for both in float64. Exact checks besides: ignored
  entries get a zero gradient, without positives every value and gradient is zero, nothing is
  NaN or infinite.
* ``speed``: one forward + backward of each loss at M entries with P positives (2% of the
  entries ignored; positives' logits ~ N(1, 1), the rest ~ N(0, 1)): one warm-up call, then the
  median of ``--repeats`` timed calls (fewer once a row has used ``--row-budget-s``), each
  ended by ``torch.cuda.synchronize``, and their spread ``(slowest - fastest) / median``. The
  smallest size (M = 1e3, with P = M / 100 where M is below every P) shows the fixed cost of a
  call beside the larger ones. Peak memory is ``torch.cuda.max_memory_allocated`` during
  these calls minus the memory held by the inputs (not measured on the CPU). The PAP loss is also
  run through its dense ``[P, M]`` reference where the estimated peak fits in
  ``--dense-limit-gib`` (bytes per pair measured by a small calibration run), and the ranking
  losses through their per-positive loop references up to ``--ref-max-pairs`` pairs; those rows
  give time and memory as multiples of the fast version's and check that both values agree
  (relative 1e-4). Peak memory counts the step's copies of the inputs and their gradients.
* ``train``: R50-FPN RetinaNet and Faster R-CNN (``configs/coco/pap_*_R50_FPN_512.yaml``, random
  weights, nothing downloaded) with ``MODEL.PAPLOSS.LOSS`` stock, pap (published functions) and
  rs: forward, backward and an SGD step (momentum 0.9, learning rate ``--lr``, 0 by default so
  that the random network cannot diverge) on batches of random images with 1-8 random boxes
  each, fed to the model directly (no dataset). Median seconds per iteration after
  ``--train-warmup`` untimed ones (5 by default: on an H100 the first 5 iterations of stock
  RetinaNet were 4-9x slower than the later ones; its focal loss is a TorchScript function,
  optimised during its first calls; the spread ``(slowest - fastest) / median`` of the timed
  ones is printed to check that they are settled), and the peak of ``torch.cuda.max_memory_allocated`` over
  the timed iterations (model, optimizer state and activations). A non-finite loss fails the row.

Default sizes: M = 1e3 (P = 10), 1e5, 1e6, 1e7, 2e7 with P = 1e3, 1e4 (a RetinaNet batch of 8 COCO
images at 512 px ranks about 3e7 (anchor, class) entries); training batch 8 at 512 px. A row that
raises fails with its one-line error (the traceback goes to stderr) and the script carries on.
``--device cpu --quick`` shrinks every size (M = 1e4, 3e4 with P = 10, 100, no M = 1e3 row, which
at these P would only repeat the small sizes' rows; one timed training step per row, no warm-up,
on 2 images of 64 px); the test suite runs it that way, with a 300 s limit.
"""

import argparse
import copy
import gc
import json
import math
import os
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a plain checkout

from paploss.losses import (  # noqa: E402
    PAPFunctions,
    alrp_loss,
    alrp_loss_reference,
    ap_loss,
    ap_loss_reference,
    pap_loss_components,
    pap_loss_dense,
    rank_sort_loss,
    rank_sort_loss_reference,
)

GIB = 1024**3
MIB = 1024**2
SECTIONS = ("correctness", "speed", "train")
OK, FAIL, SKIP = "ok", "FAIL", "skip"

#: (rtol, atol) of values and of gradients, per dtype of the device run (see the module doc).
TOLERANCES = {
    torch.float32: {"value": (1e-5, 1e-6), "grad": (1e-4, 1e-12)},
    torch.float64: {"value": (1e-10, 1e-14), "grad": (1e-10, 1e-14)},
}


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the table; ``numbers`` holds the measured values for the JSON output."""

    section: str
    item: str
    size: str
    time: str = ""
    memory: str = ""
    result: str = ""
    check: str = OK
    numbers: Dict[str, object] = field(default_factory=dict)


COLUMNS = (  # (title, Row attribute, width)
    ("section", "section", 11),
    ("item", "item", 30),
    ("size", "size", 16),
    ("time", "time", 12),
    ("peak memory", "memory", 11),
    ("error / ratio", "result", 46),
    ("check", "check", 5),
)


class Table:
    """Prints rows as they come (so a long run shows progress) and keeps them for the JSON."""

    def __init__(self) -> None:
        self.rows: List[Row] = []

    def header(self) -> None:
        line = " | ".join(f"{title:<{width}}" for title, _, width in COLUMNS)
        print(line)
        print("-" * len(line), flush=True)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(" | ".join(f"{getattr(row, attr):<{w}}" for _, attr, w in COLUMNS), flush=True)
        return row

    @property
    def failed(self) -> List[Row]:
        return [row for row in self.rows if row.check == FAIL]


def format_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.3f} s"


def format_memory(num_bytes: Optional[float]) -> str:
    if num_bytes is None:
        return "n/a"
    return f"{num_bytes / GIB:.2f} GiB" if num_bytes >= GIB else f"{num_bytes / MIB:.1f} MiB"


def format_count(value: float) -> str:
    """``100000 -> '1e5'``, ``20000000 -> '2e7'``, ``3000 -> '3e3'``; other numbers as they are."""
    exponent = int(math.floor(math.log10(value))) if value > 0 else 0
    mantissa = value / 10**exponent
    if value >= 1000 and abs(mantissa - round(mantissa)) < 1e-9:
        return f"{round(mantissa)}e{exponent}" if round(mantissa) != 1 else f"1e{exponent}"
    return str(int(value))


def error_one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:120]


# ---------------------------------------------------------------------------------------------
# Device helpers
# ---------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error)


class Measurement(NamedTuple):
    seconds: float  # median of the timed calls
    runs: int
    spread: float  # (slowest - fastest) / median of the timed calls
    peak_extra_bytes: Optional[int]  # None where not measured (CPU)
    value: float  # loss value of the warm-up call


def measure(
    step: Callable[[], torch.Tensor], device: torch.device, repeats: int, budget_s: float
) -> Measurement:
    """Time ``step`` (one forward + backward, returning the loss): one warm-up call, then up to
    ``repeats`` synchronised calls, stopping early (after at least one) once ``budget_s`` seconds
    are spent; the peak memory over all calls minus what was allocated before them."""
    free_memory(device)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    value = float(step().detach())
    synchronize(device)
    spent = time.perf_counter() - start
    times: List[float] = []
    while len(times) < repeats and (not times or spent < budget_s):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
        spent += times[-1]
    peak = None
    if device.type == "cuda":
        peak = max(torch.cuda.max_memory_allocated(device) - baseline, 0)
    median = statistics.median(times)
    return Measurement(median, len(times), spread(times), peak, value)


def spread(times: List[float]) -> float:
    """``(max - min) / median`` of timings: how settled they are (0 for a single one)."""
    median = statistics.median(times)
    return (max(times) - min(times)) / median if median > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# The losses, behind one signature
# ---------------------------------------------------------------------------------------------
class LossSpec(NamedTuple):
    """A loss as ``call(logits, targets, extra) -> values`` (``values[0]`` is backpropagated).

    ``extra`` is the per-entry tensor the loss reads at the positives (quality or localisation
    error); ``extra_grad`` says whether it receives a gradient.
    """

    name: str
    call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, ...]]
    extra_grad: bool
    reference: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = None


def _pap_spec(name: str, functions: PAPFunctions) -> LossSpec:
    cache: Dict[torch.device, PAPFunctions] = {}

    def on(device: torch.device) -> PAPFunctions:
        if device not in cache:
            # A copy per device (Module.to moves in place); float64 knots, cast to the logits'
            # dtype at evaluation.
            cache[device] = copy.deepcopy(functions).to(device)
        return cache[device]

    def call(logits, targets, quality):
        parts = pap_loss_components(logits, targets, quality, on(logits.device))
        return parts.loss, parts.localization, parts.ranking

    def dense(logits, targets, quality):
        return pap_loss_dense(logits, targets, quality, on(logits.device))

    return LossSpec(name, call, True, dense)


def _alrp_call(fn):
    def call(logits, targets, loc_errors):
        cls_loss, loc_loss = fn(logits, targets, loc_errors)
        return (cls_loss + loc_loss, cls_loss, loc_loss)

    return call


def loss_specs() -> List[LossSpec]:
    """PAP (identity, published RetinaNet functions), AP-Loss, aLRP Loss, RS Loss; the baselines
    with their default deltas (those of ``MODEL.PAPLOSS.{AP,ALRP,RS}.DELTA``)."""
    return [
        _pap_spec("PAP identity", PAPFunctions.identity()),
        _pap_spec("PAP published", PAPFunctions.published("retinanet")),
        LossSpec(
            "AP-Loss",
            lambda logits, targets, _: (ap_loss(logits, targets),),
            False,
            lambda logits, targets, _: ap_loss_reference(logits, targets),
        ),
        LossSpec(
            "aLRP Loss",
            _alrp_call(alrp_loss),
            True,
            lambda *args: sum(alrp_loss_reference(*args)),
        ),
        LossSpec(
            "RS Loss",
            lambda logits, targets, quality: (rank_sort_loss(logits, targets, quality),),
            False,
            rank_sort_loss_reference,
        ),
    ]


# ---------------------------------------------------------------------------------------------
# Correctness
# ---------------------------------------------------------------------------------------------
class Problem(NamedTuple):
    name: str
    logits: torch.Tensor  # [M] float64 on the CPU, values exact in float32
    targets: torch.Tensor  # [M] long in {1, 0, -1}
    extra: torch.Tensor  # [M] float64 in [0, 1]


def make_problem(
    name: str,
    num: int,
    positive_fraction: float,
    ignored_fraction: float,
    seed: int,
    grid: Optional[float] = None,
) -> Problem:
    """Random entries: positives' logits ~ N(1, 1), the others ~ N(0, 1), extra ~ U(0, 1).

    With ``grid``, logits are rounded to multiples of ``grid`` in [-2, 2] and the extra values to
    multiples of 1/8, so that exact ties are everywhere. All values are exact in float32, so the
    float32 and float64 runs see the same inputs.
    """
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(num, generator=gen)
    num_pos = int(round(positive_fraction * num))
    num_ignored = int(round(ignored_fraction * num))
    targets = torch.zeros(num, dtype=torch.long)
    targets[order[:num_pos]] = 1
    targets[order[num_pos : num_pos + num_ignored]] = -1
    logits = torch.randn(num, generator=gen, dtype=torch.float64) + (targets == 1).double()
    extra = torch.rand(num, generator=gen, dtype=torch.float64)
    if grid is not None:
        logits = (logits / grid).round().clamp(-2 / grid, 2 / grid) * grid
        extra = (extra * 8).round() / 8
    return Problem(name, logits.float().double(), targets, extra.float().double())


def correctness_problems(quick: bool) -> List[Problem]:
    small = 2_000 if quick else 20_000
    large = 20_000 if quick else 2_000_000
    return [
        make_problem("random", small, 0.03, 0.10, seed=1),
        make_problem("ties", small, 0.05, 0.10, seed=2, grid=0.25),
        make_problem("no positives", small, 0.0, 0.10, seed=3),
        make_problem("large", large, 0.005, 0.02, seed=4),
    ]


class Evaluation(NamedTuple):
    values: List[torch.Tensor]  # scalars on the CPU, float64
    grads: List[torch.Tensor]  # [M] on the CPU, float64: logits (and extra)


def evaluate(
    spec: LossSpec, problem: Problem, device: torch.device, dtype: torch.dtype
) -> Evaluation:
    logits = problem.logits.to(device=device, dtype=dtype, copy=True).requires_grad_(True)
    extra = problem.extra.to(device=device, dtype=dtype, copy=True)
    extra.requires_grad_(spec.extra_grad)
    values = spec.call(logits, problem.targets.to(device), extra)
    values[0].backward()
    leaves = [logits, extra] if spec.extra_grad else [logits]
    grads = [torch.zeros_like(x) if x.grad is None else x.grad for x in leaves]
    return Evaluation(
        [v.detach().double().cpu() for v in values], [g.double().cpu() for g in grads]
    )


def compare(result: Evaluation, reference: Evaluation, dtype: torch.dtype) -> float:
    """The largest error as a fraction of its tolerance (<= 1 passes)."""
    worst = 0.0
    value_rtol, value_atol = TOLERANCES[dtype]["value"]
    grad_rtol, grad_atol = TOLERANCES[dtype]["grad"]
    for value, ref in zip(result.values, reference.values):
        allowed = value_rtol * abs(float(ref)) + value_atol
        worst = max(worst, _fraction(abs(float(value - ref)), allowed))
    for grad, ref in zip(result.grads, reference.grads):
        allowed = grad_rtol * float(ref.abs().max()) + grad_atol
        worst = max(worst, _fraction(float((grad - ref).abs().max()), allowed))
    return worst


def _fraction(error: float, allowed: float) -> float:
    if math.isnan(error):
        return math.inf
    return error / allowed if allowed > 0 else (0.0 if error == 0 else math.inf)


def exact_checks(result: Evaluation, problem: Problem) -> List[str]:
    """What the device result gets wrong that must hold exactly (empty when all hold)."""
    problems = []
    if not all(bool(torch.isfinite(x).all()) for x in result.values + result.grads):
        problems.append("NaN/inf")
    ignored = problem.targets == -1
    if any(bool((grad[ignored] != 0).any()) for grad in result.grads):
        problems.append("ignored entries got a gradient")
    if not bool((problem.targets == 1).any()):
        if any(float(v) != 0 for v in result.values) or any(
            bool((g != 0).any()) for g in result.grads
        ):
            problems.append("no positives but a non-zero value or gradient")
    return problems


def run_correctness(
    table: Table, device: torch.device, quick: bool, tolerance_scale: float
) -> None:
    cpu = torch.device("cpu")
    for problem in correctness_problems(quick):
        num_pos = int((problem.targets == 1).sum())
        size = f"M={format_count(problem.logits.numel())} P={num_pos}"
        for spec in loss_specs():
            item = f"{spec.name}: {problem.name}"
            try:
                reference = evaluate(spec, problem, cpu, torch.float64)
                errors, failures, numbers = [], [], {}
                for dtype in (torch.float32, torch.float64):
                    result = evaluate(spec, problem, device, dtype)
                    fraction = _fraction(compare(result, reference, dtype), tolerance_scale)
                    failures += [f"{str(dtype)[6:]} {p}" for p in exact_checks(result, problem)]
                    if fraction > 1.0:
                        failures.append(f"{str(dtype)[6:]} over tolerance")
                    errors.append(f"{str(dtype)[6:]} {fraction:.1e}")
                    numbers[f"{str(dtype)[6:]}_error_over_tolerance"] = fraction
            except Exception as error:  # noqa: BLE001 -- report and carry on
                traceback.print_exc()
                table.add(Row("correctness", item, size, result=error_one_line(error), check=FAIL))
                continue
            result_text = "error/tol " + ", ".join(errors)
            if failures:
                result_text += "; " + "; ".join(failures)
            table.add(
                Row(
                    "correctness",
                    item,
                    size,
                    result=result_text,
                    check=FAIL if failures else OK,
                    numbers=numbers,
                )
            )


# ---------------------------------------------------------------------------------------------
# Speed and memory
# ---------------------------------------------------------------------------------------------
def speed_inputs(num: int, num_pos: int, device: torch.device, seed: int = 0):
    """Inputs of the timed rows, built on the device: 2% ignored entries."""
    gen = torch.Generator(device=device).manual_seed(seed)
    order = torch.randperm(num, generator=gen, device=device)
    targets = torch.zeros(num, dtype=torch.long, device=device)
    targets[order[:num_pos]] = 1
    targets[order[num_pos : num_pos + num // 50]] = -1
    logits = torch.randn(num, generator=gen, device=device) + (targets == 1).float()
    extra = torch.rand(num, generator=gen, device=device)
    return logits, targets, extra


def make_step(fn, spec: LossSpec, inputs) -> Callable[[], torch.Tensor]:
    logits, targets, extra = inputs

    def step():
        leaf = logits.detach().clone().requires_grad_(True)
        extra_leaf = extra.detach().clone().requires_grad_(spec.extra_grad)
        loss = fn(leaf, targets, extra_leaf)
        loss = loss[0] if isinstance(loss, tuple) else loss
        loss.backward()
        return loss

    return step


def dense_bytes_per_pair(spec: LossSpec, device: torch.device) -> Optional[float]:
    """Peak bytes per (positive, entry) pair of the dense PAP reference, from a small run."""
    if device.type != "cuda":
        return None
    num, num_pos = 20_000, 200
    step = make_step(spec.reference, spec, speed_inputs(num, num_pos, device, seed=1))
    return measure(step, device, 1, 0.0).peak_extra_bytes / (num * num_pos)


def run_speed(table: Table, device: torch.device, args: argparse.Namespace) -> None:
    specs = [s for s in loss_specs() if s.name != "PAP identity"]  # same cost as published
    pap = specs[0]
    per_pair = dense_bytes_per_pair(pap, device)
    dense_limit = args.dense_limit_gib * GIB
    deadline = time.perf_counter() + args.speed_limit_s
    for num in (int(m) for m in args.sizes):
        # A size below every P (M = 1e3: the fixed cost of a call) runs with P = M / 100.
        positives = [int(p) for p in args.positives if int(p) < num] or [max(num // 100, 1)]
        for num_pos in positives:
            size = f"M={format_count(num)} P={format_count(num_pos)}"
            if time.perf_counter() > deadline:
                table.add(
                    Row("speed", "all losses", size, result="over --speed-limit-s", check=SKIP)
                )
                continue
            inputs = speed_inputs(num, num_pos, device)
            for spec in specs:
                fast = _speed_row(table, spec, spec.call, "fast", size, inputs, device, args)
                pairs = num * num_pos
                if spec is pap:
                    estimate = per_pair * pairs if per_pair is not None else None
                    if estimate is not None and estimate > dense_limit:
                        why = f"dense est. {format_memory(estimate)} > --dense-limit-gib"
                    elif estimate is None and pairs > args.ref_max_pairs:
                        why = "P*M over --ref-max-pairs"
                    else:
                        why = ""
                    _reference_row(table, spec, "dense", size, inputs, device, args, fast, why)
                elif pairs <= args.ref_max_pairs:
                    _reference_row(table, spec, "loop", size, inputs, device, args, fast, "")
            del inputs
            free_memory(device)


def _speed_row(table, spec, fn, kind, size, inputs, device, args) -> Optional[Measurement]:
    item = f"{spec.name} {kind} fwd+bwd"
    try:
        result = measure(make_step(fn, spec, inputs), device, args.repeats, args.row_budget_s)
    except Exception as error:  # noqa: BLE001 -- report and carry on
        traceback.print_exc()
        free_memory(device)
        table.add(Row("speed", item, size, result=error_one_line(error), check=FAIL))
        return None
    finite = math.isfinite(result.value)
    table.add(
        Row(
            "speed",
            item,
            size,
            time=format_time(result.seconds),
            memory=format_memory(result.peak_extra_bytes),
            result=f"loss {result.value:.6g}, {result.runs} runs, spread {result.spread:.0%}"
            + ("" if finite else " NaN"),
            check=OK if finite else FAIL,
            numbers=dict(result._asdict()),
        )
    )
    return result


def _reference_row(table, spec, kind, size, inputs, device, args, fast, skip_reason) -> None:
    item = f"{spec.name} {kind} ref"
    if fast is None:
        skip_reason = "fast version failed"
    if skip_reason:
        table.add(Row("speed", item, size, result=skip_reason, check=SKIP))
        return
    try:
        result = measure(
            make_step(spec.reference, spec, inputs), device, args.repeats, args.row_budget_s
        )
    except Exception as error:  # noqa: BLE001 -- report and carry on
        free_memory(device)
        if is_out_of_memory(error):
            table.add(Row("speed", item, size, result="out of memory", check=SKIP))
            return
        traceback.print_exc()
        table.add(Row("speed", item, size, result=error_one_line(error), check=FAIL))
        return
    agree = abs(result.value - fast.value) <= 1e-4 * abs(fast.value) + 1e-6
    text = f"{result.seconds / fast.seconds:.1f}x fast's time"
    if result.peak_extra_bytes is not None and fast.peak_extra_bytes:
        text += f", {result.peak_extra_bytes / fast.peak_extra_bytes:.1f}x memory"
    text += ", same value" if agree else f", value {result.value:.6g} != fast"
    table.add(
        Row(
            "speed",
            item,
            size,
            time=format_time(result.seconds),
            memory=format_memory(result.peak_extra_bytes),
            result=text,
            check=OK if agree else FAIL,
            numbers=dict(result._asdict()),
        )
    )


# ---------------------------------------------------------------------------------------------
# Training steps
# ---------------------------------------------------------------------------------------------
def _detectron2_compat() -> None:
    """Shims for running Detectron2 v0.6 where it was installed without its compiled ops.

    * ``detectron2._C`` holds the CUDA/C++ ops (deformable convolution, rotated boxes). Those
      modules import it at import time but call it only when used, and no R50-FPN RetinaNet or
      Faster R-CNN uses them. Where the extension cannot be loaded (e.g. a build for another
      Python version), an empty module stands in for it.
    * Pillow 10 removed ``Image.LINEAR`` (an alias of ``Image.BILINEAR``), which Detectron2 v0.6
      uses as a default argument.
    """
    import types
    import warnings

    try:
        import detectron2._C  # noqa: F401
    except ImportError:
        sys.modules["detectron2._C"] = types.ModuleType("detectron2._C")
    from PIL import Image

    with warnings.catch_warnings():  # Pillow 9 warns on reading the deprecated name
        warnings.simplefilter("ignore", DeprecationWarning)
        missing = not hasattr(Image, "LINEAR")
    if missing:
        Image.LINEAR = Image.BILINEAR


TRAIN_MODELS = (
    ("RetinaNet R50-FPN", "configs/coco/pap_retinanet_R50_FPN_512.yaml"),
    ("Faster R-CNN R50-FPN", "configs/coco/pap_faster_rcnn_R50_FPN_512.yaml"),
)
TRAIN_LOSSES = ("stock", "pap", "rs")


def train_config(config_file: str, loss: str, device: torch.device, batch: int):
    """The config of one training row: the repo's COCO R50-FPN config with ``MODEL.PAPLOSS.LOSS``
    set (pap keeps the published functions it holds; rs ranks all proposals in the ROI head, as
    in its paper and ``configs/synthetic/rs_faster_rcnn.yaml``)."""
    from paploss.engine.setup import load_config
    from paploss.heads import PAP_HEADS

    opts = ["MODEL.PAPLOSS.LOSS", loss, "MODEL.DEVICE", str(device)]
    opts += ["SOLVER.IMS_PER_BATCH", batch, "MODEL.WEIGHTS", ""]
    if loss != "pap":  # the published gradient scales are read (and allowed) by PAP only
        for head in PAP_HEADS:
            opts += [f"MODEL.PAPLOSS.{head}.GRAD_SCALE", 1.0]
    if loss == "rs":
        opts += ["MODEL.PAPLOSS.ROI_HEADS.SAMPLE_PROPOSALS", False]
    return load_config(str(REPO_ROOT / config_file), opts)


def random_batch(
    batch: int, size: int, num_classes: int, device: torch.device, seed: int
) -> List[Dict]:
    """Detectron2 training inputs: random ``uint8`` images with 1-8 random boxes each."""
    from detectron2.structures import Boxes, Instances

    gen = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(batch):
        image = torch.randint(0, 256, (3, size, size), generator=gen, dtype=torch.uint8)
        num_boxes = int(torch.randint(1, 9, (1,), generator=gen))
        wh = (0.05 + 0.55 * torch.rand(num_boxes, 2, generator=gen)) * size
        xy = torch.rand(num_boxes, 2, generator=gen) * (size - wh)
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        instances.gt_classes = torch.randint(0, num_classes, (num_boxes,), generator=gen)
        inputs.append({"image": image.to(device), "instances": instances.to(device)})
    return inputs


def run_train(table: Table, device: torch.device, args: argparse.Namespace) -> None:
    import warnings

    _detectron2_compat()
    # Detectron2 v0.6 on a newer PyTorch: deprecation notices that would split the table.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release")
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    stock_times: Dict[str, float] = {}
    for model_name, config_file in TRAIN_MODELS:
        for loss in TRAIN_LOSSES:
            item = f"{model_name} {loss}"
            size = f"{args.batch} x {args.image_size} px"
            model = optimizer = None
            try:
                cfg = train_config(config_file, loss, device, args.batch)
                heads = cfg.MODEL.RETINANET if "RetinaNet" in model_name else cfg.MODEL.ROI_HEADS
                num_classes = heads.NUM_CLASSES
                torch.manual_seed(0)
                model = build_model(cfg)
                model.train()
                optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
                batches = [
                    random_batch(args.batch, args.image_size, num_classes, device, seed=i)
                    for i in range(args.train_warmup + args.train_iters)
                ]
                times, losses = _train_steps(model, optimizer, batches, args, device, EventStorage)
                peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
            except Exception as error:  # noqa: BLE001 -- report and carry on
                traceback.print_exc()
                table.add(Row("train", item, size, result=error_one_line(error), check=FAIL))
                continue
            finally:
                del model, optimizer
                free_memory(device)
            median = statistics.median(times)
            finite = all(math.isfinite(v) for v in losses)
            if loss == "stock":
                stock_times[model_name] = median
            text = (
                f"{len(times)} iters {min(times):.3f}-{max(times):.3f} s "
                f"(spread {spread(times):.0%}), loss {losses[-1]:.4g}"
            )
            if loss != "stock" and model_name in stock_times:
                text = f"{median / stock_times[model_name]:.2f}x stock, " + text
            table.add(
                Row(
                    "train",
                    item,
                    size,
                    time=f"{median:.3f} s/it",
                    memory=format_memory(peak),
                    result=text + ("" if finite else ", non-finite loss"),
                    check=OK if finite else FAIL,
                    numbers=dict(seconds_per_iter=median, times=times, peak_bytes=peak),
                )
            )


def _train_steps(model, optimizer, batches, args, device, EventStorage):
    times, losses = [], []
    with EventStorage(0) as storage:
        for index, batch in enumerate(batches):
            if index == args.train_warmup and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            start = time.perf_counter()
            loss_dict = model(batch)
            total = sum(loss_dict.values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            synchronize(device)
            if index >= args.train_warmup:
                times.append(time.perf_counter() - start)
            losses.append(float(total.detach()))
            storage.step()
    return times, losses


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="torch device (default: cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--json", help="also write the rows and the setup to this JSON file")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    speed = parser.add_argument_group("speed")
    speed.add_argument("--sizes", type=float, nargs="+", help="M (default 1e3 1e5 1e6 1e7 2e7)")
    speed.add_argument("--positives", type=float, nargs="+", help="P (default 1e3 1e4)")
    speed.add_argument("--repeats", type=int, help="timed calls per row (default 5)")
    speed.add_argument("--row-budget-s", type=float, default=2.0, help="seconds per row")
    speed.add_argument("--speed-limit-s", type=float, default=150.0, help="seconds in all")
    speed.add_argument("--dense-limit-gib", type=float, help="default: 40%% of the GPU")
    speed.add_argument(
        "--ref-max-pairs",
        type=float,
        default=1e8,
        help="largest P*M of the loop references (and of the dense one on the CPU)",
    )
    train = parser.add_argument_group("train")
    train.add_argument("--batch", type=int, help="images per batch (default 8)")
    train.add_argument("--image-size", type=int, help="square image side (default 512)")
    train.add_argument("--train-warmup", type=int, help="untimed iterations (default 5)")
    train.add_argument("--train-iters", type=int, help="timed iterations (default 10)")
    train.add_argument(
        "--lr",
        type=float,
        default=0.0,
        help="SGD learning rate (default 0: the optimizer does all its work, but the random "
        "network, whose activations are far from those of a trained one, cannot diverge)",
    )
    parser.add_argument(
        "--tolerance-scale",
        type=float,
        default=1.0,
        help="multiplies the correctness tolerances (0: any inexact result fails)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = dict(
        sizes=[1e4, 3e4] if quick else [1e3, 1e5, 1e6, 1e7, 2e7],
        positives=[10, 100] if quick else [1e3, 1e4],
        repeats=2 if quick else 5,
        batch=2 if quick else 8,
        image_size=64 if quick else 512,
        train_warmup=0 if quick else 5,
        train_iters=1 if quick else 10,
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise SystemExit(f"--device {name}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available here (try --device cpu)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def describe_setup(device: torch.device, args: argparse.Namespace) -> Dict[str, object]:
    setup: Dict[str, object] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "threads": torch.get_num_threads(),
        "quick": args.quick,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        setup.update(
            name=props.name,
            memory_gib=round(props.total_memory / GIB, 1),
            cuda=torch.version.cuda,
        )
    return setup


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dense_limit_gib is None:
        total = (
            torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 0
        )
        args.dense_limit_gib = 0.4 * total / GIB
    setup = describe_setup(device, args)
    print("GPU check: " + ", ".join(f"{k}={v}" for k, v in setup.items()))
    print(
        "correctness: error/tol = largest error over its tolerance on the device (<= 1 passes) "
        "vs CPU float64; speed: median synchronised fwd+bwd time, peak extra "
        "max_memory_allocated; train: median s/iter, peak max_memory_allocated"
    )
    table = Table()
    table.header()
    started = time.perf_counter()
    runners = {
        "correctness": lambda: run_correctness(table, device, args.quick, args.tolerance_scale),
        "speed": lambda: run_speed(table, device, args),
        "train": lambda: run_train(table, device, args),
    }
    for section in SECTIONS:
        if section in args.only:
            runners[section]()
            _write_json(args.json, setup, table, args)
    failed = table.failed
    print(
        f"{len(table.rows)} rows, {len(failed)} failed, "
        f"{sum(r.check == SKIP for r in table.rows)} skipped, "
        f"{time.perf_counter() - started:.0f} s"
    )
    if failed:
        print("FAILED: " + "; ".join(f"{r.section} {r.item} ({r.size})" for r in failed))
    return 1 if failed else 0


def _write_json(path: Optional[str], setup, table: Table, args) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    content = {
        "setup": setup,
        "args": vars(args),
        "rows": [asdict(row) for row in table.rows],
        "failed": len(table.failed),
    }
    with open(path, "w") as f:
        json.dump(content, f, indent=1, default=str)


if __name__ == "__main__":
    sys.exit(main())
