#!/usr/bin/env python
"""How well a config's anchors fit a dataset's boxes, and what input size and anchors fit better.

Every ground-truth box is taken into the network input frame by the dataset mapper's own
augmentations (the resize of ``INPUT.MIN_SIZE_TRAIN``/``MAX_SIZE_TRAIN``; ``--test-resize`` for
``MIN_SIZE_TEST``/``MAX_SIZE_TEST``), and its best IoU with any anchor of the head that matches
anchors to ground truth is computed with Detectron2's anchor generator and ``pairwise_iou``: the
RPN of a Faster R-CNN (``MODEL.RPN.IOU_THRESHOLDS``), RetinaNet's head
(``MODEL.RETINANET.IOU_THRESHOLDS``). A box whose best IoU stays below the positive (upper)
threshold is still assigned its best anchor by Detectron2's matcher (a "low-quality match"), but
it trains from a poor start and many such boxes are missed.

Prints three tables: the anchor coverage of the current config, box sizes (a histogram in the input
frame with the coverage per size bin), and suggestions: for a few input sizes, the anchor sizes
``k x stride`` per level (the config's scales within a level and aspect ratios kept) that give the
most boxes an anchor at the positive threshold. ``--plot FILE`` draws the size histogram with the
anchor sizes and the best IoU per box.

Examples::

    python tools/analyze_anchors.py --config-file configs/synthetic/pap_faster_rcnn_identity.yaml
    python tools/analyze_anchors.py --config-file configs/own_data/trees.yaml --plot anchors.png
"""

import argparse
import math
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detectron2.config import CfgNode  # noqa: E402
from detectron2.data import DatasetCatalog, DatasetMapper  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import build_anchor_generator, build_backbone  # noqa: E402
from detectron2.structures import Boxes, BoxMode, pairwise_iou  # noqa: E402
from detectron2.structures.boxes import matched_pairwise_iou  # noqa: E402
from tabulate import tabulate  # noqa: E402

from paploss.engine import heads_used, setup_cfg  # noqa: E402

#: Upper edges (px, square root of the box area in the input frame) of the size histogram.
SIZE_EDGES = (8, 16, 32, 64, 128, 256, 512, math.inf)
#: Anchor sizes tried by the suggestion, as multiples of each level's stride.
STRIDE_MULTIPLES = tuple(round(2 ** (i / 2), 2) for i in range(9))  # 1 ... 16


@dataclass(frozen=True)
class AnchorHead:
    """The head whose anchors are matched to ground truth, with what its anchors depend on.

    Attributes:
        name: ``"RPN"`` or ``"RETINANET"`` (the config node).
        in_features: the feature maps it runs on, e.g. ``["p2", ..., "p6"]``.
        strides: their strides in input pixels.
        size_divisibility: the backbone pads the input to a multiple of this.
        thresholds: ``(lower, positive)`` IoU thresholds of its matcher.
    """

    name: str
    in_features: List[str]
    strides: List[int]
    size_divisibility: int
    thresholds: Tuple[float, float]


@dataclass
class Coverage:
    """Per ground-truth box: size and aspect ratio in the input frame, best anchor IoU.

    Attributes:
        sizes: ``[N]`` square root of the box area (px, input frame).
        original_sizes: ``[N]`` the same in the original image.
        aspect: ``[N]`` height / width (Detectron2's anchor aspect ratio).
        best_iou: ``[N]`` the largest IoU with any anchor.
        num_positive: ``[N]`` anchors at or above the positive threshold.
        anchors_per_image: mean number of anchors per image.
    """

    sizes: np.ndarray
    original_sizes: np.ndarray
    aspect: np.ndarray
    best_iou: np.ndarray
    num_positive: np.ndarray
    anchors_per_image: float

    def share(self, threshold: float, mask: Optional[np.ndarray] = None) -> float:
        """Percentage of boxes (in ``mask``) whose best IoU reaches ``threshold``."""
        values = self.best_iou if mask is None else self.best_iou[mask]
        return 100.0 * float((values >= threshold).mean()) if len(values) else float("nan")


def anchor_head(cfg: CfgNode) -> AnchorHead:
    """The anchor head of ``cfg``'s meta-architecture (strides from the built backbone).

    Raises:
        ValueError: if the meta-architecture matches no anchors.
    """
    name = heads_used(cfg).anchor_head
    if name is None:
        raise ValueError(
            f"MODEL.META_ARCHITECTURE '{cfg.MODEL.META_ARCHITECTURE}' (proposal generator "
            f"'{cfg.MODEL.PROPOSAL_GENERATOR.NAME}') matches no anchors to ground truth"
        )
    node = cfg.MODEL[name]
    backbone = build_backbone(cfg)
    shapes = backbone.output_shape()
    lower, positive = node.IOU_THRESHOLDS[0], node.IOU_THRESHOLDS[-1]
    return AnchorHead(
        name=name,
        in_features=list(node.IN_FEATURES),
        strides=[shapes[f].stride for f in node.IN_FEATURES],
        size_divisibility=max(1, int(backbone.size_divisibility)),
        thresholds=(float(lower), float(positive)),
    )


def input_frame_boxes(
    cfg: CfgNode, dicts: Sequence[dict], train: bool = True, seed: int = 0
) -> List[Tuple[Tuple[int, int], np.ndarray, np.ndarray]]:
    """The non-crowd boxes of ``dicts`` after the dataset mapper's augmentations of ``cfg``.

    Returns:
        Per image: the input ``(height, width)``, the ``[n, 4]`` XYXY boxes in the input frame
        (clipped to the image, empty ones dropped, as the mapper does) and the ``[n]`` box sizes
        (square root of the area) in the original image.
    """
    augmentations = T.AugmentationList(DatasetMapper.from_config(cfg, train)["augmentations"])
    state = np.random.get_state()
    np.random.seed(seed)  # Detectron2's augmentations sample with numpy's global generator
    try:
        result = []
        for record in dicts:
            anns = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
            boxes = np.array(
                [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns],
                dtype=np.float64,
            ).reshape(-1, 4)
            original = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
            aug_input = T.AugInput(
                np.zeros((record["height"], record["width"], 1), np.uint8), boxes=boxes
            )
            augmentations(aug_input)
            height, width = aug_input.image.shape[:2]
            moved = aug_input.boxes.copy()
            moved[:, 0::2] = moved[:, 0::2].clip(0, width)
            moved[:, 1::2] = moved[:, 1::2].clip(0, height)
            keep = (moved[:, 2] - moved[:, 0] > 1e-5) & (moved[:, 3] - moved[:, 1] > 1e-5)
            result.append(((height, width), moved[keep], original[keep]))
        return result
    finally:
        np.random.set_state(state)


def coverage(
    cfg: CfgNode,
    head: AnchorHead,
    images: Sequence[Tuple[Tuple[int, int], np.ndarray, np.ndarray]],
    sizes: Optional[List[List[float]]] = None,
    all_anchors: bool = True,
) -> Coverage:
    """Best anchor IoU of every box of ``images`` (from :func:`input_frame_boxes`).

    Args:
        cfg: the config; its ``MODEL.ANCHOR_GENERATOR`` builds the anchors (Detectron2's
            ``build_anchor_generator``).
        head: :func:`anchor_head` of ``cfg``.
        images: boxes in the input frame per image.
        sizes: ``MODEL.ANCHOR_GENERATOR.SIZES`` to use instead of the config's.
        all_anchors: True: IoU with every anchor of the image (``pairwise_iou``), which also
            counts the anchors at the positive threshold. False: only with the anchors of the
            grid cell nearest to the box centre on each level (``matched_pairwise_iou``), which
            gives the same best IoU (an anchor of fixed shape overlaps a box the more, the nearer
            their centres are on each axis) at a fraction of the cost; ``num_positive`` is NaN.
    """
    if sizes is not None:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = sizes
    generator = build_anchor_generator(cfg, [ShapeSpec(stride=s) for s in head.strides])
    cell_anchors = [b for _, b in generator.cell_anchors.named_buffers()]  # [A_l, 4] at (0, 0)
    div = head.size_divisibility
    cache: Dict[Tuple[int, int], Boxes] = {}
    kept = [(hw, boxes, original) for hw, boxes, original in images if len(boxes)]
    grids = {  # (height, width) of each level's grid of an image of input size hw
        hw: [
            (
                math.ceil(math.ceil(hw[0] / div) * div / s),
                math.ceil(math.ceil(hw[1] / div) * div / s),
            )
            for s in head.strides
        ]
        for hw, _, _ in images
    }
    counts = [
        sum(h * w * len(c) for (h, w), c in zip(grids[hw], cell_anchors)) for hw, _, _ in images
    ]
    if not kept:
        empty = np.zeros(0)
        return Coverage(empty, empty, empty, empty, empty, float(np.mean(counts or [0])))
    boxes = np.concatenate([b for _, b, _ in kept])
    gt = torch.as_tensor(boxes, dtype=torch.float32)
    if all_anchors:
        best, positive = [], []
        for hw, image_boxes, _ in kept:
            if hw not in cache:
                cache[hw] = Boxes.cat(generator([torch.empty(1, 0, h, w) for h, w in grids[hw]]))
            iou = pairwise_iou(Boxes(torch.as_tensor(image_boxes, dtype=torch.float32)), cache[hw])
            best.append(iou.max(dim=1).values.numpy())
            positive.append((iou >= head.thresholds[1]).sum(dim=1).numpy())
        best_iou, num_positive = np.concatenate(best), np.concatenate(positive)
    else:
        box_grids = torch.tensor(
            [grids[hw] for hw, image_boxes, _ in kept for _ in range(len(image_boxes))]
        )  # [N, L, 2]
        candidates = _nearest_cell_anchors(gt, box_grids, head.strides, cell_anchors, generator)
        k = candidates.shape[1]
        iou = matched_pairwise_iou(
            Boxes(gt[:, None, :].expand(-1, k, -1).reshape(-1, 4)),
            Boxes(candidates.reshape(-1, 4)),
        ).reshape(-1, k)
        best_iou, num_positive = iou.max(dim=1).values.numpy(), np.full(len(gt), np.nan)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return Coverage(
        sizes=np.sqrt(w * h),
        original_sizes=np.concatenate([o for _, _, o in kept]),
        aspect=h / w,
        best_iou=best_iou,
        num_positive=num_positive,
        anchors_per_image=float(np.mean(counts)),
    )


def _nearest_cell_anchors(gt, grids, strides, cell_anchors, generator) -> torch.Tensor:
    """``[N, sum_l A_l, 4]``: per box, the anchors of each level's grid cell nearest to its centre,
    at the centres Detectron2's generator uses (``(i + OFFSET) x stride``); ``grids`` is the
    ``[N, L, 2]`` grid (height, width) of each box's image per level."""
    centre = (gt[:, :2] + gt[:, 2:]) / 2  # [N, 2] as (x, y)
    parts = []
    for level, (stride, cells) in enumerate(zip(strides, cell_anchors)):
        index = torch.round(centre / stride - generator.offset)
        index = torch.minimum(index.clamp(min=0), grids[:, level, [1, 0]].to(index) - 1)
        shift = (index + generator.offset) * stride  # [N, 2]
        parts.append(cells[None] + shift.repeat(1, 2)[:, None, :])
    return torch.cat(parts, dim=1)


def size_table(result: Coverage, head: AnchorHead) -> List[List]:
    """Rows of the box-size histogram: size bin, boxes, share, median best IoU, coverage."""
    lower, positive = head.thresholds
    rows, start = [], 0.0
    for end in SIZE_EDGES:
        mask = (result.sizes >= start) & (result.sizes < end)
        if mask.any():
            label = f"{start:g}-{end:g}" if math.isfinite(end) else f">= {start:g}"
            rows.append(_row(label, result, mask, lower, positive))
        start = end
    rows.append(_row("all", result, np.ones(len(result.sizes), bool), lower, positive))
    return rows


def _row(label, result: Coverage, mask, lower, positive) -> List:
    return [
        label,
        int(mask.sum()),
        f"{100.0 * mask.mean():.1f}",
        f"{np.median(result.best_iou[mask]):.2f}",
        f"{result.share(positive, mask):.1f}",
        f"{result.share(lower, mask):.1f}",
        f"{result.num_positive[mask].mean():.1f}",
    ]


def scaled_input(cfg: CfgNode, factor: float) -> CfgNode:
    """``cfg`` with every input size (train and test, min and max) multiplied by ``factor``."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.INPUT.MIN_SIZE_TRAIN = tuple(int(round(s * factor)) for s in cfg.INPUT.MIN_SIZE_TRAIN)
    cfg.INPUT.MAX_SIZE_TRAIN = int(round(cfg.INPUT.MAX_SIZE_TRAIN * factor))
    cfg.INPUT.MIN_SIZE_TEST = int(round(cfg.INPUT.MIN_SIZE_TEST * factor))
    cfg.INPUT.MAX_SIZE_TEST = int(round(cfg.INPUT.MAX_SIZE_TEST * factor))
    return cfg


def relative_scales(cfg: CfgNode) -> List[Tuple[float, ...]]:
    """Scales within a level to try: 1, 2 and 3 per level (2^(i/n)), and the config's own."""
    own = cfg.MODEL.ANCHOR_GENERATOR.SIZES[0]
    options = [tuple(round(2 ** (i / n), 3) for i in range(n)) for n in (1, 2, 3)]
    configured = tuple(round(s / own[0], 3) for s in own)
    return options + ([configured] if configured not in options else [])


def stride_sizes(head: AnchorHead, multiple: float, scales: Sequence[float]) -> List[List[float]]:
    """Anchor sizes ``multiple x stride x scale`` per level of ``head``."""
    return [[round(multiple * stride * s, 1) for s in scales] for stride in head.strides]


def input_sizes_to_try(cfg: CfgNode, dicts: Sequence[dict], train: bool) -> List[int]:
    """Short sides to try: the config's, x1.5, x2, x3 and the images' own (median) short side."""
    base = max(cfg.INPUT.MIN_SIZE_TRAIN) if train else cfg.INPUT.MIN_SIZE_TEST
    native = float(np.median([min(d["height"], d["width"]) for d in dicts])) if dicts else base
    candidates = {int(base)}
    for factor in (1.5, 2.0, 3.0):
        candidates.add(int(32 * round(base * factor / 32)))
    candidates.add(int(32 * round(native / 32)) or int(base))
    if native < base / 1.5:  # the images are upscaled: also try less
        candidates.add(max(32, int(32 * round(base / 2 / 32))))
    return sorted(candidates)


@dataclass
class Suggestion:
    """One input size and scales per level, with the best stride multiple found for them."""

    short_side: int
    cfg: CfgNode
    scales: Tuple[float, ...]
    sizes: List[List[float]]
    result: Coverage


def suggest(cfg: CfgNode, head: AnchorHead, dicts: Sequence[dict], train: bool) -> List[Suggestion]:
    """For each input size of :func:`input_sizes_to_try` and each of :func:`relative_scales`:
    the anchor sizes :func:`stride_sizes` with the multiple in :data:`STRIDE_MULTIPLES` that
    gives the most boxes an anchor at the positive threshold (the smaller multiple on ties)."""
    base = max(cfg.INPUT.MIN_SIZE_TRAIN) if train else cfg.INPUT.MIN_SIZE_TEST
    positive = head.thresholds[1]
    rows = []
    for short_side in input_sizes_to_try(cfg, dicts, train):
        scaled = scaled_input(cfg, short_side / base)
        images = input_frame_boxes(scaled, dicts, train)
        for scales in relative_scales(cfg):
            best: Optional[Tuple[List[List[float]], Coverage]] = None
            for multiple in STRIDE_MULTIPLES:
                sizes = stride_sizes(head, multiple, scales)
                result = coverage(scaled, head, images, sizes, all_anchors=False)
                if best is None or result.share(positive) > best[1].share(positive):
                    best = (sizes, result)
            rows.append(Suggestion(short_side, scaled, scales, *best))
    return rows


def recommend(rows: Sequence[Suggestion], head: AnchorHead, target: float) -> int:
    """Index of the row with the fewest anchors per image among those giving at least
    ``target`` % of the boxes an anchor at the positive threshold, else of the best row."""
    positive = head.thresholds[1]
    reaching = [i for i, r in enumerate(rows) if r.result.share(positive) >= target]
    if reaching:
        return min(reaching, key=lambda i: (rows[i].result.anchors_per_image, i))
    return max(range(len(rows)), key=lambda i: (rows[i].result.share(positive), -i))


def overrides(cfg: CfgNode, sizes: List[List[float]]) -> str:
    """Command-line overrides for an input size (``cfg``) and anchor sizes."""
    sizes_text = "[" + ", ".join("[" + ", ".join(f"{s:g}" for s in level) + "]" for level in sizes)
    return (
        f'INPUT.MIN_SIZE_TRAIN "{tuple(cfg.INPUT.MIN_SIZE_TRAIN)}" INPUT.MAX_SIZE_TRAIN '
        f"{cfg.INPUT.MAX_SIZE_TRAIN} INPUT.MIN_SIZE_TEST {cfg.INPUT.MIN_SIZE_TEST} "
        f'INPUT.MAX_SIZE_TEST {cfg.INPUT.MAX_SIZE_TEST} MODEL.ANCHOR_GENERATOR.SIZES "{sizes_text}]"'
    )


def _percentiles(values: np.ndarray) -> str:
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return f"median {p50:.1f} (10%: {p10:.1f}, 90%: {p90:.1f})"


def _sample(dicts: List[dict], count: int, seed: int = 0) -> List[dict]:
    if count <= 0 or len(dicts) <= count:
        return list(dicts)
    keep = np.sort(np.random.default_rng(seed).choice(len(dicts), count, replace=False))
    return [dicts[i] for i in keep]


def plot(
    path: str,
    head: AnchorHead,
    current: Tuple[int, List[List[float]], Coverage],
    suggested: Suggestion,
) -> None:
    """Box sizes with the anchor sizes, for the current config and the suggestion (each in its own
    input frame), and the best anchor IoU of each box against its size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = [
        ("current", current[0], current[1], current[2], "tab:red"),
        ("suggested", suggested.short_side, suggested.sizes, suggested.result, "tab:green"),
    ]
    for ax, (label, short_side, sizes, result, colour) in zip(axes, panels):
        low, high = float(result.sizes.min()) * 0.8, float(result.sizes.max()) * 1.25
        ax.hist(
            result.sizes, bins=np.geomspace(max(low, 0.5), high, 30), color="tab:blue", alpha=0.7
        )
        ax.set_xscale("log")
        shown = sorted({s for level in sizes for s in level if low / 2 <= s <= high * 2})
        for i, s in enumerate(shown):
            ax.axvline(
                s, color=colour, ls="--", lw=1, label=f"{label} anchor sizes" if i == 0 else None
            )
        ax.set_xlim(min([low] + shown) * 0.9, max([high] + shown) * 1.1)
        ax.set_title(f"{label}: input short side {short_side}")
        ax.set_xlabel("box size sqrt(w h), px in the network input")
        ax.set_ylabel("boxes")
        ax.legend()
        axes[2].scatter(result.sizes, result.best_iou, s=4, alpha=0.3, color=colour, label=label)
    for t, style in zip(head.thresholds, (":", "--")):
        axes[2].axhline(t, color="k", ls=style, lw=1)
    axes[2].set_xscale("log")
    axes[2].set_xlabel("box size, px in the network input")
    axes[2].set_ylabel(f"best IoU with a {head.name} anchor")
    axes[2].legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--dataset", default=None, help="registered dataset to analyse (default: DATASETS.TRAIN)"
    )
    parser.add_argument(
        "--test-resize", action="store_true", help="use the test resize instead of the training one"
    )
    parser.add_argument("--max-images", type=int, default=2000, help="images analysed (0: all)")
    parser.add_argument(
        "--target",
        type=float,
        default=90.0,
        help="suggest the fewest anchors that give this %% of the boxes an anchor at the "
        "positive IoU threshold (default 90)",
    )
    parser.add_argument("--plot", default=None, metavar="FILE", help="write a plot (PNG, PDF)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = argument_parser().parse_args(argv)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    try:
        cfg = setup_cfg(args.config_file, args.opts)
        head = anchor_head(cfg)
        names = [args.dataset] if args.dataset else list(cfg.DATASETS.TRAIN)
        for name in names:
            if name not in DatasetCatalog.list():
                raise ValueError(f"--dataset '{name}' is not a registered dataset")
    except (FileNotFoundError, ValueError) as e:
        print("\n".join(f"error: {line}" for line in str(e).splitlines()), file=sys.stderr)
        return 2
    train = not args.test_resize
    dicts = [d for name in names for d in DatasetCatalog.get(name)]
    analysed = _sample(dicts, args.max_images)
    result = coverage(cfg, head, input_frame_boxes(cfg, analysed, train))
    if len(result.sizes) == 0:
        print(f"error: no boxes in {', '.join(names)}", file=sys.stderr)
        return 2
    lower, positive = head.thresholds
    resize = (
        f"MIN_SIZE_TRAIN {tuple(cfg.INPUT.MIN_SIZE_TRAIN)}, MAX_SIZE_TRAIN {cfg.INPUT.MAX_SIZE_TRAIN}"
        if train
        else f"MIN_SIZE_TEST {cfg.INPUT.MIN_SIZE_TEST}, MAX_SIZE_TEST {cfg.INPUT.MAX_SIZE_TEST}"
    )
    current = [list(map(float, level)) for level in cfg.MODEL.ANCHOR_GENERATOR.SIZES]
    features = f"{head.in_features[0]}-{head.in_features[-1]}"
    print(f"config: {args.config_file}")
    print(
        f"dataset: {', '.join(names)}: {len(analysed)} of {len(dicts)} images, "
        f"{len(result.sizes)} boxes; input resize: {resize}"
    )
    print(
        f"head: {head.name} on {features} (strides {head.strides}), IoU thresholds "
        f"{lower} / {positive}; anchors: sizes {current}, aspect ratios "
        f"{[list(r) for r in cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS]}"
    )
    print(f"box size in the images, px: {_percentiles(result.original_sizes)}")
    print(f"box size in the network input, px: {_percentiles(result.sizes)}")
    print(f"box aspect ratio h/w: {_percentiles(result.aspect)}")
    print()
    headers = [
        "box size (px, input)",
        "boxes",
        "share %",
        "median best IoU",
        f"IoU >= {positive} %",
        f"IoU >= {lower} %",
        f"anchors >= {positive} per box",
    ]
    print(tabulate(size_table(result, head), headers=headers, tablefmt="pipe"))
    print()

    rows = suggest(cfg, head, analysed, train)
    base = max(cfg.INPUT.MIN_SIZE_TRAIN) if train else cfg.INPUT.MIN_SIZE_TEST
    table = [["current", base, "config", _short(current), *_shares(result, head), "1.00"]]
    for row in rows:
        scales = str(len(row.scales)) if _is_power_series(row.scales) else str(list(row.scales))
        table.append(
            [
                "",
                row.short_side,
                scales,
                _short(row.sizes),
                *_shares(row.result, head),
                f"{row.result.anchors_per_image / result.anchors_per_image:.2f}",
            ]
        )
    pick = recommend(rows, head, args.target)
    table[pick + 1][0] = "suggested"
    print(
        "suggestions: per input short side and number n of scales per level, the anchor sizes "
        f"k x stride x 2^(i/n), i < n, with the best k in {list(STRIDE_MULTIPLES)}"
    )
    headers = ["", "input short side", "scales/level", "anchor sizes (first ... last level)"]
    headers += [f"IoU >= {positive} %", f"IoU >= {lower} %", "anchors/image (rel.)"]
    print(tabulate(table, headers=headers, tablefmt="pipe"))
    print()
    reached = rows[pick].result.share(positive) >= args.target
    rule = (
        f"fewest anchors per image giving >= {args.target:g} % of the boxes an anchor at IoU >= "
        f"{positive}"
        if reached
        else f"no row reaches {args.target:g} % at IoU >= {positive}; the best one"
    )
    print(f"suggested ({rule}):")
    print("  " + overrides(rows[pick].cfg, rows[pick].sizes))
    if args.plot:
        plot(args.plot, head, (base, current, result), rows[pick])
        print(f"plot: {args.plot}")
    return 0


def _shares(result: Coverage, head: AnchorHead) -> List[str]:
    return [f"{result.share(t):.1f}" for t in head.thresholds[::-1]]


def _short(sizes: List[List[float]]) -> str:
    def level(values):
        return "[" + ", ".join(f"{v:g}" for v in values) + "]"

    if len(sizes) <= 2:
        return "[" + ", ".join(level(v) for v in sizes) + "]"
    return f"{level(sizes[0])} ... {level(sizes[-1])}"


def _is_power_series(scales: Sequence[float]) -> bool:
    n = len(scales)
    return all(abs(s - 2 ** (i / n)) < 1e-3 for i, s in enumerate(scales))


if __name__ == "__main__":
    sys.exit(main())
