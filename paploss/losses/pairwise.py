"""Exact pairwise sums of piecewise-linear functions of score gaps, by sorting and prefix sums.

Ranking losses need, for every anchor score ``a_i`` (usually the positives' logits), sums over all
scores ``s_j`` of the form

    out[i] = sum_j f(s_j - a_i) * w_j

where ``f`` is a continuous piecewise-linear function of the gap ``d = s_j - a_i`` given by knots
``(knots_x[k], knots_y[k])`` (``knots_x`` strictly increasing) and **constant outside** them:
``f(d) = knots_y[0]`` for ``d <= knots_x[0]`` and ``f(d) = knots_y[-1]`` for ``d >= knots_x[-1]``.
Examples: the PAP loss functions H1/H2 at ``x = d/2 + 1/2`` (knots ``2 x_k - 1``), or the smoothed
step ``H(d) = clamp(d / (2 delta) + 1/2, 0, 1)`` of AP-Loss / aLRP / RS-Loss (knots
``[-delta, delta]``, values ``[0, 1]``).

The dense way builds ``[P, M]`` tensors. Here the scores are sorted once; for a fixed anchor, ``f``
is linear in ``s_j`` between the ``K`` thresholds ``a_i + knots_x[k]``, so each sum is a handful of
prefix-sum differences of ``w`` and ``s * w`` located by ``searchsorted``
(:func:`pairwise_gap_sums`). The transposed sums, one per score over the anchors
(``sum_i f(s_j - a_i) g_i``, needed by backward passes), are a sweep over the same sorted scores
(:func:`pairwise_gap_sums_per_score`). Cost: O(M log M) for the sort plus O(M + P K log M);
memory O(M + P K). Only ``sort``, ``cumsum``, ``searchsorted``, ``index_add_`` and indexing are
used, so everything also runs on GPU. :func:`gap_sum` wraps both in an autograd function.

**Derivative convention.** Sums of the derivative ``f'`` (piecewise constant) are provided for
backward passes. At a gap exactly on a knot, ``f'`` is the **right derivative** with respect to the
gap it is a function of: ``f'(d) = slope of the segment [knots_x[k], knots_x[k+1])`` for
``knots_x[k] <= d < knots_x[k+1]``, and 0 for ``d < knots_x[0]`` or ``d >= knots_x[-1]``.
:func:`piecewise_linear` (the dense evaluation used by reference implementations) gives autograd
exactly this derivative, so dense references and the fast sums agree also at ties and breakpoints
(bit-for-bit whenever gaps and thresholds are exactly representable, e.g. ties on a knot at 0 or
integer-valued scores with integer knots). Values never depend on the convention (``f`` is
continuous).

Prefix sums are accumulated in float64 (float32 on devices without float64 support) because long
cumulative sums of ``s * w`` in float32 lose the precision that their differences need.
"""

from typing import NamedTuple, Optional, Tuple, Union

import torch

__all__ = [
    "SortedScores",
    "sort_scores",
    "piecewise_linear",
    "pairwise_gap_sum",
    "pairwise_gap_slope_sum",
    "pairwise_gap_sums",
    "pairwise_gap_sums_per_score",
    "gap_sum",
]


class SortedScores(NamedTuple):
    """Scores sorted once, to be shared by several pairwise sums over the same scores.

    Attributes:
        values: ``[M]`` the scores in ascending order.
        order: ``[M]`` int64 permutation with ``values == scores[order]``.
    """

    values: torch.Tensor
    order: torch.Tensor


def sort_scores(scores: torch.Tensor) -> SortedScores:
    """Sort ``scores [M]`` ascending (detached) for reuse by the pairwise sums."""
    if scores.dim() != 1:
        raise ValueError(f"scores must have shape [M], got shape {list(scores.shape)}")
    values, order = torch.sort(scores.detach())
    return SortedScores(values, order)


def piecewise_linear(x: torch.Tensor, knots_x: torch.Tensor, knots_y: torch.Tensor) -> torch.Tensor:
    """Evaluate a continuous piecewise-linear function, constant outside its knots (dense).

    Autograd through this function gives the right derivative at knots (see the module docstring),
    the convention the fast pairwise sums use.

    Args:
        x: any shape.
        knots_x: ``[K]`` strictly increasing, ``K >= 2``.
        knots_y: ``[K]`` the values at the knots.

    Returns:
        Tensor of the shape of ``x`` (dtype of ``x``).
    """
    knots_x = knots_x.to(device=x.device, dtype=x.dtype)
    knots_y = knots_y.to(device=x.device, dtype=x.dtype)
    slopes = (knots_y[1:] - knots_y[:-1]) / (knots_x[1:] - knots_x[:-1])
    zero = slopes.new_zeros(1)
    # Piece p in [0, K]: p = 0 below the first knot, p = k + 1 on [x_k, x_{k+1}), p = K at or above
    # the last knot. Each piece is base_y + slope * (x - base_x).
    piece_slope = torch.cat([zero, slopes, zero])
    piece_x = torch.cat([knots_x[:1], knots_x])
    piece_y = torch.cat([knots_y[:1], knots_y])
    piece = torch.searchsorted(knots_x, x.detach().contiguous(), right=True)
    return piece_y[piece] + piece_slope[piece] * (x - piece_x[piece])


def _accumulate_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _check_anchors_and_knots(anchors, knots_x, knots_y):
    if anchors.dim() != 1:
        raise ValueError(f"anchors must have shape [P], got shape {list(anchors.shape)}")
    if knots_x.dim() != 1 or knots_x.shape != knots_y.shape or knots_x.numel() < 2:
        raise ValueError(
            "knots_x and knots_y must both have shape [K] with K >= 2, got "
            f"{list(knots_x.shape)} and {list(knots_y.shape)}"
        )


def _check_weights(weights, expected_rows, weights_name, rows_name):
    if weights.dim() not in (1, 2) or weights.shape[0] != expected_rows:
        raise ValueError(
            f"{weights_name} must have shape [{rows_name[0]}] or [{rows_name[0]}, C] with "
            f"{rows_name[0]} = {expected_rows} ({rows_name[1]}), got {list(weights.shape)}"
        )


def pairwise_gap_sums(
    anchors: torch.Tensor,
    scores: Union[torch.Tensor, SortedScores],
    weights: Optional[torch.Tensor],
    knots_x: torch.Tensor,
    knots_y: torch.Tensor,
    *,
    reverse: bool = False,
    values: bool = True,
    slopes: bool = False,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Exact ``sum_j f(gap_ij) w_j`` and/or ``sum_j f'(gap_ij) w_j`` for every anchor ``i``.

    With ``gap_ij = s_j - a_i`` (or ``a_i - s_j`` if ``reverse``), ``f`` the piecewise-linear
    function of the module docstring (constant outside the knots) and ``f'`` its right derivative
    with respect to ``gap_ij``. No autograd graph is recorded (see :func:`gap_sum` for that).

    Args:
        anchors: ``[P]`` anchor scores ``a``.
        scores: ``[M]`` scores ``s``, or their :func:`sort_scores` result to share one sort.
        weights: ``[M]`` or ``[M, C]`` weights ``w`` (``C`` sums at once), or ``None`` for all
            ones (the sums then count, e.g. ``sum_j H(s_j - a_i)``).
        knots_x: ``[K]`` strictly increasing gaps, ``K >= 2``.
        knots_y: ``[K]`` values of ``f`` at ``knots_x``.
        reverse: use ``gap = a_i - s_j`` instead of ``s_j - a_i``.
        values: compute ``sum_j f(gap_ij) w_j``.
        slopes: compute ``sum_j f'(gap_ij) w_j``.

    Returns:
        ``(value_sums, slope_sums)``, each ``[P]`` (or ``[P, C]``) in the dtype of ``weights``
        (of ``anchors`` if ``weights`` is ``None``), or ``None`` where not requested.
    """
    sorted_scores = scores if isinstance(scores, SortedScores) else sort_scores(scores)
    _check_anchors_and_knots(anchors, knots_x, knots_y)
    if weights is not None:
        _check_weights(weights, sorted_scores.values.shape[0], "weights", ("M", "number of scores"))
    if weights is not None and weights.is_floating_point():
        out_dtype = weights.dtype
    else:
        out_dtype = anchors.dtype
    squeeze = weights is None or weights.dim() == 1
    with torch.no_grad():
        acc = _accumulate_dtype(anchors.device)
        sorted_values = sorted_scores.values.to(acc)
        if weights is None:
            num_scores = sorted_values.shape[0]
            w = sorted_values.new_ones(num_scores, 1)
            cum_w = torch.arange(num_scores + 1, dtype=acc, device=anchors.device).unsqueeze(1)
        else:
            w = weights.detach().to(acc)
            w = (w.unsqueeze(1) if squeeze else w)[sorted_scores.order]  # [M, C], sorted order
            cum_w = torch.cat([w.new_zeros(1, w.shape[1]), torch.cumsum(w, dim=0)])
        zero_row = w.new_zeros(1, w.shape[1])  # cum_w: [M + 1, C], exclusive prefix sums
        cum_sw = None
        if values:
            cum_sw = torch.cat([zero_row, torch.cumsum(w * sorted_values.unsqueeze(1), dim=0)])
        value_sum, slope_sum = _gap_sums_sorted(
            anchors.detach().to(acc),
            sorted_values,
            cum_w,
            cum_sw,
            knots_x.detach().to(device=anchors.device, dtype=acc),
            knots_y.detach().to(device=anchors.device, dtype=acc),
            reverse=reverse,
            slopes=slopes,
        )
    if squeeze:
        value_sum = None if value_sum is None else value_sum.squeeze(1)
        slope_sum = None if slope_sum is None else slope_sum.squeeze(1)
    value_sum = None if value_sum is None else value_sum.to(out_dtype)
    slope_sum = None if slope_sum is None else slope_sum.to(out_dtype)
    return value_sum, slope_sum


def _gap_sums_sorted(anchors, sorted_values, cum_w, cum_sw, knots_x, knots_y, reverse, slopes):
    """Core of :func:`pairwise_gap_sums` on sorted scores and prefix sums (all one dtype).

    Forward gap (``s_j - a_i``): threshold ``tau_k = a_i + x_k``; ``lo_k`` = #{s_j < tau_k}
    (right derivative: a score exactly at ``tau_k`` belongs to segment k). Segment k is the sorted
    index range [lo_k, lo_{k+1}); below ``lo_0`` f = y_0, from ``lo_{K-1}`` on f = y_{K-1}.
    Reverse gap (``a_i - s_j``): ``tau_k = a_i - x_k`` decreases with k; ``hi_k`` = #{s_j <= tau_k};
    segment k is [hi_{k+1}, hi_k); from ``hi_0`` on f = y_0, below ``hi_{K-1}`` f = y_{K-1}.
    On segment k, f = y_k + m_k (gap - x_k) = (y_k - sign m_k tau_k) + sign m_k s_j.
    """
    sign = -1.0 if reverse else 1.0
    segment_slopes = (knots_y[1:] - knots_y[:-1]) / (knots_x[1:] - knots_x[:-1])
    total_w = cum_w[-1]
    num_knots = knots_x.shape[0]
    value_sum = None
    slope_sum = None
    prev_tau = prev_w = prev_sw = None
    for k in range(num_knots):
        tau = anchors + sign * knots_x[k]  # [P]
        index = torch.searchsorted(sorted_values, tau, right=reverse)  # [P]
        w_at = cum_w[index]  # [P, C]
        sw_at = cum_sw[index] if cum_sw is not None else None
        if k == 0 and cum_sw is not None:
            value_sum = knots_y[0] * ((total_w - w_at) if reverse else w_at)
        if k > 0:
            seg_w = (prev_w - w_at) if reverse else (w_at - prev_w)
            m = segment_slopes[k - 1]
            if cum_sw is not None:
                seg_sw = (prev_sw - sw_at) if reverse else (sw_at - prev_sw)
                intercept = knots_y[k - 1] - sign * m * prev_tau  # [P]
                value_sum = value_sum + intercept.unsqueeze(1) * seg_w + (sign * m) * seg_sw
            if slopes:
                slope_sum = m * seg_w if slope_sum is None else slope_sum + m * seg_w
        if k == num_knots - 1 and cum_sw is not None:
            value_sum = value_sum + knots_y[-1] * (w_at if reverse else (total_w - w_at))
        prev_tau, prev_w, prev_sw = tau, w_at, sw_at
    return value_sum, slope_sum


def pairwise_gap_sum(
    anchors: torch.Tensor,
    scores: Union[torch.Tensor, SortedScores],
    weights: Optional[torch.Tensor],
    knots_x: torch.Tensor,
    knots_y: torch.Tensor,
    *,
    reverse: bool = False,
) -> torch.Tensor:
    """``out[i] = sum_j f(s_j - a_i) w_j`` (``f(a_i - s_j)`` if ``reverse``), no autograd.

    See :func:`pairwise_gap_sums` for the arguments. Returns ``[P]`` or ``[P, C]``.
    """
    value_sum, _ = pairwise_gap_sums(anchors, scores, weights, knots_x, knots_y, reverse=reverse)
    return value_sum


def pairwise_gap_slope_sum(
    anchors: torch.Tensor,
    scores: Union[torch.Tensor, SortedScores],
    weights: Optional[torch.Tensor],
    knots_x: torch.Tensor,
    knots_y: torch.Tensor,
    *,
    reverse: bool = False,
) -> torch.Tensor:
    """``out[i] = sum_j f'(s_j - a_i) w_j`` (``f'(a_i - s_j)`` if ``reverse``), no autograd.

    ``f'`` is the right derivative with respect to the gap (module docstring). See
    :func:`pairwise_gap_sums` for the arguments. Returns ``[P]`` or ``[P, C]``.
    """
    _, slope_sum = pairwise_gap_sums(
        anchors, scores, weights, knots_x, knots_y, reverse=reverse, values=False, slopes=True
    )
    return slope_sum


def pairwise_gap_sums_per_score(
    scores: Union[torch.Tensor, SortedScores],
    anchors: torch.Tensor,
    anchor_weights: torch.Tensor,
    knots_x: torch.Tensor,
    knots_y: torch.Tensor,
    *,
    values: bool = True,
    slopes: bool = False,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The transposed sums: for every score ``j``, ``sum_i f(s_j - a_i) g_i`` and/or
    ``sum_i f'(s_j - a_i) g_i`` over the anchors.

    Computed by a sweep over the sorted scores instead of a search per score: with the ramp form
    ``f(d) = y_0 + sum_k dm_k max(d - x_k, 0)`` (``dm_k`` the slope change at knot ``k``), each
    anchor adds ``g_i dm_k`` to the slope and ``-g_i dm_k (a_i + x_k)`` to the intercept of the
    running sum from the first score ``>= a_i + x_k`` on (right derivative, as in the module
    docstring). One ``searchsorted`` of the ``P K`` thresholds, a scatter-add and a cumsum:
    O(M + P K log M) on top of the sort, O(M + P K) memory. This is the backward of
    :func:`pairwise_gap_sums` with respect to the scores and weights. No autograd graph.

    Args:
        scores: ``[M]`` scores ``s``, or their :func:`sort_scores` result.
        anchors: ``[P]`` anchor scores ``a``.
        anchor_weights: ``[P]`` or ``[P, C]`` weights ``g`` of the anchors.
        knots_x: ``[K]`` strictly increasing gaps, ``K >= 2``.
        knots_y: ``[K]`` values of ``f`` at ``knots_x``.
        values: compute ``sum_i f(s_j - a_i) g_i``.
        slopes: compute ``sum_i f'(s_j - a_i) g_i``.

    Returns:
        ``(value_sums, slope_sums)``, each ``[M]`` (or ``[M, C]``) in the original order of the
        scores and the dtype of ``anchor_weights``, or ``None`` where not requested.
        (On CUDA the scatter-add makes the float64 rounding order non-deterministic.)
    """
    sorted_scores = scores if isinstance(scores, SortedScores) else sort_scores(scores)
    _check_anchors_and_knots(anchors, knots_x, knots_y)
    _check_weights(anchor_weights, anchors.shape[0], "anchor_weights", ("P", "number of anchors"))
    if not (values or slopes):
        return None, None
    squeeze = anchor_weights.dim() == 1
    out_dtype = anchor_weights.dtype
    num_scores = sorted_scores.values.shape[0]
    with torch.no_grad():
        acc = _accumulate_dtype(anchors.device)
        sorted_values = sorted_scores.values.to(acc)
        g = anchor_weights.detach().to(acc)
        g = g.unsqueeze(1) if squeeze else g  # [P, C]
        knots_x = knots_x.detach().to(device=anchors.device, dtype=acc)
        knots_y = knots_y.detach().to(device=anchors.device, dtype=acc)
        segment_slopes = (knots_y[1:] - knots_y[:-1]) / (knots_x[1:] - knots_x[:-1])
        zero = segment_slopes.new_zeros(1)
        slope_changes = torch.cat([segment_slopes, zero]) - torch.cat([zero, segment_slopes])
        thresholds = anchors.detach().to(acc)[:, None] + knots_x[None, :]  # [P, K]
        start = torch.searchsorted(sorted_values, thresholds).reshape(-1)  # first s >= threshold
        num_channels = g.shape[1]

        def sweep(increments):  # [P, K, C] -> running sums over the sorted scores, [M, C]
            deltas = g.new_zeros(num_scores + 1, num_channels)
            deltas.index_add_(0, start, increments.reshape(-1, num_channels))
            return torch.cumsum(deltas, dim=0)[:num_scores]

        weighted_changes = g[:, None, :] * slope_changes[None, :, None]  # [P, K, C]
        slope_sorted = sweep(weighted_changes)
        value_sorted = None
        if values:
            intercept = sweep(-weighted_changes * thresholds[:, :, None])
            value_sorted = (
                knots_y[0] * g.sum(dim=0) + intercept + sorted_values[:, None] * slope_sorted
            )
        wanted = [
            result
            for result in (value_sorted, slope_sorted if slopes else None)
            if result is not None
        ]
        stacked = torch.cat(wanted, dim=1)  # [M, C * number wanted], back to the input order once
        unsorted = torch.empty_like(stacked).index_copy_(0, sorted_scores.order, stacked)
        unsorted = unsorted.to(out_dtype)
        parts = list(unsorted.split(num_channels, dim=1))
        if squeeze:
            parts = [part.squeeze(1) for part in parts]
        value_sum = parts.pop(0) if values else None
        slope_sum = parts.pop(0) if slopes else None
    return value_sum, slope_sum


class _GapSum(torch.autograd.Function):
    """``out[i, c] = sum_j f(s_j - a_i) w[j, c]`` with an exact, O(M + P) memory backward.

    With upstream gradient ``g [P, C]``:
      d/dw[j, c] = sum_i g[i, c] f(s_j - a_i)                 (per-score value sweep)
      d/ds_j     = sum_c w[j, c] sum_i g[i, c] f'(s_j - a_i)  (per-score slope sweep)
      d/da_i     = -sum_c g[i, c] sum_j f'(s_j - a_i) w[j, c] (per-anchor slope sums)
    ``f'`` is the right derivative in the gap ``s_j - a_i`` in every term, so a pair counted in both
    roles (an anchor that is also a score, e.g. the self pair) gets cancelling contributions.
    """

    @staticmethod
    def forward(ctx, anchors, scores, weights, knots_x, knots_y, sorted_values, order):
        sorted_scores = SortedScores(sorted_values, order)
        out, _ = pairwise_gap_sums(anchors, sorted_scores, weights, knots_x, knots_y)
        ctx.save_for_backward(anchors, weights, knots_x, knots_y, sorted_values, order)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        anchors, weights, knots_x, knots_y, sorted_values, order = ctx.saved_tensors
        need_anchors, need_scores, need_weights = ctx.needs_input_grad[:3]
        grad_anchors = grad_scores = grad_weights = None
        sorted_scores = SortedScores(sorted_values, order)
        squeeze = weights.dim() == 1
        if need_scores or need_weights:
            value_sum, slope_sum = pairwise_gap_sums_per_score(
                sorted_scores,
                anchors,
                grad_out,
                knots_x,
                knots_y,
                values=need_weights,
                slopes=need_scores,
            )
            grad_weights = value_sum
            if need_scores:
                grad_scores = weights * slope_sum if squeeze else (weights * slope_sum).sum(dim=1)
        if need_anchors:
            _, slope_sum = pairwise_gap_sums(
                anchors, sorted_scores, weights, knots_x, knots_y, values=False, slopes=True
            )
            grad = grad_out * slope_sum
            grad_anchors = -(grad if squeeze else grad.sum(dim=1))
        return grad_anchors, grad_scores, grad_weights, None, None, None, None


def gap_sum(
    anchors: torch.Tensor,
    scores: torch.Tensor,
    weights: torch.Tensor,
    knots_x: torch.Tensor,
    knots_y: torch.Tensor,
    *,
    sorted_scores: Optional[SortedScores] = None,
) -> torch.Tensor:
    """Differentiable ``out[i] = sum_j f(s_j - a_i) w_j`` (exact values and gradients).

    Gradients flow to ``anchors``, ``scores`` and ``weights`` (a tensor may appear in two roles,
    e.g. ``anchors = scores[idx]``; autograd adds both contributions). The backward reuses the sort
    of the forward (:func:`pairwise_gap_sums_per_score` for scores and weights,
    :func:`pairwise_gap_slope_sum` for anchors): O(M log M + P K log M) time overall, O(M + P K)
    memory. No gradient flows to the knots.

    Args:
        anchors: ``[P]`` anchor scores.
        scores: ``[M]`` scores.
        weights: ``[M]`` or ``[M, C]``.
        knots_x: ``[K]`` strictly increasing gaps.
        knots_y: ``[K]`` values at the knots.
        sorted_scores: optional ``sort_scores(scores)`` to reuse a sort already done.

    Returns:
        ``[P]`` (or ``[P, C]``) in the dtype of ``weights``.
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must have shape [M], got shape {list(scores.shape)}")
    if sorted_scores is None:
        sorted_scores = sort_scores(scores)
    return _GapSum.apply(
        anchors, scores, weights, knots_x, knots_y, sorted_scores.values, sorted_scores.order
    )
