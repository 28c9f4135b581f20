"""The loss-rejection protocol over a shared linear predictor (``rejection.predictions: linear``).

The default protocol (:class:`~paploss.search.screening.rejection.RejectionProtocol`) optimises a
random detector's predictions as free tensors: every prediction moves on its own, so any loss that
separates the batch's positives from its negatives, even one that only pushes the negatives down,
reaches the same AP, and the score does not rank working losses
(``docs/loss_graphs.md#a-cheaper-proxy-and-a-rejection-score-that-ranks``). Here the predictions
are instead the output of one freshly initialised linear box predictor, Detectron2's
``FastRCNNOutputLayers`` layers (:class:`LinearPredictor`), over the box head's features of a
*trained* detector (the search's warm start), recorded once with the batch
(:func:`~paploss.search.screening.batch.build_screening_batches` with ``features=True``). The
candidate's loss trains the layer on the batch's RoIs; AP is measured with the trained layer on
the RoIs of held-out images (:attr:`~paploss.search.screening.batch.HeadBatch.held_out`), with the
AP of :meth:`RejectionProtocol.average_precision`. A loss scores only by what the shared weights
learn: how to rank and place boxes on RoIs they have not seen.

Shapes: ``R`` RoIs of the batch's images, ``D`` the box head's feature size, ``K`` foreground
classes, ``P`` positives.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional, Tuple

import torch
from torch import nn

from paploss.search.screening.batch import HeadBatch
from paploss.search.screening.rejection import RejectionProtocol, RejectionResult
from paploss.search.settings import RejectionSettings

if TYPE_CHECKING:  # pragma: no cover
    from paploss.modeling.head_loss import RankingHeadLoss

__all__ = ["LinearPredictor", "LinearRejectionProtocol", "rejection_protocol"]


class LinearPredictor(nn.Module):
    """The layers of Detectron2's ``FastRCNNOutputLayers`` with ``K`` sigmoid logits
    (:class:`~paploss.modeling.roi_heads.PAPFastRCNNOutputLayers`), initialised as Detectron2
    initialises them (weights normal with std 0.01 for ``cls_score`` and 0.001 for
    ``bbox_pred``, biases 0) from ``seed``.

    Args:
        input_dim: ``D``.
        num_classes: ``K``.
        class_specific: per-class box deltas (``K * 4`` outputs) or class-agnostic ones (4).
        seed: seeds the initialisation (the global random state is not used).
    """

    def __init__(self, input_dim: int, num_classes: int, class_specific: bool, seed: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.class_specific = class_specific
        self.cls_score = nn.Linear(input_dim, num_classes)
        self.bbox_pred = nn.Linear(input_dim, num_classes * 4 if class_specific else 4)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer, std in ((self.cls_score, 0.01), (self.bbox_pred, 0.001)):
                layer.weight.normal_(0.0, std, generator=generator)
                layer.bias.zero_()

    def forward(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            features: ``[R, D]``.

        Returns:
            ``[R, K]`` logits and ``[R, K, 4]`` (class-specific) or ``[R, 4]`` deltas.
        """
        logits = self.cls_score(features)
        deltas = self.bbox_pred(features)
        if self.class_specific:
            deltas = deltas.view(-1, self.num_classes, 4)
        return logits, deltas


class LinearRejectionProtocol(RejectionProtocol):
    """Train a fresh :class:`LinearPredictor` on the batch's features under a candidate loss and
    measure the AP gain on the held-out batch.

    Every run starts from the same layer (seeded by ``settings.seed``). The optimiser
    (``settings.optimizer``) steps the layer's ``cls_score`` with ``logit_lr`` and its
    ``bbox_pred`` with ``box_lr``; the loss is the candidate's head loss of the batch's ranking
    with the layer's predictions (:meth:`RejectionProtocol.loss`, the positives' deltas at their
    label). AP before and after, and along the curve, is :meth:`RejectionProtocol.
    average_precision` of the held-out batch with the layer's predictions on its features.

    Args:
        batch: the head's batch of a trained detector, with :attr:`~HeadBatch.features` and a
            :attr:`~HeadBatch.held_out` batch with features.
        settings: the protocol's settings (``predictions: linear``).

    Raises:
        ValueError: naming the setting, if the batch has no features or no held-out batch.
    """

    def __init__(self, batch: HeadBatch, settings: RejectionSettings) -> None:
        held_out = batch.held_out
        if batch.features is None or held_out is None or held_out.features is None:
            raise ValueError(
                f"screening.rejection.predictions: linear needs the {batch.head} batch's "
                "predictor features and a held-out batch (build_screening_batches with "
                "features=True, Screener.build with the trained detector's weights)"
            )
        super().__init__(batch, settings)
        self.held_out = RejectionProtocol(held_out, settings)
        self._ap_before_linear: Optional[float] = None

    def predictor(self) -> LinearPredictor:
        """The freshly initialised layer every run starts from."""
        ranking = self.batch.ranking
        assert self.batch.features is not None and ranking.deltas is not None
        return LinearPredictor(
            input_dim=int(self.batch.features.shape[1]),
            num_classes=ranking.num_classes,
            class_specific=ranking.deltas.dim() == 3,
            seed=self.settings.seed,
        ).to(self.batch.features.dtype)

    @property
    def ap_before(self) -> float:
        """AP of the freshly initialised layer on the held-out batch (computed once)."""
        if self._ap_before_linear is None:
            self._ap_before_linear = self.held_out_ap(self.predictor())
        return self._ap_before_linear

    @torch.no_grad()
    def held_out_ap(self, predictor: LinearPredictor) -> float:
        """AP (0-100) of ``predictor`` on the held-out batch."""
        assert self.held_out.batch.features is not None
        return self.held_out.average_precision(*predictor(self.held_out.batch.features))

    def run(self, head_loss: "RankingHeadLoss") -> RejectionResult:
        """Train the layer for ``settings.steps`` steps under ``head_loss`` and measure the
        held-out AP gain."""
        start = time.perf_counter()
        settings = self.settings
        ap_before = self.ap_before
        predictor = self.predictor()
        features, ranking = self.batch.features, self.batch.ranking
        assert features is not None
        groups = [
            {"params": list(predictor.cls_score.parameters()), "lr": settings.logit_lr},
            {"params": list(predictor.bbox_pred.parameters()), "lr": settings.box_lr},
        ]

        def predictions() -> Tuple[torch.Tensor, torch.Tensor]:
            logits, deltas = predictor(features)
            return logits, ranking.positive_deltas(deltas)

        return self.optimise(
            head_loss,
            groups,
            predictions=predictions,
            evaluate=lambda: self.held_out_ap(predictor),
            finite=lambda: all(bool(torch.isfinite(p).all()) for p in predictor.parameters()),
            ap_before=ap_before,
            start=start,
        )


def rejection_protocol(batch: HeadBatch, settings: RejectionSettings) -> RejectionProtocol:
    """The protocol of ``settings.predictions``: :class:`RejectionProtocol` on the batch's fixed
    predictions, or :class:`LinearRejectionProtocol`."""
    if settings.linear:
        return LinearRejectionProtocol(batch, settings)
    return RejectionProtocol(batch, settings)
