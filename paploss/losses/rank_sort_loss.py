"""Rank & Sort Loss (Oksuz et al., "Rank & Sort Loss for Object Detection and Instance
Segmentation"), exact and fast.

``L_RS`` is the mean over the positives of a ranking error (false positives above) plus a sorting
error (positives of lower quality above), trained with the identity-update gradient computed in
the forward pass. The published algorithm (``ranking_reference.rank_sort_loss_reference``) loops
over the positives, O(P (P + N)).

Here the sums over all positives and negatives are computed exactly as in
:mod:`paploss.losses.ap_loss` (sort + prefix sums; the negatives are never sorted). The sorting
error also needs sums restricted to the positives of lower quality,
``sum_{k: y_k < y_i} H(s_k - s_i) w_k``: a two-dimensional (quality x logit) query per positive,
answered for all positives at once by a wavelet matrix (:func:`_lower_key_sums`): O(P log P) time
and memory, with sort, cumsum, searchsorted and index_select only. One call costs
O((P + M) log P) time and O(P log P + M) memory in total.
"""

import torch

from ._checks import check_ranking_inputs
from .ap_loss import (
    _accumulate_dtype,
    _assemble_gradient,
    _check_delta,
    _prepare_ranking_problem,
    _smoothed_step_sums,
)

__all__ = ["rank_sort_loss"]

# A positive's ranking (sorting) error is distributed only if its smoothed number of false
# positives (of misplaced positives) exceeds this: the published value.
RANK_SORT_EPS = 1e-10


def _sum_in_ranges_below(
    values: torch.Tensor,
    weights: torch.Tensor,
    starts: torch.Tensor,
    ends: torch.Tensor,
    bounds: torch.Tensor,
) -> torch.Tensor:
    """``out[q] = sum of weights[k] over k in [starts[q], ends[q]) with values[k] < bounds[q]``.

    A wavelet matrix over ``values`` (``L`` bits, most significant first): level ``l`` holds the
    sequence stably sorted by its top ``l`` bits read least significant first, i.e. the previous
    level stably partitioned by bit ``l - 1`` (zeros first). A query range is followed down the
    levels into the part that can still hold values below its bound; wherever the bound has a 1
    bit, the range's elements with a 0 bit there are all below the bound and their weights count.
    All level orders come from one batched sort; only the ``L`` range-following steps (one
    ``index_select`` each) are sequential.

    Args:
        values: ``[n]`` int64 in ``[0, n]``.
        weights: ``[n, C]`` floating point.
        starts, ends: ``[Q]`` int64 index ranges into ``values``, ``0 <= start <= end <= n``.
        bounds: ``[Q]`` int64 in ``[0, n]``.

    Returns:
        ``[Q, C]`` in the dtype of ``weights``. O((n + Q) log n) time and memory.
    """
    n = values.shape[0]
    num_queries = bounds.shape[0]
    num_channels = weights.shape[1]
    num_bits = max(n.bit_length(), 1)
    device = values.device
    shifts = torch.arange(num_bits - 1, -1, -1, device=device)  # level l reads bit shifts[l]
    bits = (values.unsqueeze(0) >> shifts.unsqueeze(1)) & 1  # [L, n], original order

    # Sort key of level l: bits of the levels above it, the latest one most significant.
    bit_weights = (1 << torch.arange(num_bits, device=device)).unsqueeze(1)
    level_keys = torch.cat([bits.new_zeros(1, n), torch.cumsum(bits * bit_weights, dim=0)[:-1]])
    level_order = torch.sort(level_keys, dim=1, stable=True).indices  # [L, n]
    # Flat index_select is much faster than gather / advanced indexing here.
    level_rows = torch.arange(num_bits, device=device).unsqueeze(1)
    flat_order = (level_order + level_rows * n).view(-1)
    is_zero = 1 - bits.view(-1).index_select(0, flat_order).view(num_bits, n)  # level order
    zeros_before = torch.cat([bits.new_zeros(num_bits, 1), torch.cumsum(is_zero, dim=1)], dim=1)
    zero_weights = weights.index_select(0, level_order.view(-1)).view(num_bits, n, num_channels)
    zero_weights = zero_weights * is_zero.to(weights.dtype).unsqueeze(2)
    zero_weight_before = torch.cumsum(
        torch.cat([weights.new_zeros(num_bits, 1, num_channels), zero_weights], dim=1), dim=1
    )  # [L, n + 1, C]

    # Range ends move to zeros_before[p] (bound bit 0) or num_zeros + p - zeros_before[p] (bit 1).
    num_zeros = zeros_before[:, -1:]
    positions = torch.arange(n + 1, device=device)
    next_index = torch.cat([zeros_before, num_zeros + positions - zeros_before], dim=1)
    bound_bits = (bounds.unsqueeze(0) >> shifts.unsqueeze(1)) & 1  # [L, Q]
    side_offset = torch.cat([bound_bits, bound_bits], dim=1) * (n + 1)  # [L, 2Q]
    index = torch.cat([ends, starts])  # [2Q]: both ends of every range, followed together
    level_index = []
    for level in range(num_bits):
        level_index.append(index)
        index = next_index[level].index_select(0, side_offset[level] + index)
    level_index = torch.stack(level_index)  # [L, 2Q]

    flat_index = (level_index + level_rows * (n + 1)).view(-1)
    range_zero_weight = zero_weight_before.view(-1, num_channels).index_select(0, flat_index)
    range_zero_weight = range_zero_weight.view(num_bits, 2 * num_queries, num_channels)
    below = range_zero_weight[:, :num_queries] - range_zero_weight[:, num_queries:]
    return (below * bound_bits.to(weights.dtype).unsqueeze(2)).sum(dim=0)


def _lower_key_sums(
    scores: torch.Tensor, keys: torch.Tensor, weights: torch.Tensor, delta: float
) -> torch.Tensor:
    """``out[a] = sum_{p: keys[p] < keys[a]} H(scores[p] - scores[a]) weights[p]`` for every a.

    ``H(x) = clamp(x / (2 delta) + 1/2, 0, 1)`` (the exact step ``x >= 0`` if ``delta == 0``). With
    the points ordered by score, each anchor's sum splits into points with ``H = 1`` (a suffix of
    that order) and points on the linear part of ``H`` (a range), both restricted to keys below
    the anchor's: two range queries of :func:`_sum_in_ranges_below` on the keys' ranks.

    Args:
        scores: ``[n]`` scores (detached).
        keys: ``[n]`` keys compared strictly (ties never count).
        weights: ``[n, C]``.
        delta: half-width of ``H``, ``>= 0``.

    Returns:
        ``[n, C]`` in the dtype of ``weights``.
    """
    n = scores.shape[0]
    acc = _accumulate_dtype(scores.device)
    sorted_keys, key_order = torch.sort(keys, stable=True)
    key_rank = torch.empty_like(key_order)
    key_rank[key_order] = torch.arange(n, device=scores.device)
    num_lower_keys = torch.searchsorted(sorted_keys, keys, right=False)  # points p with key < key a

    sorted_scores, score_order = torch.sort(scores, stable=True)
    scores_acc = scores.to(acc)
    point_weights = weights.to(acc)[score_order]
    if delta > 0:
        # Points with score <= s_a - delta have H = 0, points with score >= s_a + delta have H = 1.
        linear_start = torch.searchsorted(sorted_scores, scores - delta, right=True)
        linear_end = torch.searchsorted(sorted_scores, scores + delta, right=False)
        point_weights = torch.cat(
            [point_weights, point_weights * scores_acc[score_order].unsqueeze(1)], dim=1
        )
    else:
        linear_start = linear_end = torch.searchsorted(sorted_scores, scores, right=False)
    full_end = torch.full_like(linear_end, n)
    sums = _sum_in_ranges_below(
        key_rank[score_order],
        point_weights,
        torch.cat([linear_end, linear_start]),
        torch.cat([full_end, linear_end]),
        torch.cat([num_lower_keys, num_lower_keys]),
    )
    num_channels = weights.shape[1]
    out = sums[:n, :num_channels]  # H = 1 part
    if delta > 0:
        linear_w = sums[n:, :num_channels]
        linear_sw = sums[n:, num_channels:]
        out = out + (linear_sw - scores_acc.unsqueeze(1) * linear_w) / (2 * delta) + linear_w / 2
    return out.to(weights.dtype)


def _rank_sort_loss_and_gradient(
    logits: torch.Tensor, targets: torch.Tensor, quality: torch.Tensor, delta: float
):
    """Returns ``(L_RS, d L_RS / d logits)``; see :func:`rank_sort_loss`."""
    problem = _prepare_ranking_problem(logits, targets, delta)
    if problem is None:
        return logits.new_zeros(()), torch.zeros_like(logits)
    pos_logits = problem.pos_logits
    num_pos = pos_logits.shape[0]
    pos_quality = quality.index_select(0, problem.pos_index).to(pos_logits.dtype)

    # Sums over all positives, self pair included (H(0) = 1/2, or 1 for the exact step):
    # column 0 is rank_pos, column 1 the numerator of the current sorting error.
    pos_weights = torch.stack([torch.ones_like(pos_logits), 1 - pos_quality], dim=1)
    pos_sums = _smoothed_step_sums(pos_logits, problem.sorted_pos, pos_weights, delta)
    # The same over the positives of strictly lower quality only (the missorted ones); the target
    # sorting error uses the complement, the positives with quality >= the anchor's.
    lower_sums = _lower_key_sums(pos_logits, pos_quality, pos_weights, delta)
    num_fp = problem.around_pos.per_positive(problem.is_negative)

    rank_pos = pos_sums[:, 0]
    ranking_error = num_fp / (rank_pos + num_fp)
    current_sorting_error = pos_sums[:, 1] / rank_pos
    target_sorting_error = (pos_sums[:, 1] - lower_sums[:, 1]) / (rank_pos - lower_sums[:, 0])
    sorting_error = current_sorting_error - target_sorting_error

    # Ranking: the positive's error goes to the negatives above it, in proportion to H.
    has_fp = num_fp > RANK_SORT_EPS
    pos_grad = -torch.where(has_fp, ranking_error, 0.0)
    neg_share = torch.where(has_fp, ranking_error / torch.where(has_fp, num_fp, 1.0), 0.0)
    neg_grad = problem.around_pos.per_entry(neg_share)
    # Sorting: the positive's error goes to the lower-quality positives above it: positive k
    # receives sum_{i: y_i > y_k} H(s_k - s_i) share_i, i.e. keys -y and scores -s.
    missorted = lower_sums[:, 0]
    is_missorted = missorted > RANK_SORT_EPS
    pos_grad = pos_grad - torch.where(is_missorted, sorting_error, 0.0)
    sorting_share = torch.where(
        is_missorted, sorting_error / torch.where(is_missorted, missorted, 1.0), 0.0
    )
    pos_grad = pos_grad + _lower_key_sums(
        -pos_logits, -pos_quality, sorting_share.unsqueeze(1), delta
    ).squeeze(1)

    grad = _assemble_gradient(problem, pos_grad / num_pos, neg_grad / num_pos, logits)
    return (ranking_error.mean() + sorting_error.mean()).to(logits.dtype), grad


class _RankSortLoss(torch.autograd.Function):
    """Rank & Sort loss whose forward also computes the identity-update gradient of the logits."""

    @staticmethod
    def forward(
        ctx,
        logits: torch.Tensor,
        targets: torch.Tensor,
        quality: torch.Tensor,
        delta: float,
    ) -> torch.Tensor:
        loss, grad = _rank_sort_loss_and_gradient(logits.detach(), targets, quality, delta)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None, None


def rank_sort_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    quality: torch.Tensor,
    delta: float = 0.5,
) -> torch.Tensor:
    """Rank & Sort loss ``L_RS`` with its identity-update gradient.

    For a positive ``i`` with quality ``y_i``, ``H(x) = clamp(x / (2 delta) + 1/2, 0, 1)`` and all
    sums including ``k = i`` (``H(0) = 1/2``; 1 for the exact step when ``delta == 0``, matching
    the published code):

    * ``rank_pos(i) = sum_{k in P} H(s_k - s_i)``, ``N_FP(i) = sum_{j in N} H(s_j - s_i)``;
    * ranking error ``l_R(i) = N_FP(i) / (rank_pos(i) + N_FP(i))``;
    * sorting error ``l_S(i) - l_S*(i)`` with
      ``l_S(i) = sum_{k in P} H(s_k - s_i) (1 - y_k) / rank_pos(i)`` and ``l_S*(i)`` the same
      over the positives with ``y_k >= y_i``, normalised by their own sum of ``H``.

    Args:
        logits: ``[M]`` classification logits, one per (anchor or RoI, class) pair.
        targets: ``[M]`` in {1, 0, -1}: positive, negative, ignored (ignored entries take part in
            nothing and get a zero gradient).
        quality: ``[M]`` continuous labels in [0, 1], read where ``targets == 1`` (the IoU of the
            detached predicted box with its ground truth). Receives no gradient.
        delta: half-width of the smoothed step, ``>= 0`` (0: exact step).

    Returns:
        Scalar ``L_RS = mean_i (l_R(i) + l_S(i) - l_S*(i))`` (zero without positives). Its
        backward gives the identity update: a positive ``i`` with ``N_FP(i) > 1e-10`` passes
        ``-l_R(i) / |P|`` onto the negatives ``j`` in proportion to ``H(s_j - s_i) / N_FP(i)``;
        with lower-quality positives above it (``sum_{k: y_k < y_i} H(s_k - s_i) > 1e-10``) it
        passes its sorting error onto those in the same way. Exactly the values of
        :func:`~paploss.losses.ranking_reference.rank_sort_loss_reference`, in
        O((P + M) log P) time.

    Raises:
        ValueError: on malformed inputs, naming the argument.
    """
    check_ranking_inputs(logits, targets, quality, "quality")
    delta = _check_delta(delta, allow_zero=True)
    return _RankSortLoss.apply(logits, targets, quality.detach().to(logits.dtype), delta)
