"""Start-up checks of a config against its datasets, before anything trains.

:func:`validate_config_data` loads every dataset named in ``DATASETS.TRAIN`` and ``DATASETS.TEST``
(so a wrong image root of a test set fails now, not after training) and checks what a config must
agree on with its data: the class count of every head the meta-architecture uses, the same
categories in every dataset, boxes to train on. Each problem is one line naming the key or file and
what to change; all problems are reported together in one :class:`ConfigDataError`. Findings that
need not be wrong (the input resize shrinks the images a lot, pixel statistics in the other channel
order, classes without training boxes) come back as warnings.
"""

import logging
import os
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from paploss.data import DatasetError, display_path

from .extensions import class_count_keys

__all__ = [
    "ConfigDataError",
    "DataReport",
    "DatasetSummary",
    "HeadsUsed",
    "heads_used",
    "imagenet_pixel_stats",
    "pixel_order_warning",
    "validate_config_data",
]

#: ImageNet's per-channel pixel mean and std (0-255 scale) in RGB order.
_IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
_IMAGENET_STD_RGB = (58.395, 57.12, 57.375)
#: Below this scale of the input resize (network input / image), a warning suggests checking.
_SHRINK_WARNING = 0.5


class ConfigDataError(DatasetError):
    """A config does not fit its datasets; ``problems`` holds one line per problem."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class HeadsUsed:
    """Which heads of a config's meta-architecture depend on the data.

    Attributes:
        class_keys: config keys of the class counts the model is built with, e.g.
            ``("MODEL.ROI_HEADS.NUM_CLASSES",)``.
        anchor_head: the config node whose anchors are matched to ground truth, ``"RPN"`` or
            ``"RETINANET"`` (its ``IN_FEATURES`` and ``IOU_THRESHOLDS``), or None.
    """

    class_keys: Tuple[str, ...]
    anchor_head: Optional[str]


def heads_used(cfg: CfgNode) -> HeadsUsed:
    """The class-count keys and the anchor head of ``cfg.MODEL.META_ARCHITECTURE``.

    RetinaNet and its subclasses (``PAPRetinaNet``) read ``MODEL.RETINANET``; ``GeneralizedRCNN``
    reads ``MODEL.ROI_HEADS.NUM_CLASSES`` and, with an RPN-type proposal generator (``RPN``,
    ``PAPRPN``), ``MODEL.RPN``'s anchors. A project's meta-architecture reports the class-count
    keys it registered (:func:`paploss.engine.extensions.register_class_count_keys`, e.g.
    ``MODEL.DEFORMABLE_DETR.NUM_CLASSES``) and no anchor head. Other architectures report
    nothing.

    Raises:
        ValueError: if the meta-architecture or proposal generator is not registered.
    """
    from detectron2.modeling import META_ARCH_REGISTRY, PROPOSAL_GENERATOR_REGISTRY
    from detectron2.modeling.meta_arch import GeneralizedRCNN, ProposalNetwork, RetinaNet
    from detectron2.modeling.proposal_generator import RPN

    name = cfg.MODEL.META_ARCHITECTURE
    try:
        meta_arch = META_ARCH_REGISTRY.get(name)
    except KeyError:
        raise ValueError(
            f"MODEL.META_ARCHITECTURE '{name}' is not a registered meta-architecture"
        ) from None
    registered = class_count_keys(name)
    if registered is not None:
        return HeadsUsed(registered, None)
    if issubclass(meta_arch, RetinaNet):
        return HeadsUsed(("MODEL.RETINANET.NUM_CLASSES",), "RETINANET")
    if not issubclass(meta_arch, (GeneralizedRCNN, ProposalNetwork)):
        return HeadsUsed((), None)
    class_keys = ("MODEL.ROI_HEADS.NUM_CLASSES",) if issubclass(meta_arch, GeneralizedRCNN) else ()
    generator = cfg.MODEL.PROPOSAL_GENERATOR.NAME
    if generator == "PrecomputedProposals":  # Detectron2's name for "proposals come with the data"
        return HeadsUsed(class_keys, None)
    try:
        anchors = issubclass(PROPOSAL_GENERATOR_REGISTRY.get(generator), RPN)
    except KeyError:
        raise ValueError(
            f"MODEL.PROPOSAL_GENERATOR.NAME '{generator}' is not a registered proposal generator"
        ) from None
    return HeadsUsed(class_keys, "RPN" if anchors else None)


@dataclass
class DatasetSummary:
    """What a dataset holds, as loaded at start-up.

    Attributes:
        name: registered name.
        key: ``"DATASETS.TRAIN"`` or ``"DATASETS.TEST"`` (the first that names it).
        source: its annotation file, or its name when it has none.
        num_images: images in the dataset.
        num_boxes: non-crowd boxes in the dataset.
        classes: category names in contiguous-id order (Detectron2's ``thing_classes``).
        boxes_per_class: non-crowd boxes per class, same order (empty without classes).
        median_size: median image ``(height, width)`` in pixels.
    """

    name: str
    key: str
    source: str
    num_images: int
    num_boxes: int
    classes: Optional[List[str]]
    boxes_per_class: List[int]
    median_size: Tuple[float, float]


@dataclass
class DataReport:
    """The result of :func:`validate_config_data`: per-dataset summaries and warnings."""

    datasets: Dict[str, DatasetSummary] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)

    def summary_lines(self) -> List[str]:
        """One line per dataset, for the log."""
        return [
            f"dataset '{d.name}' ({d.key}): {d.num_images} images, {d.num_boxes} "
            f"boxes, {len(d.classes or [])} classes, from '{d.source}'"
            for d in self.datasets.values()
        ]

    def log(self, logger: logging.Logger) -> None:
        """Write the summary lines (info) and the warnings (warning) to ``logger``."""
        for line in self.summary_lines():
            logger.info(line)
        for line in self.warnings:
            logger.warning(line)


def validate_config_data(cfg: CfgNode) -> DataReport:
    """Load every dataset of ``cfg.DATASETS.TRAIN`` and ``TEST`` and check ``cfg`` against them.

    Checks: each dataset loads (annotation file, image files, category ids, see
    :mod:`paploss.data.datasets`); the training sets have boxes; all datasets list the same
    categories; each class count of :func:`heads_used` equals the number of categories.

    Args:
        cfg: a config whose datasets are registered (:func:`paploss.engine.setup_cfg` does it).

    Returns:
        The datasets' summaries and warnings (nothing here is logged).

    Raises:
        ConfigDataError: listing every problem found, one line each.
    """
    problems: List[str] = []
    report = DataReport()
    for key in ("DATASETS.TRAIN", "DATASETS.TEST"):
        for name in cfg.DATASETS[key.split(".")[1]]:
            if name in report.datasets:
                continue
            try:
                report.datasets[name] = _summarize(name, key)
            except DatasetError as e:
                problems.append(f"{key}: {e}")
            except Exception as e:  # Detectron2's own loaders raise anything
                problems.append(
                    f"{key}: dataset '{name}' cannot be loaded ({type(e).__name__}: {e})"
                )

    summaries = list(report.datasets.values())
    for d in summaries:
        if d.key == "DATASETS.TRAIN" and d.num_boxes == 0:
            problems.append(
                f"DATASETS.TRAIN: dataset '{d.name}' ('{d.source}') has no boxes in its "
                f"{d.num_images} images; there is nothing to train on"
            )
    with_classes = [d for d in summaries if d.classes is not None]
    reference = with_classes[0] if with_classes else None
    if reference is not None:
        for d in with_classes[1:]:
            if d.classes != reference.classes:
                problems.append(
                    f"{d.key}: dataset '{d.name}' ('{d.source}') has classes "
                    f"{_names(d.classes)} but '{reference.name}' ('{reference.source}') has "
                    f"{_names(reference.classes)}; every dataset in DATASETS.TRAIN and "
                    "DATASETS.TEST must list the same categories"
                )
        try:
            class_keys = heads_used(cfg).class_keys
        except ValueError as e:
            problems.append(str(e))
            class_keys = ()
        count = len(reference.classes)
        for key in class_keys:
            value = _get(cfg, key)
            if value != count:
                problems.append(
                    f"{key} is {value} but dataset '{reference.name}' ('{reference.source}') has "
                    f"{count} {'class' if count == 1 else 'classes'} "
                    f"{_names(reference.classes)}; set {key} {count}"
                )
        for d in with_classes:
            empty = [c for c, n in zip(d.classes, d.boxes_per_class) if n == 0]
            if d.key == "DATASETS.TRAIN" and empty and d.num_boxes:
                report.warnings.append(
                    f"dataset '{d.name}' ('{d.source}') has no training boxes of "
                    f"{_names(empty)}; the model cannot learn them"
                )
    if problems:
        raise ConfigDataError(problems)

    train = [d for d in summaries if d.key == "DATASETS.TRAIN"]
    if train:
        scale = _resize_scale(cfg, train[0].median_size)
        if scale < _SHRINK_WARNING:
            h, w = train[0].median_size
            report.warnings.append(
                f"INPUT.MIN_SIZE_TRAIN {tuple(cfg.INPUT.MIN_SIZE_TRAIN)} / MAX_SIZE_TRAIN "
                f"{cfg.INPUT.MAX_SIZE_TRAIN} shrink the images of '{train[0].name}' (median "
                f"{w:g}x{h:g} px) by x{scale:.2f}, and the objects with them; check the input "
                "size and anchors with tools/analyze_anchors.py"
            )
    pixels = pixel_order_warning(cfg)
    if pixels:
        report.warnings.append(pixels)
    return report


def _summarize(name: str, key: str) -> DatasetSummary:
    dicts = DatasetCatalog.get(name)
    meta = MetadataCatalog.get(name)
    classes = meta.get("thing_classes", None)
    classes = list(classes) if classes is not None else None
    counts = [0] * len(classes or [])
    num_boxes = 0
    for record in dicts:
        for ann in record.get("annotations", []):
            if ann.get("iscrowd", 0):
                continue
            num_boxes += 1
            cls = ann.get("category_id")
            if isinstance(cls, int) and 0 <= cls < len(counts):
                counts[cls] += 1
    sizes = [(r["height"], r["width"]) for r in dicts if "height" in r and "width" in r]
    median = (
        (statistics.median(h for h, _ in sizes), statistics.median(w for _, w in sizes))
        if sizes
        else (0.0, 0.0)
    )
    source = meta.get("json_file", None)
    return DatasetSummary(
        name=name,
        key=key,
        source=display_path(source) if source else name,
        num_images=len(dicts),
        num_boxes=num_boxes,
        classes=classes,
        boxes_per_class=counts,
        median_size=(float(median[0]), float(median[1])),
    )


def _resize_scale(cfg: CfgNode, size: Tuple[float, float]) -> float:
    """Scale of the training resize (largest ``MIN_SIZE_TRAIN``) for an image of ``size``."""
    h, w = size
    if min(h, w) <= 0:
        return 1.0
    scale = max(cfg.INPUT.MIN_SIZE_TRAIN) / min(h, w)
    if cfg.INPUT.MAX_SIZE_TRAIN > 0:
        scale = min(scale, cfg.INPUT.MAX_SIZE_TRAIN / max(h, w))
    return scale


def imagenet_pixel_stats(input_format: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """ImageNet's ``(PIXEL_MEAN, PIXEL_STD)`` on the 0-255 scale, in ``input_format``'s channel
    order (``"RGB"`` or ``"BGR"``, Detectron2's ``INPUT.FORMAT``)."""
    if input_format == "RGB":
        return _IMAGENET_MEAN_RGB, _IMAGENET_STD_RGB
    if input_format == "BGR":
        return _IMAGENET_MEAN_RGB[::-1], _IMAGENET_STD_RGB[::-1]
    raise ValueError(
        f"INPUT.FORMAT must be 'RGB' or 'BGR' for ImageNet statistics, got {input_format!r}"
    )


def pixel_order_warning(cfg: CfgNode) -> Optional[str]:
    """A warning when ``MODEL.PIXEL_MEAN`` is ImageNet's mean in the other channel order than
    ``INPUT.FORMAT`` (Detectron2 normalises the image in the channel order it reads it in)."""
    input_format = cfg.INPUT.FORMAT
    if input_format not in ("RGB", "BGR") or len(cfg.MODEL.PIXEL_MEAN) != 3:
        return None
    other = "RGB" if input_format == "BGR" else "BGR"
    mean = [float(v) for v in cfg.MODEL.PIXEL_MEAN]
    if all(abs(a - b) < 0.5 for a, b in zip(mean, imagenet_pixel_stats(other)[0])):
        right_mean, right_std = imagenet_pixel_stats(input_format)
        return (
            f"MODEL.PIXEL_MEAN {mean} is ImageNet's mean in {other} order but INPUT.FORMAT is "
            f"'{input_format}'; set MODEL.PIXEL_MEAN {list(right_mean)} and MODEL.PIXEL_STD "
            f"{list(right_std)} (or INPUT.FORMAT '{other}')"
        )
    return None


def _get(cfg: CfgNode, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _names(classes: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(c) for c in classes[:limit])
    more = f", ... ({len(classes)} in all)" if len(classes) > limit else ""
    return f"[{shown}{more}]"
