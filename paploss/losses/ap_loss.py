"""AP-Loss (Chen et al., "Towards Accurate One-Stage Object Detection with AP-Loss"), exact, fast.

The loss is ``1 - interpolated AP`` of the ranking smoothed by ``H(x) = clamp(x / (2 delta) + 1/2,
0, 1)``, trained with the error-driven gradient computed in the forward pass. The published
algorithm (``ranking_reference.ap_loss_reference``) loops over the positives, O(P (P + N)). Here
the sums between positives use the sort + prefix-sum primitive of :mod:`paploss.losses.pairwise`,
and the sums between positives and negatives sort only the 2P kinks ``s_i -/+ delta`` of ``H`` and
locate every other entry among them once (:class:`_NegativesAroundPositives`): the negatives are
never sorted. One call costs O(P log P + M log P) time at worst (O(P log P + M) for spread-out
logits) and O(P + M) memory, with the same values and gradients as the loop.

**Gathered positives on the CPU, fixed shapes elsewhere** (as the PAP loss,
:func:`paploss.losses._devices.needs_fixed_shapes`). The above is the CPU way
(:class:`_GatheredPositives`): ``nonzero`` gathers the positives, and the bucket search and
histograms read sizes on the host, all free on the CPU. On accelerators that would make the host
wait for the device several times per call, so there every entry is an anchor, the positives and
negatives are masks, and every sum runs over the whole sorted list of logits
(:class:`_AllEntries`): one stable sort, then prefix sums, ``searchsorted`` and gathers, with no
shape that depends on the data and no value read on the host. O(M log M) time and O(M) memory; on
the CPU that way is slower, so the CPU keeps the gathered one. Both give the same values and
gradients up to rounding (tested to 1e-12 in float64).

This module also holds the small helpers shared by the fast aLRP and Rank & Sort losses.
"""

import math
from typing import Optional, Union

import torch

from ._checks import check_ranking_inputs
from ._devices import needs_fixed_shapes
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
        reverse: sum ``H(a_i - s_j)`` instead of ``H(s_j - a_i)``.

    Returns:
        ``[A]`` or ``[A, C]`` in the dtype of ``weights``.
    """
    if delta > 0:
        knots_x = anchors.new_tensor([-delta, delta])
        knots_y = anchors.new_tensor([0.0, 1.0])
        return pairwise_gap_sum(anchors, scores, weights, knots_x, knots_y, reverse=reverse)
    # Exact step: s_j - a_i >= 0 <=> s_j >= a_i, a suffix of the sorted scores; a_i - s_j >= 0
    # <=> s_j <= a_i, a prefix.
    acc = _accumulate_dtype(anchors.device)
    w = weights.to(acc)[scores.order]
    prefix = torch.cat([w.new_zeros((1,) + w.shape[1:]), torch.cumsum(w, dim=0)])
    if reverse:
        out = prefix[torch.searchsorted(scores.values, anchors, right=True)]
    else:
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


class _GatheredPositives:
    """A ranking problem with its ``P >= 1`` positives gathered as the anchors (the CPU way).

    The per-anchor quantities of the losses are ``[A]`` tensors, here ``A = P``, one per positive
    in index order. :class:`_AllEntries` has the same methods with every entry as an anchor.

    Attributes:
        logits: ``[P]`` the positives' logits (detached, accumulation dtype).
        normalizer: ``P``, the divisor of the per-positive means.
    """

    fixed_shapes = False

    def __init__(self, logits: torch.Tensor, targets: torch.Tensor, pos_index: torch.Tensor, delta):
        """
        Args:
            logits: ``[M]`` detached logits.
            targets: ``[M]`` targets in {1, 0, -1}.
            pos_index: ``[P]`` int64 indices of the positives, ``P >= 1``.
            delta: half-width of ``H``, ``>= 0``.
        """
        self.pos_index = pos_index
        self.logits = logits.index_select(0, pos_index).to(_accumulate_dtype(logits.device))
        self.normalizer = pos_index.shape[0]
        self.delta = delta
        self.sorted_pos = sort_scores(self.logits)
        # Negatives far below every positive are not pruned: they land below every breakpoint and
        # add nothing, which is cheaper than removing them. Ignored entries take no part.
        self.negatives = _NegativesAroundPositives(self.logits, logits, targets == 0, delta)

    def at(self, values: torch.Tensor) -> torch.Tensor:
        """``[M]`` values -> ``[A]``, their values at the anchors."""
        return values.index_select(0, self.pos_index)

    def keep(self, values: torch.Tensor) -> torch.Tensor:
        """``[A]`` or ``[A, C]`` values, zeroed at the anchors that are not positives (none
        here)."""
        return values

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of ``[A]`` values over the positives."""
        return values.mean()

    def zero_without_positives(self, value: torch.Tensor) -> torch.Tensor:
        """``value``, or 0 if there is no positive (never here)."""
        return value

    def ascending(self) -> torch.Tensor:
        """``[A]`` the anchors in ascending order of their logits, ties in index order."""
        return torch.argsort(self.logits, stable=True)

    def positive_sums(self, weights: torch.Tensor) -> torch.Tensor:
        """``out[a] = sum_{k in P} H(s_k - s_a) w_k`` for ``weights`` ``[A]`` or ``[A, C]`` (read
        at the positives only), self pair included; same shape, accumulation dtype."""
        return _smoothed_step_sums(self.logits, self.sorted_pos, weights, self.delta)

    def false_positives(self) -> torch.Tensor:
        """``out[a] = sum_{j in N} H(x_j - s_a)``, ``[A]`` in the accumulation dtype."""
        return self.negatives.false_positives()

    def per_negative(self, pos_weights: torch.Tensor) -> torch.Tensor:
        """``out[j] = sum_{i in P} H(x_j - s_i) v_i`` at the negatives, 0 elsewhere, for ``[A]``
        weights ``v`` (read at the positives only); ``[M]`` in the accumulation dtype."""
        return self.negatives.per_negative(pos_weights)

    def gradient(
        self, pos_grad: torch.Tensor, neg_grad: torch.Tensor, like: torch.Tensor
    ) -> torch.Tensor:
        """``[M]`` gradient in the dtype of ``like``: ``pos_grad [A]`` at the positives and
        ``neg_grad [M]`` elsewhere (zero at ignored entries, as :meth:`per_negative` gives)."""
        grad = neg_grad.to(like.dtype)
        return grad.index_copy_(0, self.pos_index, pos_grad.to(like.dtype))


class _AllEntries:
    """A ranking problem with every entry as an anchor and the positives as a mask (fixed shapes).

    The way of accelerators: no shape depends on the data and nothing is read on the host, so the
    host never waits for the device. Same methods as :class:`_GatheredPositives`, with ``A = M``;
    the per-anchor values at entries that are not positives are meaningless (finite or not) and
    :meth:`keep` zeroes them wherever they could reach a result. Every sum is a sort + prefix-sum
    sum over all ``M`` entries (:func:`_smoothed_step_sums`, the entries outside it weighted 0):
    O(M log M) time and O(M) memory, more than the gathered way's O(P log P + M) on the CPU.

    Attributes:
        logits: ``[M]`` the logits (detached, accumulation dtype).
        normalizer: ``max(P, 1)`` as a tensor, the divisor of the per-positive means.
    """

    fixed_shapes = True

    def __init__(self, logits: torch.Tensor, targets: torch.Tensor, delta):
        """
        Args:
            logits: ``[M]`` detached logits, ``M >= 1``.
            targets: ``[M]`` targets in {1, 0, -1}.
            delta: half-width of ``H``, ``>= 0``.
        """
        acc = _accumulate_dtype(logits.device)
        self.logits = logits.to(acc)
        self.is_positive = targets == 1
        self.is_negative = targets == 0
        self.num_positives = self.is_positive.sum()
        self.normalizer = self.num_positives.clamp_min(1).to(acc)
        self.delta = delta
        # One stable sort serves every sum and the order of the anchors.
        self.sorted = SortedScores(*torch.sort(self.logits, stable=True))
        self.negative_weights = self.is_negative.to(acc)

    def at(self, values: torch.Tensor) -> torch.Tensor:
        """``[M]`` values -> ``[A]``, their values at the anchors (all of them)."""
        return values

    def keep(self, values: torch.Tensor) -> torch.Tensor:
        """``[A]`` or ``[A, C]`` values, zeroed at the anchors that are not positives."""
        mask = self.is_positive.view(-1, *([1] * (values.dim() - 1)))
        return torch.where(mask, values, 0.0)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of ``[A]`` values over the positives (0 without positives)."""
        return self.keep(values).sum() / self.normalizer

    def zero_without_positives(self, value: torch.Tensor) -> torch.Tensor:
        """``value``, or 0 if there is no positive."""
        return torch.where(self.num_positives > 0, value, 0.0)

    def ascending(self) -> torch.Tensor:
        """``[A]`` the anchors in ascending order of their logits, ties in index order."""
        return self.sorted.order

    def positive_sums(self, weights: torch.Tensor) -> torch.Tensor:
        """See :meth:`_GatheredPositives.positive_sums`."""
        return _smoothed_step_sums(self.logits, self.sorted, self.keep(weights), self.delta)

    def false_positives(self) -> torch.Tensor:
        """See :meth:`_GatheredPositives.false_positives`."""
        return _smoothed_step_sums(self.logits, self.sorted, self.negative_weights, self.delta)

    def per_negative(self, pos_weights: torch.Tensor) -> torch.Tensor:
        """See :meth:`_GatheredPositives.per_negative`."""
        v = self.keep(pos_weights.to(self.logits.dtype))
        out = _smoothed_step_sums(self.logits, self.sorted, v, self.delta, reverse=True)
        return torch.where(self.is_negative, out, 0.0)

    def gradient(
        self, pos_grad: torch.Tensor, neg_grad: torch.Tensor, like: torch.Tensor
    ) -> torch.Tensor:
        """See :meth:`_GatheredPositives.gradient`."""
        return torch.where(self.is_positive, pos_grad.to(like.dtype), neg_grad.to(like.dtype))


RankingProblem = Union[_GatheredPositives, _AllEntries]


def _prepare_ranking_problem(
    logits: torch.Tensor, targets: torch.Tensor, delta: float
) -> Optional[RankingProblem]:
    """The ranking problem of ``logits`` and ``targets`` in the way of their device
    (:func:`~paploss.losses._devices.needs_fixed_shapes`); ``None`` when the loss is 0 with a zero
    gradient for want of entries: without positives on the CPU, without entries elsewhere (both
    known on the host there)."""
    logits = logits.detach()
    if needs_fixed_shapes(logits.device):
        return _AllEntries(logits, targets, delta) if logits.shape[0] else None
    pos_index = torch.nonzero(targets == 1).squeeze(1)
    if pos_index.numel() == 0:
        return None
    return _GatheredPositives(logits, targets, pos_index, delta)


def _ap_loss_and_gradient(logits: torch.Tensor, targets: torch.Tensor, delta: float):
    """Returns ``(loss, d loss / d logits)`` of AP-Loss; see :func:`ap_loss`."""
    problem = _prepare_ranking_problem(logits, targets, delta)
    if problem is None:
        return logits.new_zeros(()), torch.zeros_like(logits)
    anchor_logits = problem.logits  # [A]

    # rank_pos counts the positive itself as 1; the sum over the positives counts it H(0) = 1/2.
    pos_above = problem.positive_sums(torch.ones_like(anchor_logits))
    rank_pos = 1 + (pos_above - 0.5)
    num_fp = problem.false_positives()
    rank = rank_pos + num_fp
    # Zero at the anchors that are not positives, so that they leave the running maximum alone.
    prec = problem.keep(rank_pos / rank)

    # Interpolated precision: running maximum from the lowest-scored positive up (stable order,
    # as the reference visits them). A positive below the running maximum gets error
    # 1 - max_prec; the share of each negative above it is rescaled by c = (1 - max)/(1 - prec).
    ascending = problem.ascending()
    interpolated = torch.empty_like(prec)
    interpolated[ascending] = torch.cummax(prec[ascending], dim=0).values
    is_max = prec >= interpolated
    rescale = torch.where(is_max, 1.0, (1 - interpolated) / torch.where(is_max, 1.0, 1 - prec))

    neg_grad = problem.per_negative(rescale / rank)
    pos_grad = -(1 - interpolated) / problem.normalizer
    grad = problem.gradient(pos_grad, neg_grad / problem.normalizer, logits)
    loss = problem.zero_without_positives(1 - problem.mean(interpolated))
    return loss.to(logits.dtype), grad


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
        O((P + M) log P) time and O(P + M) memory for ``M`` entries on the CPU, O(M log M) time
        and O(M) memory without host synchronisation elsewhere (module docstring).

    Raises:
        ValueError: on malformed inputs, naming the argument.
    """
    check_ranking_inputs(logits, targets)
    delta = _check_delta(delta)
    return _APLoss.apply(logits, targets, delta)
