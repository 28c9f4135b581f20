"""Loop references of the ranking-loss baselines: AP-Loss, aLRP Loss and Rank & Sort Loss.

These mirror the published algorithms line by line: one Python iteration per positive, each
comparing that positive with every positive and every relevant negative, so they cost
O(P * (P + N)) time. They are kept as the readable definition that the fast versions in
``ap_loss.py``, ``alrp_loss.py`` and ``rank_sort_loss.py`` are tested against; do not use them for
training.

Notation shared by the three losses (all tensors are flattened ``[M]`` vectors, one entry per
(anchor or RoI, class) pair):

* ``targets``: 1 = positive, 0 = negative, -1 = ignored (ignored entries take part in nothing and
  get a zero gradient).
* ``H(x) = clamp(x / (2 * delta) + 1/2, 0, 1)`` is the smoothed step and ``x_ij = s_j - s_i`` the
  logit gap between entry ``j`` and positive ``i``.
* All three are trained with the error-driven ("identity update") gradient: the forward pass
  computes the gradient of every logit directly, and ``backward`` only scales it.

Conventions (they follow the published reference code, see each function):

* AP-Loss and aLRP Loss count a positive's comparison with itself as 1 (``rank_pos = 1 + sum over
  the other positives``); Rank & Sort counts it as ``H(0) = 1/2`` when ``delta > 0`` and as 1 when
  ``delta == 0`` (exact step, ``x >= 0``).
* Negatives whose logit is below ``min(positive logits) - delta`` are pruned; they would get
  ``H = 0`` with every positive anyway, so pruning changes no value.
* Positives are visited in ascending logit order (``torch.argsort(..., stable=True)``, so tied
  logits are visited in index order). Only AP-Loss (running maximum of the precision) and the aLRP
  localisation term (running sum in descending order) depend on this order.
"""

from typing import Tuple

import torch

from ._checks import check_ranking_inputs
from .ap_loss import _check_delta

__all__ = ["ap_loss_reference", "alrp_loss_reference", "rank_sort_loss_reference"]

# A positive's error is only distributed over the negatives above it when its (smoothed) number of
# false positives exceeds these thresholds; the values are those of the published code.
ALRP_NUM_FP_EPS = 1e-5
RANK_SORT_EPS = 1e-10


def _smoothed_step(gaps: torch.Tensor, delta: float) -> torch.Tensor:
    """``H(x) = clamp(x / (2 delta) + 1/2, 0, 1)``; the exact step ``x >= 0`` if ``delta == 0``."""
    if delta > 0:
        return torch.clamp(gaps / (2 * delta) + 0.5, min=0, max=1)
    return (gaps >= 0).to(gaps.dtype)


# ---------------------------------------------------------------------------------------------
# AP-Loss
# ---------------------------------------------------------------------------------------------
class _APLossLoop(torch.autograd.Function):
    """AP-Loss with its error-driven gradient, computed by looping over the positives."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, delta: float) -> torch.Tensor:
        grad = torch.zeros_like(logits)
        pos_mask = targets == 1
        pos_logits = logits[pos_mask]
        num_pos = pos_logits.numel()
        if num_pos == 0:
            ctx.save_for_backward(grad)
            return logits.new_zeros(())

        # Negatives more than delta below the lowest positive have H = 0 with every positive.
        threshold = pos_logits.min() - delta
        relevant_neg_mask = (targets == 0) & (logits >= threshold)
        neg_logits = logits[relevant_neg_mask]
        neg_grad = torch.zeros_like(neg_logits)
        pos_grad = torch.zeros_like(pos_logits)
        interpolated_prec = torch.zeros_like(pos_logits)

        # Visiting the positives from the lowest score up, the running maximum of the precision is
        # the interpolated precision (the best precision at this recall or any higher one).
        max_prec = pos_logits.new_zeros(())
        for i in torch.argsort(pos_logits, stable=True).tolist():
            pos_relations = _smoothed_step(pos_logits - pos_logits[i], delta)
            pos_relations[i] = 0  # the comparison with itself counts 1, added below
            neg_relations = _smoothed_step(neg_logits - pos_logits[i], delta)

            rank_pos = 1 + pos_relations.sum()
            num_fp = neg_relations.sum()
            rank = rank_pos + num_fp
            prec = rank_pos / rank

            if max_prec <= prec:
                max_prec = prec
                neg_grad += neg_relations / rank
            else:
                # The error of an interpolated positive is 1 - max_prec, not 1 - prec: rescale the
                # share each negative above it receives accordingly (c_i in the paper).
                neg_grad += neg_relations / rank * ((1 - max_prec) / (1 - prec))
            pos_grad[i] = -(1 - max_prec)
            interpolated_prec[i] = max_prec

        grad[pos_mask] = pos_grad / num_pos
        grad[relevant_neg_mask] = neg_grad / num_pos
        ctx.save_for_backward(grad)
        return 1 - interpolated_prec.mean()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None


def ap_loss_reference(
    logits: torch.Tensor, targets: torch.Tensor, delta: float = 1.0
) -> torch.Tensor:
    """AP-Loss (1 - interpolated AP of the smoothed ranking), loop reference.

    Args:
        logits: ``[M]`` classification logits.
        targets: ``[M]`` in {1, 0, -1} (positive, negative, ignored).
        delta: half-width of the smoothed step ``H``; must be > 0.

    Returns:
        Scalar loss ``1 - mean_i prec_interp(i)``. Its backward gives the AP-Loss gradient:
        ``-(1 - prec_interp(i)) / |P|`` for a positive ``i`` and
        ``sum_i c_i H(x_ij) / rank(i) / |P|`` for a negative ``j``.
    """
    check_ranking_inputs(logits, targets)
    delta = _check_delta(delta)
    return _APLossLoop.apply(logits, targets, delta)


# ---------------------------------------------------------------------------------------------
# aLRP Loss
# ---------------------------------------------------------------------------------------------
class _ALRPClassificationLoop(torch.autograd.Function):
    """aLRP classification loss and its gradient by looping over the positives.

    Returns ``(cls_loss, ranks)`` where ``ranks`` ``[P]`` (positives in index order, not
    differentiable) is the normaliser of the localisation term.
    """

    @staticmethod
    def forward(
        ctx,
        logits: torch.Tensor,
        targets: torch.Tensor,
        loc_errors: torch.Tensor,
        delta: float,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        grad = torch.zeros_like(logits)
        pos_mask = targets == 1
        pos_logits = logits[pos_mask]
        pos_loc_errors = loc_errors[pos_mask]
        num_pos = pos_logits.numel()
        if num_pos == 0:
            ctx.save_for_backward(grad)
            ranks = logits.new_zeros((0,))
            ctx.mark_non_differentiable(ranks)
            return logits.new_zeros(()), ranks

        threshold = pos_logits.min() - delta
        relevant_neg_mask = (targets == 0) & (logits >= threshold)
        neg_logits = logits[relevant_neg_mask]
        neg_grad = torch.zeros_like(neg_logits)
        pos_grad = torch.zeros_like(pos_logits)
        ranks = torch.zeros_like(pos_logits)
        prec = torch.zeros_like(pos_logits)

        for i in torch.argsort(pos_logits, stable=True).tolist():
            pos_relations = _smoothed_step(pos_logits - pos_logits[i], delta)
            pos_relations[i] = 0  # the comparison with itself counts 1, added below
            neg_relations = _smoothed_step(neg_logits - pos_logits[i], delta)

            rank_pos = 1 + pos_relations.sum()
            num_fp = neg_relations.sum()
            ranks[i] = rank_pos + num_fp
            prec[i] = rank_pos / ranks[i]

            if num_fp > ALRP_NUM_FP_EPS:
                # The positive's error includes the localisation errors of the positives ranked
                # above it; all of it is pushed onto the negatives above it, in proportion to H.
                pos_grad[i] = -(num_fp + (pos_relations * pos_loc_errors).sum()) / ranks[i]
                neg_grad += neg_relations * (-pos_grad[i] / num_fp)

        grad[pos_mask] = pos_grad / num_pos
        grad[relevant_neg_mask] = neg_grad / num_pos
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(ranks)
        return 1 - prec.mean(), ranks

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor, grad_ranks: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None, None


def alrp_loss_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    loc_errors: torch.Tensor,
    delta: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """aLRP Loss, loop reference.

    Args:
        logits: ``[M]`` classification logits.
        targets: ``[M]`` in {1, 0, -1} (positive, negative, ignored).
        loc_errors: ``[M]`` non-negative localisation errors ``E_loc``, read where ``targets == 1``
            (e.g. GIoU loss / (2 (1 - tau))).
        delta: half-width of the smoothed step ``H``; must be > 0.

    Returns:
        ``(cls_loss, loc_loss)``:

        * ``cls_loss = mean_i N_FP(i) / rank(i)``; its backward gives the aLRP gradient on
          ``logits`` (it reads ``loc_errors`` but sends them no gradient).
        * ``loc_loss = mean_i (sum of E_loc over the positives ranked at or above i in descending
          logit order) / rank(i)`` with ``rank`` detached; differentiable in ``loc_errors``.
          Tied logits: the positive with the larger index counts as ranked higher.
    """
    check_ranking_inputs(
        logits, targets, loc_errors, "loc_errors", per_positive_range=(0.0, float("inf"))
    )
    delta = _check_delta(delta)
    cls_loss, ranks = _ALRPClassificationLoop.apply(
        logits, targets, loc_errors.detach().to(logits.dtype), delta
    )
    pos_mask = targets == 1
    pos_loc_errors = loc_errors[pos_mask].to(logits.dtype)
    if pos_loc_errors.numel() == 0:
        return cls_loss, pos_loc_errors.sum()  # zero, with a (zero) gradient path
    # Positives in descending logit order: the reverse of the order the loop visits them in.
    descending = torch.argsort(logits.detach()[pos_mask], stable=True).flip(0)
    running_loc_error = torch.cumsum(pos_loc_errors[descending], dim=0)
    loc_loss = (running_loc_error / ranks[descending].detach()).mean()
    return cls_loss, loc_loss


# ---------------------------------------------------------------------------------------------
# Rank & Sort Loss
# ---------------------------------------------------------------------------------------------
class _RankSortLoop(torch.autograd.Function):
    """Rank & Sort loss and its identity-update gradient by looping over the positives."""

    @staticmethod
    def forward(
        ctx,
        logits: torch.Tensor,
        targets: torch.Tensor,
        quality: torch.Tensor,
        delta: float,
    ) -> torch.Tensor:
        grad = torch.zeros_like(logits)
        pos_mask = targets == 1
        pos_logits = logits[pos_mask]
        pos_quality = quality[pos_mask]
        num_pos = pos_logits.numel()
        if num_pos == 0:
            ctx.save_for_backward(grad)
            return logits.new_zeros(())

        threshold = pos_logits.min() - delta
        relevant_neg_mask = (targets == 0) & (logits >= threshold)
        neg_logits = logits[relevant_neg_mask]
        neg_grad = torch.zeros_like(neg_logits)
        pos_grad = torch.zeros_like(pos_logits)
        ranking_error = torch.zeros_like(pos_logits)
        sorting_error = torch.zeros_like(pos_logits)

        for i in torch.argsort(pos_logits, stable=True).tolist():
            # The comparison with itself is kept: H(0) = 1/2 (1 for the exact step).
            pos_relations = _smoothed_step(pos_logits - pos_logits[i], delta)
            neg_relations = _smoothed_step(neg_logits - pos_logits[i], delta)

            rank_pos = pos_relations.sum()
            num_fp = neg_relations.sum()
            rank = rank_pos + num_fp
            ranking_error[i] = num_fp / rank

            # Sorting error: mean (1 - quality) of the positives above i, minus the same over
            # the positives that should be above i (quality >= quality of i).
            current_sorting_error = (pos_relations * (1 - pos_quality)).sum() / rank_pos
            target_mask = pos_quality >= pos_quality[i]
            target_relations = target_mask * pos_relations
            target_sorting_error = (target_relations * (1 - pos_quality)).sum() / (
                target_relations.sum()
            )
            sorting_error[i] = current_sorting_error - target_sorting_error

            if num_fp > RANK_SORT_EPS:
                pos_grad[i] -= ranking_error[i]
                neg_grad += neg_relations * (ranking_error[i] / num_fp)

            # Positives with lower quality but scored above i cause its sorting error.
            missorted_relations = (~target_mask) * pos_relations
            missorted_total = missorted_relations.sum()
            if missorted_total > RANK_SORT_EPS:
                pos_grad[i] -= sorting_error[i]
                pos_grad += missorted_relations * (sorting_error[i] / missorted_total)

        grad[pos_mask] = pos_grad / num_pos
        grad[relevant_neg_mask] = neg_grad / num_pos
        ctx.save_for_backward(grad)
        return ranking_error.mean() + sorting_error.mean()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None, None


def rank_sort_loss_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    quality: torch.Tensor,
    delta: float = 0.5,
) -> torch.Tensor:
    """Rank & Sort loss, loop reference.

    Args:
        logits: ``[M]`` classification logits.
        targets: ``[M]`` in {1, 0, -1} (positive, negative, ignored).
        quality: ``[M]`` continuous labels in [0, 1] (IoU of the detached predicted box with its
            ground truth), read where ``targets == 1``.
        delta: half-width of the smoothed step ``H``; ``0`` selects the exact step ``x >= 0``.

    Returns:
        Scalar ``L_RS = mean_i (l_R(i) + l_S(i) - l_S*(i))`` (ranking plus sorting error). Its
        backward gives the identity-update gradient on ``logits``.
    """
    check_ranking_inputs(logits, targets, quality, "quality")
    delta = _check_delta(delta, allow_zero=True)
    return _RankSortLoop.apply(logits, targets, quality.detach().to(logits.dtype), delta)
