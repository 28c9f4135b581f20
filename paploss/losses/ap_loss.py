"""AP-Loss (Chen et al., "Towards Accurate One-Stage Object Detection with AP-Loss"), exact, fast.

The loss is ``1 - interpolated AP`` of the ranking smoothed by ``H(x) = clamp(x / (2 delta) + 1/2,
0, 1)``, trained with the error-driven gradient computed in the forward pass. The published
algorithm (``ranking_reference.ap_loss_reference``) loops over the positives, O(P (P + N)). Here
the sums between positives use the sort + prefix-sum primitive of :mod:`paploss.losses.pairwise`,
and the sums between positives and negatives sort only the 2P kinks ``s_i -/+ delta`` of ``H`` and
locate every other entry among them once (:class:`_NegativesAroundPositives`): the negatives are
never sorted. One call costs O(P log P + M log P) time at worst (O(P log P + M) for spread-out
logits) and O(P + M) memory, with the same values and gradients as the loop.

This module also holds the small helpers shared by the fast aLRP and Rank & Sort losses.
"""

import math
from typing import NamedTuple, Optional

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
    anchors: torch.Tensor, scores: SortedScores, weights: torch.Tensor, delta: float
) -> torch.Tensor:
    """``out[i] = sum_j H(s_j - a_i) w_j``, exactly (used for the sums between positives).

    ``H(x) = clamp(x / (2 delta) + 1/2, 0, 1)``; for ``delta == 0`` the exact step ``x >= 0``
    (which :func:`pairwise_gap_sum` cannot express: its knots must be strictly increasing).

    Args:
        anchors: ``[A]`` anchor scores.
        scores: the sorted ``[S]`` scores.
        weights: ``[S]`` or ``[S, C]`` weights, in the original (unsorted) order of the scores.
        delta: half-width of the smoothed step, ``>= 0``.

    Returns:
        ``[A]`` or ``[A, C]`` in the dtype of ``weights``.
    """
    if delta > 0:
        knots_x = anchors.new_tensor([-delta, delta])
        knots_y = anchors.new_tensor([0.0, 1.0])
        return pairwise_gap_sum(anchors, scores, weights, knots_x, knots_y)
    # Exact step: s_j - a_i >= 0 <=> s_j >= a_i, a suffix of the sorted scores.
    acc = _accumulate_dtype(anchors.device)
    w = weights.to(acc)[scores.order]
    prefix = torch.cat([w.new_zeros((1,) + w.shape[1:]), torch.cumsum(w, dim=0)])
    out = prefix[-1] - prefix[torch.searchsorted(scores.values, anchors, right=False)]
    return out.to(weights.dtype)


def _count_at_most(boundaries: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``#{k: boundaries[k] <= values[j]}`` for every ``j``, exactly.

    Same result as ``torch.searchsorted(boundaries, values, right=True)``, but much cheaper when
    there are many more values than boundaries: a uniform grid of ``4 B`` buckets over the
    boundaries' range gives every value the index of the first boundary of its bucket, and a
    branchless binary search over as many levels as the fullest bucket needs (a few for spread-out
    boundaries; all ``log2 B`` when they are clustered) finishes the count. The bucket function is
    monotone and identical for boundaries and values, so a boundary in a lower (higher) bucket is
    below (above) the value, whatever the rounding. Three ``[V]`` buffers are allocated in all
    (fresh large allocations are costly on CPU).

    Args:
        boundaries: ``[B]`` sorted ascending, ``1 <= B < 2**29``.
        values: ``[V]`` of the dtype of ``boundaries``.

    Returns:
        ``[V]`` int32.
    """
    num_boundaries = boundaries.shape[0]
    num_buckets = 4 * num_boundaries
    low = boundaries[:1]
    span = float(boundaries[-1] - boundaries[0])
    scale = num_buckets / span if span > 0 else 0.0
    if not math.isfinite(scale):  # a denormal span: one bucket, plain binary search
        scale = 0.0

    def scaled(x: torch.Tensor) -> torch.Tensor:  # clamped to >= 0, so truncation floors
        return torch.sub(x, low).mul_(scale).clamp_(0, num_buckets - 1)

    bucket_size = torch.bincount(scaled(boundaries).int(), minlength=num_buckets)
    bucket_start = torch.cat([bucket_size.new_zeros(1), torch.cumsum(bucket_size, dim=0)]).int()
    num_levels = int(bucket_size.max()).bit_length()
    padded = torch.cat([boundaries, boundaries.new_full((1 << num_levels,), float("inf"))])

    probe = scaled(values)  # float buffer, reused for the probed boundaries
    index = probe.int()  # int buffer: bucket, then probe positions
    count = bucket_start.index_select(0, index)
    is_below = torch.empty(values.shape, dtype=torch.bool, device=values.device)
    for level in reversed(range(num_levels)):
        step = 1 << level
        torch.index_select(padded, 0, torch.add(count, step - 1, out=index), out=probe)
        count.add_(torch.le(probe, values, out=is_below), alpha=step)
    return count


class _NegativesAroundPositives:
    """Exact sums of ``H(x_j - s_i)`` between the positives ``s [P]`` and the negatives ``x_j``.

    ``H(d) = clamp(d / (2 delta) + 1/2, 0, 1)`` (the exact step ``d >= 0`` for ``delta == 0``) is
    piecewise linear in both arguments with kinks where ``x_j`` meets the 2P breakpoints
    ``s_i - delta`` and ``s_i + delta``. The breakpoints are sorted once and every entry is located
    among them once (:func:`_count_at_most`, O(M) for spread-out logits); entries that are not
    negatives are placed below every breakpoint, where they add nothing and receive nothing. Both
    directions are then a histogram or a gather plus prefix sums over the breakpoints:

    * :meth:`false_positives`: ``out[i] = sum_{j in N} H(x_j - s_i)``;
    * :meth:`per_negative`: ``out[j] = sum_i H(x_j - s_i) v_i`` (e.g. the negatives' gradient).

    The negatives are never sorted: O(P log P + M) time for spread-out logits (O(M log P) at
    worst) and O(P + M) memory. Accumulation is in float64.
    """

    def __init__(
        self,
        pos_logits: torch.Tensor,
        logits: torch.Tensor,
        is_negative: torch.Tensor,
        delta: float,
    ):
        """
        Args:
            pos_logits: ``[P]`` logits of the positives, ``P >= 1``.
            logits: ``[M]`` logits of all entries.
            is_negative: ``[M]`` bool, the negatives among them.
            delta: half-width of ``H``, ``>= 0``.
        """
        acc = _accumulate_dtype(pos_logits.device)
        num_pos = pos_logits.shape[0]
        self.pos_logits = pos_logits.detach().to(acc)
        self.logits = logits.detach().to(acc)
        self.num_bins = 2 * num_pos + 1
        # 1 / (2 delta) on the linear part of H; the linear part is empty when delta == 0.
        self.inverse_width = 1 / (2 * delta) if delta > 0 else 0.0
        breakpoints = torch.cat([self.pos_logits - delta, self.pos_logits + delta])
        sorted_breakpoints, order = torch.sort(breakpoints, stable=True)
        position = torch.empty_like(order)
        position[order] = torch.arange(2 * num_pos, device=order.device)
        self.lower_position = position[:num_pos]  # where s_i - delta sits among the breakpoints
        self.upper_position = position[num_pos:]  # where s_i + delta sits
        # Negative j lies at or above exactly the first location[j] breakpoints: at or above
        # s_i + delta it has H = 1, at or above only s_i - delta it is on the linear part.
        self.location = _count_at_most(sorted_breakpoints, self.logits).mul_(is_negative)

    def false_positives(self) -> torch.Tensor:
        """``out[i] = sum_{j in N} H(x_j - s_i)``, ``[P]`` in the accumulation dtype."""
        # Number (and sum of x) of the negatives at or above breakpoint k, for k = 0 .. 2P - 1.
        histograms = (
            torch.bincount(self.location, minlength=self.num_bins).to(self.logits.dtype),
            torch.bincount(self.location, weights=self.logits, minlength=self.num_bins),
        )
        count, sum_x = (
            torch.flip(torch.cumsum(torch.flip(histogram, [0]), dim=0), [0])[1:]
            for histogram in histograms
        )
        above_upper = count[self.upper_position]
        linear_count = count[self.lower_position] - above_upper
        linear_sum_x = sum_x[self.lower_position] - sum_x[self.upper_position]
        return (
            above_upper
            + (linear_sum_x - self.pos_logits * linear_count) * self.inverse_width
            + linear_count / 2
        )

    def per_negative(self, pos_weights: torch.Tensor) -> torch.Tensor:
        """``out[j] = sum_i H(x_j - s_i) v_i`` at the negatives, 0 elsewhere, for ``pos_weights``
        ``[P]``. Returns ``[M]`` in the accumulation dtype."""
        v = pos_weights.to(self.pos_logits.dtype)
        # Per positive, H(x - s_i) v_i = slope * x + intercept: (0, 0) below s_i - delta,
        # (v / (2 delta), v (1/2 - s_i / (2 delta))) on the linear part, (0, v) above s_i + delta.
        slope = v * self.inverse_width
        intercept = v * (0.5 - self.pos_logits * self.inverse_width)
        tables = []
        for at_lower, at_upper in ((slope, -slope), (intercept, v - intercept)):
            changes = v.new_zeros(self.num_bins)
            changes[self.lower_position + 1] = at_lower
            changes[self.upper_position + 1] = at_upper
            tables.append(torch.cumsum(changes, dim=0))
        slope_table, intercept_table = tables
        out = intercept_table.index_select(0, self.location)
        return out.addcmul_(slope_table.index_select(0, self.location), self.logits)


class _RankingProblem(NamedTuple):
    """A flattened ranking problem with at least one positive, prepared for the fast sums.

    Attributes:
        pos_index: ``[P]`` int64 indices of the positives (``targets == 1``) in the ``[M]`` input.
        pos_logits: ``[P]`` their logits (detached, accumulation dtype).
        sorted_pos: ``pos_logits`` sorted, for the sums between positives.
        negatives: sums of ``H`` between the positives and the negatives.
    """

    pos_index: torch.Tensor
    pos_logits: torch.Tensor
    sorted_pos: SortedScores
    negatives: _NegativesAroundPositives


def _prepare_ranking_problem(
    logits: torch.Tensor, targets: torch.Tensor, delta: float
) -> Optional[_RankingProblem]:
    """Locate the positives and pair them with the negatives; ``None`` if there is no positive.

    Negatives far below every positive are not pruned: they land below every breakpoint and add
    nothing, which is cheaper than removing them. Ignored entries take no part.
    """
    logits = logits.detach()
    pos_index = torch.nonzero(targets == 1).squeeze(1)
    if pos_index.numel() == 0:
        return None
    pos_logits = logits.index_select(0, pos_index).to(_accumulate_dtype(logits.device))
    return _RankingProblem(
        pos_index,
        pos_logits,
        sort_scores(pos_logits),
        _NegativesAroundPositives(pos_logits, logits, targets == 0, delta),
    )


def _assemble_gradient(
    problem: _RankingProblem, pos_grad: torch.Tensor, neg_grad: torch.Tensor, like: torch.Tensor
) -> torch.Tensor:
    """``[M]`` gradient in the dtype of ``like``: ``pos_grad [P]`` at the positives and
    ``neg_grad [M]`` elsewhere (zero at ignored entries, as :meth:`per_negative` gives)."""
    grad = neg_grad.to(like.dtype)
    return grad.index_copy_(0, problem.pos_index, pos_grad.to(like.dtype))


def _ap_loss_and_gradient(logits: torch.Tensor, targets: torch.Tensor, delta: float):
    """Returns ``(loss, d loss / d logits)`` of AP-Loss; see :func:`ap_loss`."""
    problem = _prepare_ranking_problem(logits, targets, delta)
    if problem is None:
        return logits.new_zeros(()), torch.zeros_like(logits)
    pos_logits = problem.pos_logits
    num_pos = pos_logits.shape[0]

    # rank_pos counts the positive itself as 1; the sum over the positives counts it H(0) = 1/2.
    pos_above = _smoothed_step_sums(
        pos_logits, problem.sorted_pos, torch.ones_like(pos_logits), delta
    )
    rank_pos = 1 + (pos_above - 0.5)
    num_fp = problem.negatives.false_positives()
    rank = rank_pos + num_fp
    prec = rank_pos / rank

    # Interpolated precision: running maximum from the lowest-scored positive up (stable order,
    # as the reference visits them). A positive below the running maximum gets error
    # 1 - max_prec; the share of each negative above it is rescaled by c = (1 - max)/(1 - prec).
    ascending = torch.argsort(pos_logits, stable=True)
    interpolated = torch.empty_like(prec)
    interpolated[ascending] = torch.cummax(prec[ascending], dim=0).values
    is_max = prec >= interpolated
    rescale = torch.where(is_max, 1.0, (1 - interpolated) / torch.where(is_max, 1.0, 1 - prec))

    neg_grad = problem.negatives.per_negative(rescale / rank)
    grad = _assemble_gradient(problem, -(1 - interpolated) / num_pos, neg_grad / num_pos, logits)
    return (1 - interpolated.mean()).to(logits.dtype), grad


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
        Values and gradients equal those of
        :func:`~paploss.losses.ranking_reference.ap_loss_reference` up to rounding; the cost is
        O((P + M) log P) time and O(P + M) memory for ``M`` entries.

    Raises:
        ValueError: on malformed inputs, naming the argument.
    """
    check_ranking_inputs(logits, targets)
    delta = _check_delta(delta)
    return _APLoss.apply(logits, targets, delta)
