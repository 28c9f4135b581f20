"""aLRP Loss (Oksuz et al., "A Ranking-based, Balanced Loss Function Unifying Classification and
Localisation in Object Detection"), exact and fast.

The classification part is trained with the error-driven gradient computed in the forward pass;
the localisation part is an ordinary differentiable function of the positives' localisation
errors. The published algorithm (``ranking_reference.alrp_loss_reference``) loops over the
positives, O(P (P + N)); here every per-positive sum is exact in O((P + M) log P) time and
O(P + M) memory on the CPU, in O(M log M) time and O(M) memory with fixed shapes and no host
synchronisation on accelerators (the machinery and the two ways are described in
:mod:`paploss.losses.ap_loss`), with the same values and gradients. The self-balancing weight of the localisation term lives with the head that trains
with the loss (:class:`paploss.modeling.head_loss.ALRPSelfBalance`).
"""

from typing import Tuple

import torch

from ._checks import check_ranking_inputs
from ._devices import needs_fixed_shapes
from .ap_loss import _check_delta, _prepare_ranking_problem

__all__ = ["alrp_loss"]

# A positive's error is distributed over the negatives above it only if its smoothed number of
# false positives exceeds this (the published value).
NUM_FP_EPS = 1e-5


def _alrp_classification_and_gradient(
    logits: torch.Tensor, targets: torch.Tensor, loc_errors: torch.Tensor, delta: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(cls_loss, d cls_loss / d logits [M], rank [A])``, ``rank`` at the anchors of the
    ranking problem (the positives on the CPU, every entry elsewhere); see :func:`alrp_loss`."""
    problem = _prepare_ranking_problem(logits, targets, delta)
    if problem is None:
        return logits.new_zeros(()), torch.zeros_like(logits), logits.new_zeros((0,))
    anchor_logits = problem.logits  # [A]
    pos_loc_errors = problem.at(loc_errors).to(anchor_logits.dtype)

    # Column 0: sum_k H(s_k - s_i); column 1: sum_k H(s_k - s_i) E(k); both over all positives,
    # so they include the self pair with H(0) = 1/2, which rank_pos counts as 1 and the
    # localisation sum leaves out.
    pos_weights = torch.stack([torch.ones_like(anchor_logits), pos_loc_errors], dim=1)
    pos_sums = problem.positive_sums(pos_weights)
    rank_pos = 1 + (pos_sums[:, 0] - 0.5)
    loc_error_above = pos_sums[:, 1] - 0.5 * pos_loc_errors
    num_fp = problem.false_positives()
    rank = rank_pos + num_fp
    cls_loss = problem.zero_without_positives(1 - problem.mean(rank_pos / rank))

    # A positive's error (its false positives plus the localisation errors of the positives above
    # it) is pushed onto the negatives above it in proportion to H(s_j - s_i) / N_FP(i).
    has_fp = num_fp > NUM_FP_EPS
    pos_error = torch.where(has_fp, (num_fp + loc_error_above) / rank, 0.0)
    share = pos_error / torch.where(has_fp, num_fp, 1.0)
    neg_grad = problem.per_negative(share)
    grad = problem.gradient(-pos_error / problem.normalizer, neg_grad / problem.normalizer, logits)
    return cls_loss.to(logits.dtype), grad, rank.to(logits.dtype)


class _ALRPClassification(torch.autograd.Function):
    """aLRP classification loss whose forward also computes the gradient of the logits.

    Returns ``(cls_loss, rank [A])``; ``rank`` (at the anchors of the ranking problem: the
    positives in index order on the CPU, every entry elsewhere) is not differentiable and
    normalises the localisation term.
    """

    @staticmethod
    def forward(
        ctx,
        logits: torch.Tensor,
        targets: torch.Tensor,
        loc_errors: torch.Tensor,
        delta: float,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        cls_loss, grad, rank = _alrp_classification_and_gradient(
            logits.detach(), targets, loc_errors.detach(), delta
        )
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(rank)
        return cls_loss, rank

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor, grad_rank: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None, None


def alrp_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    loc_errors: torch.Tensor,
    delta: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """aLRP Loss: classification and localisation terms of average Localisation-Recall-Precision.

    For a positive ``i``: ``rank_pos(i) = 1 + sum_{k in P, k != i} H(s_k - s_i)``,
    ``N_FP(i) = sum_{j in N} H(s_j - s_i)``, ``rank(i) = rank_pos(i) + N_FP(i)``, with
    ``H(x) = clamp(x / (2 delta) + 1/2, 0, 1)``.

    Args:
        logits: ``[M]`` classification logits, one per (anchor or RoI, class) pair.
        targets: ``[M]`` in {1, 0, -1}: positive, negative, ignored (ignored entries take part in
            nothing and get a zero gradient).
        loc_errors: ``[M]`` non-negative localisation errors ``E``, read where ``targets == 1``
            (the published choice: GIoU loss / (2 (1 - tau)), tau = 0.5, 0.7 for the RPN).
        delta: half-width of the smoothed step, > 0.

    Returns:
        ``(cls_loss, loc_loss)``, scalars (both zero without positives):

        * ``cls_loss = mean_i N_FP(i) / rank(i)``. Its backward gives the aLRP gradient, not the
          derivative of the value: a positive with ``N_FP(i) > 1e-5`` gets
          ``-(N_FP(i) + sum_{k in P, k != i} H(s_k - s_i) E(k)) / rank(i) / |P|``, spread over the
          negatives ``j`` in proportion to ``H(s_j - s_i) / N_FP(i)``. No gradient reaches
          ``loc_errors``.
        * ``loc_loss = mean_i (sum of E over the positives ranked at or above i) / rank(i)``, the
          positives ranked by descending logit (tied logits: larger index first) and ``rank``
          detached; its gradient flows to ``loc_errors`` only.

        Values and gradients equal those of
        :func:`~paploss.losses.ranking_reference.alrp_loss_reference` up to rounding; the cost is
        O((P + M) log P) time and O(P + M) memory for ``M`` entries on the CPU, O(M log M) time
        and O(M) memory without host synchronisation elsewhere.

    Raises:
        ValueError: on malformed inputs, naming the argument.
    """
    check_ranking_inputs(
        logits, targets, loc_errors, "loc_errors", per_positive_range=(0.0, float("inf"))
    )
    delta = _check_delta(delta)
    cls_loss, rank = _ALRPClassification.apply(
        logits, targets, loc_errors.detach().to(logits.dtype), delta
    )
    if needs_fixed_shapes(logits.device):
        return cls_loss, _localisation_over_all_entries(logits, targets, loc_errors, rank)
    pos_index = torch.nonzero(targets == 1).squeeze(1)
    pos_loc_errors = loc_errors.index_select(0, pos_index).to(logits.dtype)
    if pos_loc_errors.numel() == 0:
        return cls_loss, pos_loc_errors.sum()  # zero, with a (zero) gradient path
    descending = torch.argsort(logits.detach().index_select(0, pos_index), stable=True).flip(0)
    running_loc_error = torch.cumsum(pos_loc_errors[descending], dim=0)
    loc_loss = (running_loc_error / rank[descending]).mean()
    return cls_loss, loc_loss


def _localisation_over_all_entries(
    logits: torch.Tensor, targets: torch.Tensor, loc_errors: torch.Tensor, rank: torch.Tensor
) -> torch.Tensor:
    """The localisation term of :func:`alrp_loss` with fixed shapes (the way of accelerators):
    every entry is ranked, the positives are a mask and the others carry a zero error.

    Args:
        logits: ``[M]`` logits.
        targets: ``[M]`` targets in {1, 0, -1}.
        loc_errors: ``[M]`` localisation errors, read at the positives.
        rank: ``[M]`` the positives' ``rank(i)`` (``[0]`` when ``M`` is 0), detached.

    Returns:
        The scalar ``loc_loss``, differentiable with respect to ``loc_errors`` (0 without
        positives).
    """
    is_positive = targets == 1
    if not is_positive.shape[0]:
        return loc_errors.to(logits.dtype).sum()  # zero, with a (zero) gradient path
    pos_loc_errors = torch.where(is_positive, loc_errors.to(logits.dtype), 0.0)
    # Descending logits, tied logits larger index first: a stable ascending sort, flipped.
    descending = torch.argsort(logits.detach(), stable=True).flip(0)
    running_loc_error = torch.cumsum(pos_loc_errors.index_select(0, descending), dim=0)
    per_positive = running_loc_error / rank.index_select(0, descending)
    per_positive = torch.where(is_positive.index_select(0, descending), per_positive, 0.0)
    return per_positive.sum() / is_positive.sum().clamp_min(1)
