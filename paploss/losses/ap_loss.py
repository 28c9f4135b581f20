"""AP-Loss (Chen et al., "Towards Accurate One-Stage Object Detection with AP-Loss"), exact, fast.

The loss is ``1 - interpolated AP`` of the ranking smoothed by ``H(x) = clamp(x / (2 delta) + 1/2,
0, 1)``, trained with the error-driven gradient computed in the forward pass. The published
algorithm (``ranking_reference.ap_loss_reference``) loops over the positives, O(P (P + N)); here
every per-positive sum is a sort + prefix-sum lookup (:mod:`paploss.losses.pairwise`), so one call
costs O((P + N) log(P + N)) time and O(P + N) memory, with the same values and gradients.

This module also holds the small helpers shared by the fast aLRP and Rank & Sort losses.
"""

from typing import NamedTuple

import torch

from ._checks import check_ranking_inputs
from .pairwise import SortedScores, pairwise_gap_sum, sort_scores

__all__ = ["ap_loss"]


def _check_delta(delta: float, allow_zero: bool = False) -> float:
    """Validate the half-width ``delta`` of the smoothed step and return it as a float."""
    try:
        value = float(delta)
    except (TypeError, ValueError):
        raise ValueError(f"delta must be a real number, got {type(delta).__name__}") from None
    if not (value >= 0 if allow_zero else value > 0) or value == float("inf"):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"delta must be finite and {bound}, got {delta}")
    return value


def _accumulate_dtype(device: torch.device) -> torch.dtype:
    # Prefix sums are accumulated in float64, as in pairwise.py (MPS has no float64).
    return torch.float32 if device.type == "mps" else torch.float64


def _smoothed_step_sums(
    anchors: torch.Tensor,
    scores: SortedScores,
    weights: torch.Tensor,
    delta: float,
    reverse: bool = False,
) -> torch.Tensor:
    """``out[i] = sum_j H(s_j - a_i) w_j`` (``H(a_i - s_j)`` if ``reverse``), exactly.

    ``H(x) = clamp(x / (2 delta) + 1/2, 0, 1)``; for ``delta == 0`` the exact step ``x >= 0``
    (which :func:`pairwise_gap_sum` cannot express: its knots must be strictly increasing).

    Args:
        anchors: ``[A]`` anchor scores.
        scores: the sorted ``[S]`` scores.
        weights: ``[S]`` or ``[S, C]`` weights, in the original (unsorted) order of the scores.
        delta: half-width of the smoothed step, ``>= 0``.
        reverse: use the gap ``a_i - s_j`` instead of ``s_j - a_i``.

    Returns:
        ``[A]`` or ``[A, C]`` in the dtype of ``weights``.
    """
    if delta > 0:
        knots_x = anchors.new_tensor([-delta, delta])
        knots_y = anchors.new_tensor([0.0, 1.0])
        return pairwise_gap_sum(anchors, scores, weights, knots_x, knots_y, reverse=reverse)
    acc = _accumulate_dtype(anchors.device)
    w = weights.to(acc)[scores.order]
    prefix = torch.cat([w.new_zeros((1,) + w.shape[1:]), torch.cumsum(w, dim=0)])
    if reverse:  # a_i - s_j >= 0  <=>  s_j <= a_i: a prefix of the sorted scores
        out = prefix[torch.searchsorted(scores.values, anchors, right=True)]
    else:  # s_j - a_i >= 0  <=>  s_j >= a_i: a suffix
        out = prefix[-1] - prefix[torch.searchsorted(scores.values, anchors, right=False)]
    return out.to(weights.dtype)


class _RankingEntries(NamedTuple):
    """The positives and the relevant negatives of a flattened ranking problem.

    Attributes:
        pos_mask: ``[M]`` bool, ``targets == 1``.
        neg_mask: ``[M]`` bool, negatives that can be ranked above some positive (the others have
            ``H = 0`` with every positive and are pruned, as in the published code).
        pos_logits: ``[P]`` logits of the positives (detached).
        neg_logits: ``[N]`` logits of the relevant negatives (detached).
        sorted_pos: ``pos_logits`` sorted, shared by every sum over the positives.
        sorted_neg: ``neg_logits`` sorted.
    """

    pos_mask: torch.Tensor
    neg_mask: torch.Tensor
    pos_logits: torch.Tensor
    neg_logits: torch.Tensor
    sorted_pos: SortedScores
    sorted_neg: SortedScores


def _split_ranking_entries(
    logits: torch.Tensor, targets: torch.Tensor, delta: float
) -> _RankingEntries:
    """Split ``logits [M]`` into positives and relevant negatives (needs at least one positive)."""
    logits = logits.detach()
    pos_mask = targets == 1
    pos_logits = logits[pos_mask]
    neg_mask = (targets == 0) & (logits >= pos_logits.min() - delta)
    neg_logits = logits[neg_mask]
    return _RankingEntries(
        pos_mask, neg_mask, pos_logits, neg_logits, sort_scores(pos_logits), sort_scores(neg_logits)
    )


def _ap_loss_and_gradient(logits: torch.Tensor, targets: torch.Tensor, delta: float):
    """Returns ``(loss, d loss / d logits)`` of AP-Loss; see :func:`ap_loss`."""
    grad = torch.zeros_like(logits)
    num_pos = int((targets == 1).sum())
    if num_pos == 0:
        return logits.new_zeros(()), grad
    entries = _split_ranking_entries(logits, targets, delta)
    pos_logits = entries.pos_logits

    # rank_pos counts the positive itself as 1; the sum over the positives counts it H(0) = 1/2.
    pos_above = _smoothed_step_sums(
        pos_logits, entries.sorted_pos, torch.ones_like(pos_logits), delta
    )
    rank_pos = 1 + (pos_above - 0.5)
    num_fp = _smoothed_step_sums(
        pos_logits, entries.sorted_neg, torch.ones_like(entries.neg_logits), delta
    )
    rank = rank_pos + num_fp
    prec = rank_pos / rank

    # Interpolated precision: running maximum from the lowest-scored positive up (stable order,
    # as the reference visits them). A positive below the running maximum gets error
    # 1 - max_prec; the share of each negative above it is rescaled by c = (1 - max)/(1 - prec).
    ascending = torch.argsort(pos_logits, stable=True)
    prec_ascending = prec[ascending]
    interpolated = torch.empty_like(prec)
    interpolated[ascending] = torch.cummax(prec_ascending, dim=0).values
    is_max = prec >= interpolated
    rescale = torch.where(is_max, 1.0, (1 - interpolated) / torch.where(is_max, 1.0, 1 - prec))

    neg_grad = _smoothed_step_sums(
        entries.neg_logits, entries.sorted_pos, rescale / rank, delta, reverse=True
    )
    grad[entries.pos_mask] = -(1 - interpolated) / num_pos
    grad[entries.neg_mask] = neg_grad / num_pos
    return 1 - interpolated.mean(), grad


class _APLoss(torch.autograd.Function):
    """AP-Loss whose forward also computes the error-driven gradient of the logits."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, delta: float) -> torch.Tensor:
        loss, grad = _ap_loss_and_gradient(logits.detach(), targets, delta)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None


def ap_loss(logits: torch.Tensor, targets: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """AP-Loss: ``1 - interpolated AP`` of the smoothed ranking, with its error-driven gradient.

    For a positive ``i``: ``rank_pos(i) = 1 + sum_{k in P, k != i} H(s_k - s_i)``,
    ``N_FP(i) = sum_{j in N} H(s_j - s_i)``, ``prec(i) = rank_pos(i) / (rank_pos(i) + N_FP(i))``,
    and ``prec_interp(i)`` is the maximum of ``prec`` over the positives scored at or below ``i``.

    Args:
        logits: ``[M]`` classification logits, one per (anchor or RoI, class) pair.
        targets: ``[M]`` in {1, 0, -1}: positive, negative, ignored (ignored entries take part in
            nothing and get a zero gradient).
        delta: half-width of the smoothed step ``H(x) = clamp(x / (2 delta) + 1/2, 0, 1)``, > 0.

    Returns:
        Scalar ``1 - mean_i prec_interp(i)`` (zero without positives). Its backward gives the
        AP-Loss gradient instead of the derivative of the value: ``-(1 - prec_interp(i)) / |P|``
        for a positive ``i``, and ``sum_i c_i H(s_j - s_i) / rank(i) / |P|`` for a negative ``j``
        with ``c_i = (1 - prec_interp(i)) / (1 - prec(i))`` for interpolated positives, else 1.
        Exactly the values of :func:`~paploss.losses.ranking_reference.ap_loss_reference`, in
        O((P + N) log(P + N)) time.

    Raises:
        ValueError: on malformed inputs, naming the argument.
    """
    check_ranking_inputs(logits, targets)
    delta = _check_delta(delta)
    return _APLoss.apply(logits, targets, delta)
