"""The fixed prediction batch of the loss-rejection protocol, built once per search.

A randomly initialised detector (the searched model's config, seeded) runs one training-mode
forward on a few images of the proxy training split. Each PAP head's ``losses`` call is captured
instead of computed: its arguments are exactly what the head ranks (anchors or RoIs labelled by
the head's own matcher, logits, box deltas, matched ground truth). They are kept as a
:class:`HeadBatch` per head; after that no network work is needed, the screening optimises these
predictions directly (:mod:`paploss.search.screening`).

Shape shorthand (as in Detectron2's ``fast_rcnn.py``):

* ``R``: anchors (RetinaNet, RPN) or RoIs (ROI head) of all images together
* ``K``: foreground classes (1 for the RPN)
* ``N``: images; ``G``: ground-truth boxes of one image

Capturing ``losses`` keeps the labelling identical to training (``PAPRPN`` ranks every labelled
anchor, ``PAPROIHeads`` samples proposals or not as configured) and works with any Detectron2
version whose ``losses`` signatures match (v0.6 and current main do).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

__all__ = ["HeadBatch", "build_screening_batches", "load_images"]


@dataclass
class HeadBatch:
    """What one head ranks in the screening batch.

    Attributes:
        head: ``"RETINANET"``, ``"RPN"`` or ``"ROI_HEADS"``.
        logits: ``[R, K]`` classification (objectness) logits of the random network.
        deltas: ``[R, 4]`` class-agnostic or ``[R, K, 4]`` per-class box deltas.
        reference_boxes: ``[R, 4]`` anchors or proposals (XYXY) the deltas apply to.
        labels: ``[R]`` int64 in Detectron2's convention: ``0..K-1`` positive of that class,
            ``K`` background, ``-1`` ignored.
        matched_gt_boxes: ``[R, 4]`` ground-truth box matched to each anchor/RoI (read at
            positives only).
        image_index: ``[R]`` int64, the image of each anchor/RoI.
        image_sizes: ``N`` ``(height, width)`` of the network input images.
        gt_boxes: ``N`` tensors ``[G, 4]``, every ground-truth box of each image (input frame).
        gt_classes: ``N`` tensors ``[G]`` int64 (all 0 for the class-agnostic RPN).
        box_weights: weights of the head's ``Box2BoxTransform``.
        scale_clamp: ``scale_clamp`` of the head's ``Box2BoxTransform``.
        quality_type: the box quality ``u`` of a positive (``MODEL.PAPLOSS.QUALITY``).
    """

    head: str
    logits: torch.Tensor
    deltas: torch.Tensor
    reference_boxes: torch.Tensor
    labels: torch.Tensor
    matched_gt_boxes: torch.Tensor
    image_index: torch.Tensor
    image_sizes: List[Tuple[int, int]]
    gt_boxes: List[torch.Tensor]
    gt_classes: List[torch.Tensor]
    box_weights: Tuple[float, float, float, float]
    scale_clamp: float
    quality_type: str = "giou"

    @property
    def num_classes(self) -> int:
        """``K``."""
        return int(self.logits.shape[1])

    @property
    def num_images(self) -> int:
        """``N``."""
        return len(self.image_sizes)

    @property
    def num_entries(self) -> int:
        """``R * K``, the length of the flattened ranking."""
        return int(self.logits.numel())

    @property
    def positive_mask(self) -> torch.Tensor:
        """``[R]`` bool, anchors/RoIs labelled with a foreground class."""
        return (self.labels >= 0) & (self.labels < self.num_classes)

    def flat_targets(self) -> torch.Tensor:
        """``[R * K]`` int8 targets in {1, 0, -1}, as :class:`RankingHeadLoss` builds them."""
        from paploss.modeling.head_loss import class_targets

        return class_targets(self.labels, self.num_classes).reshape(-1)

    def summary(self) -> Dict[str, int]:
        """Sizes for logs and benchmark tables."""
        return {
            "images": self.num_images,
            "entries": self.num_entries,
            "positives": int(self.positive_mask.sum()),
            "ignored": int((self.labels < 0).sum()),
            "gt_boxes": int(sum(len(boxes) for boxes in self.gt_boxes)),
        }


def load_images(cfg: Any, dataset: str, num_images: int, seed: int) -> List[Dict[str, Any]]:
    """``num_images`` images of ``dataset`` that have annotations, chosen by ``seed``.

    They are mapped like training inputs but without random augmentation: resized to the test
    size (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``), annotations kept as ``instances``.

    Returns:
        Detectron2 model inputs (``image`` ``[3, H, W]``, ``instances``), in a fixed order.

    Raises:
        ValueError: if the dataset has fewer annotated images than ``num_images``.
    """
    from detectron2.data import DatasetMapper, get_detection_dataset_dicts
    from detectron2.data import transforms as T

    from paploss.data import ensure_dataset_files

    ensure_dataset_files(dataset)
    dicts = get_detection_dataset_dicts([dataset], filter_empty=True)
    if len(dicts) < num_images:
        raise ValueError(
            f"screening needs {num_images} annotated images but '{dataset}' has {len(dicts)}"
        )
    chosen = sorted(random.Random(seed).sample(range(len(dicts)), num_images))
    mapper = DatasetMapper(
        is_train=True,
        augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
        image_format=cfg.INPUT.FORMAT,
    )
    return [mapper(dicts[index]) for index in chosen]


class _Capture:
    """Replaces a module's ``losses`` method for one forward and records its arguments."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.args: Optional[Tuple[Any, ...]] = None

    def __call__(self, *args: Any) -> Dict[str, torch.Tensor]:
        self.args = args
        return {}

    @contextlib.contextmanager
    def installed(self) -> Iterator["_Capture"]:
        self.module.losses = self  # an instance attribute shadows the method
        try:
            yield self
        finally:
            del self.module.losses


def _pap_modules(model: torch.nn.Module) -> Dict[str, torch.nn.Module]:
    """Head name → the module whose ``losses`` the PAP loss of that head runs in."""
    from paploss.modeling import PAPRPN, PAPRetinaNet
    from paploss.modeling.roi_heads import PAPFastRCNNOutputLayers

    modules: Dict[str, torch.nn.Module] = {}
    if isinstance(model, PAPRetinaNet):
        modules["RETINANET"] = model
    proposal_generator = getattr(model, "proposal_generator", None)
    if isinstance(proposal_generator, PAPRPN):
        modules["RPN"] = proposal_generator
    roi_heads = getattr(model, "roi_heads", None)
    predictor = getattr(roi_heads, "box_predictor", None)
    if isinstance(predictor, PAPFastRCNNOutputLayers):
        modules["ROI_HEADS"] = predictor
    return modules


def _dense_batch(
    head: str, module: torch.nn.Module, args: Tuple[Any, ...], num_classes: int
) -> Dict[str, Any]:
    """Flatten ``losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)``."""
    from detectron2.layers import cat
    from detectron2.structures import Boxes

    anchors, pred_logits, gt_labels, pred_deltas, gt_boxes = args
    labels = torch.stack(gt_labels)  # [N, A]
    num_images, num_anchors = labels.shape
    if head == "RPN":  # {-1, 0, 1} -> one class: 0 foreground, 1 background, -1 ignored
        labels = torch.where(labels == 1, 0, torch.where(labels == 0, 1, -1))
    logits = cat(pred_logits, dim=1).reshape(num_images * num_anchors, num_classes)
    return {
        "logits": logits,
        "deltas": cat(pred_deltas, dim=1).reshape(-1, 4),
        "reference_boxes": Boxes.cat(anchors).tensor.repeat(num_images, 1),
        "labels": labels.reshape(-1).long(),
        "matched_gt_boxes": torch.stack(gt_boxes).reshape(-1, 4),
        "image_index": torch.arange(num_images).repeat_interleave(num_anchors),
    }


def _roi_batch(module: torch.nn.Module, args: Tuple[Any, ...]) -> Dict[str, Any]:
    """Flatten ``FastRCNNOutputLayers.losses((scores, proposal_deltas), proposals)``."""
    from detectron2.layers import cat

    (scores, proposal_deltas), proposals = args
    num_classes = scores.shape[1]
    boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
    gt_boxes = cat(
        [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals], dim=0
    )
    deltas = proposal_deltas
    if deltas.shape[1] != 4:
        deltas = deltas.reshape(-1, num_classes, 4)
    counts = torch.tensor([len(p) for p in proposals])
    return {
        "logits": scores,
        "deltas": deltas,
        "reference_boxes": boxes,
        "labels": cat([p.gt_classes for p in proposals], dim=0).long(),
        "matched_gt_boxes": gt_boxes,
        "image_index": torch.arange(len(proposals)).repeat_interleave(counts),
    }


def build_screening_batches(
    cfg: Any,
    *,
    dataset: str,
    num_images: int,
    seed: int,
    heads: Optional[Sequence[str]] = None,
) -> Dict[str, HeadBatch]:
    """One forward of a randomly initialised detector, captured per PAP head.

    Args:
        cfg: the searched model's Detectron2 config (with paploss's keys); its ``MODEL.PAPLOSS``
            values do not matter (no loss is computed). Built on CPU.
        dataset: registered dataset to take the images from (the proxy training split).
        num_images: number of images.
        seed: seeds the image choice and the network's initialisation.
        heads: heads to capture (default: every PAP head of the model).

    Returns:
        Head name → :class:`HeadBatch` (CPU tensors, no gradient).

    Raises:
        ValueError: if the model lacks a requested head.
    """
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    import paploss.modeling  # noqa: F401  (registers the heads)

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = build_model(cfg)
        inputs = load_images(cfg, dataset, num_images, seed)
        modules = _pap_modules(model)
        wanted = tuple(modules) if heads is None else tuple(heads)
        missing = [head for head in wanted if head not in modules]
        if missing:
            raise ValueError(
                f"the model has no PAP-loss head {missing} (it has {sorted(modules)}); "
                "screening needs MODEL.PAPLOSS.LOSS 'pap' heads"
            )
        captures = {head: _Capture(modules[head]) for head in wanted}
        model.train()
        with contextlib.ExitStack() as stack:
            for capture in captures.values():
                stack.enter_context(capture.installed())
            stack.enter_context(torch.no_grad())
            stack.enter_context(EventStorage())
            model(inputs)
    finally:
        torch.random.set_rng_state(state)

    image_sizes = [tuple(int(v) for v in x["image"].shape[-2:]) for x in inputs]
    batches: Dict[str, HeadBatch] = {}
    for head, capture in captures.items():
        if capture.args is None:
            raise RuntimeError(f"the forward pass never called the {head} head's losses")
        module = modules[head]
        if head == "ROI_HEADS":
            fields = _roi_batch(module, capture.args)
        else:
            num_classes = 1 if head == "RPN" else int(module.num_classes)
            fields = _dense_batch(head, module, capture.args, num_classes)
        gt_boxes = [x["instances"].gt_boxes.tensor.clone() for x in inputs]
        gt_classes = [x["instances"].gt_classes.clone().long() for x in inputs]
        if head == "RPN":
            gt_classes = [torch.zeros_like(classes) for classes in gt_classes]
        transform = module.box2box_transform
        batches[head] = HeadBatch(
            head=head,
            image_sizes=image_sizes,
            gt_boxes=gt_boxes,
            gt_classes=gt_classes,
            box_weights=tuple(float(w) for w in transform.weights),
            scale_clamp=float(transform.scale_clamp),
            quality_type=str(cfg.MODEL.PAPLOSS.QUALITY),
            **{key: value.detach().clone() for key, value in fields.items()},
        )
    return batches
