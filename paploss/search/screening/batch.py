"""The fixed prediction batch of the loss-rejection protocol, built once per search.

A randomly initialised detector (the searched model's config, seeded) runs one training-mode
forward on a few images of the proxy training split, with the PAP loss in every head. What each
head hands to its head loss, its :class:`~paploss.modeling.ranking.HeadRanking` (anchors or RoIs
labelled by the head's own matcher and sampling, logits, box deltas, matched ground truth), is
recorded with :func:`paploss.modeling.record_rankings` (a forward pre-hook on the head-loss
modules: nothing is re-derived or patched, so the screening ranks exactly what the head trains
on). It is kept as a :class:`HeadBatch` per head with the images' ground truth; after that no
network work is needed, the screening optimises these predictions directly
(:mod:`paploss.search.screening`). For a Mask R-CNN the images keep their instance masks, and
the ROI head's ranking carries the positives' mask logits and ground-truth masks as fixed
tensors (read by a mask-aware quality, never optimised: the screen scores only the ranking heads).

For ``screening.rejection.predictions: linear`` the detector is a *trained* one (the search's
warm-start checkpoint, ``weights``), and the same forward also records what the ROI head's box
predictor reads, the box head's ``[R, D]`` features of the ranked RoIs (a forward pre-hook on
``roi_heads.box_predictor``), with a second batch of held-out images recorded the same way
(:attr:`HeadBatch.held_out`); :mod:`paploss.search.screening.linear` trains a fresh linear
predictor on them.

Shape shorthand (as in Detectron2's ``fast_rcnn.py``):

* ``R``: anchors (RetinaNet, RPN) or RoIs (ROI head) of all images together
* ``K``: foreground classes (1 for the RPN)
* ``N``: images; ``G``: ground-truth boxes of one image
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

if TYPE_CHECKING:  # pragma: no cover
    from paploss.modeling.ranking import HeadRanking

__all__ = ["HeadBatch", "build_screening_batches", "load_images", "PREDICTOR_MODULES"]

#: Heads whose predictor is a linear layer over per-row features: head → the predictor module
#: (its input, the features, is what ``features=True`` records).
PREDICTOR_MODULES = {"ROI_HEADS": "roi_heads.box_predictor"}


@dataclass
class HeadBatch:
    """What one head ranks in the screening batch, with the images' ground truth.

    Attributes:
        head: ``"RETINANET"``, ``"RPN"``, ``"ROI_HEADS"`` or a project's head (``"DETR"``).
        ranking: the head's ranking of the random network's predictions (no gradient), built
            from deltas (:meth:`~paploss.modeling.ranking.HeadRanking.from_deltas`).
        image_sizes: ``N`` ``(height, width)`` of the network input images.
        gt_boxes: ``N`` tensors ``[G, 4]``, every ground-truth box of each image (input frame).
        gt_classes: ``N`` tensors ``[G]`` int64 (all 0 for the class-agnostic RPN).
        features: ``[R, D]`` the predictor's input features of the ranking's rows (recorded with
            ``features=True``), or None.
        held_out: the same head's batch of other images (with features), on which a predictor
            trained on this batch is evaluated, or None.
    """

    head: str
    ranking: "HeadRanking"
    image_sizes: List[Tuple[int, int]]
    gt_boxes: List[torch.Tensor]
    gt_classes: List[torch.Tensor]
    features: Optional[torch.Tensor] = None
    held_out: Optional["HeadBatch"] = None

    @property
    def num_classes(self) -> int:
        """``K``."""
        return self.ranking.num_classes

    @property
    def num_images(self) -> int:
        """``N``."""
        return len(self.image_sizes)

    @property
    def num_entries(self) -> int:
        """``R * K``, the length of the flattened ranking."""
        return int(self.ranking.logits.numel())

    def summary(self) -> Dict[str, int]:
        """Sizes for logs and benchmark tables (the held-out batch's under ``held_out``)."""
        summary: Dict[str, Any] = {
            "images": self.num_images,
            "entries": self.num_entries,
            "positives": self.ranking.num_positives,
            "ignored": int((self.ranking.labels < 0).sum()),
            "gt_boxes": int(sum(len(boxes) for boxes in self.gt_boxes)),
        }
        if self.features is not None:
            summary["feature_dim"] = int(self.features.shape[1])
        if self.held_out is not None:
            summary["held_out"] = self.held_out.summary()
        return summary


def load_images(cfg: Any, dataset: str, num_images: int, seed: int) -> List[Dict[str, Any]]:
    """``num_images`` images of ``dataset`` that have annotations, chosen by ``seed``.

    They are mapped like training inputs but without random augmentation: resized to the test
    size (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``), annotations kept as ``instances``, with
    their instance masks (``gt_masks``, in ``INPUT.MASK_FORMAT``) when the model has a mask branch
    (``MODEL.MASK_ON``), as Detectron2's training mapper keeps them.

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
        use_instance_mask=cfg.MODEL.MASK_ON,
        instance_mask_format=cfg.INPUT.MASK_FORMAT,
    )
    return [mapper(dicts[index]) for index in chosen]


def screening_model_config(cfg: Any) -> Any:
    """The searched model's config as the screening builds it: on CPU, randomly initialised
    (a checkpoint is loaded after, if any), with the PAP loss in every head (so that every PAP
    head ranks, with its training labelling)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.PAPLOSS.LOSS = "pap"
    return cfg


def _detached(ranking: "HeadRanking") -> "HeadRanking":
    """A copy of ``ranking`` detached from the network (its derived fields computed again)."""
    fields = {
        f.name: getattr(ranking, f.name).detach().clone()
        for f in dataclasses.fields(ranking)
        if f.init and isinstance(getattr(ranking, f.name), torch.Tensor)
    }
    return dataclasses.replace(ranking, **fields)


def build_screening_batches(
    cfg: Any,
    *,
    dataset: str,
    num_images: int,
    seed: int,
    heads: Optional[Sequence[str]] = None,
    weights: Optional[str] = None,
    features: bool = False,
) -> Dict[str, HeadBatch]:
    """One forward of a detector (randomly initialised, or ``weights``); what each PAP head
    ranks in it.

    Args:
        cfg: the searched model's Detectron2 config (with paploss's keys); built on CPU with
            ``MODEL.PAPLOSS.LOSS: "pap"`` (:func:`screening_model_config`); its PAP functions
            do not matter (the heads' labelling does not depend on them).
        dataset: registered dataset to take the images from (the proxy training split).
        num_images: number of images.
        seed: seeds the image choice and the network's initialisation.
        heads: heads to keep (default: every PAP head of the model).
        weights: a checkpoint of the model to load after building it (a trained detector, e.g.
            the search's warm start; layers whose shape differs, such as the stock loss's
            ``K + 1`` class logits, keep their initialisation); None: random weights.
        features: also record each head's predictor input features (:attr:`HeadBatch.features`;
            only the heads of :data:`PREDICTOR_MODULES`).

    Returns:
        Head name → :class:`HeadBatch` (CPU tensors, no gradient).

    Raises:
        ValueError: if the model lacks a requested head, or ``features`` is asked of a head
            without a linear predictor over per-row features.
    """
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from paploss.modeling import record_rankings

    if features and heads is not None:
        _check_linear_heads(heads)
    cfg = screening_model_config(cfg)
    state = torch.random.get_rng_state()
    recorded: Dict[str, torch.Tensor] = {}
    try:
        torch.manual_seed(seed)
        model = build_model(cfg)
        if weights:
            DetectionCheckpointer(model).load(weights)
        inputs = load_images(cfg, dataset, num_images, seed)
        model.train()
        with contextlib.ExitStack() as stack:
            if features:
                stack.enter_context(_record_features(model, heads, recorded))
            rankings = stack.enter_context(record_rankings(model))
            stack.enter_context(torch.no_grad())
            stack.enter_context(EventStorage())
            model(inputs)
    finally:
        torch.random.set_rng_state(state)

    wanted = tuple(rankings) if heads is None else tuple(heads)
    missing = [head for head in wanted if head not in rankings]
    if missing:
        raise ValueError(
            f"the model has no PAP-loss head {missing} (it has {sorted(rankings)}); the "
            "rejection protocol screens heads that hand a HeadRanking to their head loss "
            "(paploss.modeling.record_rankings)"
        )
    if features:
        _check_linear_heads(wanted)
    image_sizes = [tuple(int(v) for v in x["image"].shape[-2:]) for x in inputs]
    batches: Dict[str, HeadBatch] = {}
    for head in wanted:
        ranking = _detached(rankings[head])
        gt_classes = [x["instances"].gt_classes.clone().long() for x in inputs]
        if ranking.num_classes == 1:  # the RPN: class-agnostic ground truth
            gt_classes = [torch.zeros_like(classes) for classes in gt_classes]
        head_features = None
        if features:
            head_features = recorded[head].detach().clone()
            if head_features.shape[0] != ranking.logits.shape[0]:
                raise ValueError(
                    f"{head}: the predictor read {head_features.shape[0]} rows but the head "
                    f"ranked {ranking.logits.shape[0]}; its features do not match its ranking"
                )
        batches[head] = HeadBatch(
            head=head,
            ranking=ranking,
            image_sizes=image_sizes,
            gt_boxes=[x["instances"].gt_boxes.tensor.clone() for x in inputs],
            gt_classes=gt_classes,
            features=head_features,
        )
    return batches


def _check_linear_heads(heads: Sequence[str]) -> None:
    """Raise a ValueError naming the setting if a head has no linear predictor over per-row
    features (:data:`PREDICTOR_MODULES`)."""
    unsupported = [head for head in heads if head not in PREDICTOR_MODULES]
    if unsupported:
        raise ValueError(
            f"screening.rejection.predictions: linear screens only heads with a linear "
            f"predictor over per-RoI features ({', '.join(PREDICTOR_MODULES)}), not "
            f"{', '.join(unsupported)}"
        )


@contextlib.contextmanager
def _record_features(
    model: torch.nn.Module, heads: Optional[Sequence[str]], recorded: Dict[str, torch.Tensor]
) -> Iterator[None]:
    """Keep the input of each head's predictor module (:data:`PREDICTOR_MODULES`), flattened to
    ``[R, D]`` as Detectron2's ``FastRCNNOutputLayers`` flattens it, in ``recorded`` by head.

    Raises:
        ValueError: if a head has no such module in ``model``.
    """
    modules = dict(model.named_modules())
    if heads is None:  # every head the model has a predictor module of
        heads = [head for head, name in PREDICTOR_MODULES.items() if name in modules]
    handles = []
    for head in heads:
        name = PREDICTOR_MODULES[head]
        if name not in modules:
            raise ValueError(
                f"screening.rejection.predictions: linear needs the {head} predictor module "
                f"'{name}', which the model does not have"
            )

        def keep(_module: torch.nn.Module, inputs: Tuple[Any, ...], head: str = head) -> None:
            recorded[head] = inputs[0].flatten(start_dim=1)

        handles.append(modules[name].register_forward_pre_hook(keep))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
