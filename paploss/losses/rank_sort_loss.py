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
answered for all positives at once by a wavelet matrix (:class:`_KeyRestrictedStepSums`):
O(P log P) time and memory, with sort, cumsum, searchsorted and index_select only. One call costs
O((P + M) log P) time and O(P log P + M) memory in total.

That is the CPU way, with the positives gathered. On accelerators (fixed shapes, no host
synchronisation; see :mod:`paploss.losses.ap_loss`) every entry is an anchor with the positives as
a mask, and the wavelet matrix holds all ``M`` entries (the others with weight 0) and keeps every
(level, query) pair of its queries instead of gathering those that count: O(M log M) time and
memory.
"""

from typing import NamedTuple, Optional

import torch

from ._checks import check_ranking_inputs
from .ap_loss import _accumulate_dtype, _check_delta, _prepare_ranking_problem

__all__ = ["rank_sort_loss"]

# A positive's ranking (sorting) error is distributed only if its smoothed number of false
# positives (of misplaced positives) exceeds this: the published value.
RANK_SORT_EPS = 1e-10


class _WaveletMatrix:
    """Sums of weights over index ranges of a sequence, restricted to values below a bound.

    For ``values [n]`` in ``[0, n)`` (``L`` bits, most significant first), level ``l`` holds the
    sequence stably sorted by its top ``l`` bits read least significant first, i.e. the previous
    level stably partitioned by bit ``l - 1`` (zeros first). A query range is followed down the
    levels into the part that can still hold values below its bound; wherever the bound has a 1
    bit, the range's elements with a 0 bit there are all below the bound and their weights count.

    All level orders come from one batched sort. Following the ranges (:meth:`follow`, ``L``
    sequential ``index_select`` steps) does not depend on the weights, so followed queries serve
    any number of weightings (:meth:`sums`). O((n + Q) log n) time and memory.
    """

    def __init__(self, values: torch.Tensor):
        """
        Args:
            values: ``[n]`` int64 in ``[0, n)``, ``n >= 1``.
        """
        n = values.shape[0]
        device = values.device
        self.size = n
        self.num_bits = max(n.bit_length(), 1)
        self.shifts = torch.arange(self.num_bits - 1, -1, -1, device=device)  # bit read at level l
        bits = (values.unsqueeze(0) >> self.shifts.unsqueeze(1)) & 1  # [L, n], original order
        # Sort key of level l: the bits of the levels above it, the latest one most significant.
        bit_weights = (1 << torch.arange(self.num_bits, device=device)).unsqueeze(1)
        level_keys = torch.cat([bits.new_zeros(1, n), torch.cumsum(bits * bit_weights, 0)[:-1]])
        self.level_order = torch.sort(level_keys, dim=1, stable=True).indices  # [L, n]
        # Flat index_select is much faster than gather or advanced indexing here.
        self.level_rows = torch.arange(self.num_bits, device=device).unsqueeze(1)
        flat_order = (self.level_order + self.level_rows * n).view(-1)
        self.is_zero = 1 - bits.view(-1).index_select(0, flat_order).view(self.num_bits, n)
        zeros_before = torch.cat(
            [bits.new_zeros(self.num_bits, 1), torch.cumsum(self.is_zero, dim=1)], dim=1
        )  # [L, n + 1]
        # A range end at p moves to zeros_before[p] when it follows the zeros (bound bit 0), to
        # num_zeros + p - zeros_before[p] when it follows the ones (bound bit 1).
        num_zeros = zeros_before[:, -1:]
        positions = torch.arange(n + 1, device=device)
        self.next_index = torch.cat([zeros_before, num_zeros + positions - zeros_before], dim=1)

    def follow(
        self,
        starts: torch.Tensor,
        ends: torch.Tensor,
        bounds: torch.Tensor,
        fixed_shapes: bool = False,
    ) -> "_FollowedQueries":
        """Follow the query ranges ``[starts, ends)`` (``[Q]`` each) with ``bounds`` (``[Q]`` in
        ``[0, n]``) down the levels, for :meth:`sums`.

        Only the (level, query) pairs whose bound bit is 1 add to the sums: they are gathered with
        ``nonzero``, or with ``fixed_shapes`` every pair is kept and the others weighted 0 (twice
        the work at most, but no shape depends on the data)."""
        bound_bits = (bounds.unsqueeze(0) >> self.shifts.unsqueeze(1)) & 1  # [L, Q]
        side_offset = torch.cat([bound_bits, bound_bits], dim=1) * (self.size + 1)
        index = torch.cat([ends, starts])  # both ends of every range, followed together
        level_index = []
        for level in range(self.num_bits):
            level_index.append(index)
            index = self.next_index[level].index_select(0, side_offset[level] + index)
        # Only (level, query) pairs whose bound bit is 1 add anything: keep those, with their
        # range ends as flat indices into the per-level prefix sums.
        num_queries = bounds.shape[0]
        flat_index = torch.stack(level_index) + self.level_rows * (self.size + 1)  # [L, 2Q]
        if fixed_shapes:
            return _FollowedQueries(
                flat_index[:, :num_queries].reshape(-1),
                flat_index[:, num_queries:].reshape(-1),
                torch.arange(num_queries, device=bounds.device).repeat(self.num_bits),
                num_queries,
                bound_bits.view(-1),
            )
        flat_index = flat_index.view(-1)
        level, query = torch.nonzero(bound_bits, as_tuple=True)
        end_position = level * (2 * num_queries) + query  # into the flattened [L, 2Q]
        return _FollowedQueries(
            flat_index.index_select(0, end_position),
            flat_index.index_select(0, end_position + num_queries),
            query,
            num_queries,
        )

    def sums(self, weights: torch.Tensor, followed: "_FollowedQueries") -> torch.Tensor:
        """``out[q] = sum of weights[k], k in [starts[q], ends[q]), values[k] < bounds[q]``.

        Args:
            weights: ``[n, C]`` floating point, in the order of ``values``.
            followed: what :meth:`follow` returned for the queries.

        Returns:
            ``[Q, C]`` in the dtype of ``weights``.
        """
        num_channels = weights.shape[1]
        zero_weights = weights.index_select(0, self.level_order.view(-1))
        zero_weights = zero_weights.view(self.num_bits, self.size, num_channels)
        zero_weights = zero_weights * self.is_zero.to(weights.dtype).unsqueeze(2)
        zero_weight_before = torch.cumsum(
            torch.cat([weights.new_zeros(self.num_bits, 1, num_channels), zero_weights], dim=1),
            dim=1,
        ).view(
            -1, num_channels
        )  # [L * (n + 1), C]
        below = zero_weight_before.index_select(0, followed.end_index)
        below -= zero_weight_before.index_select(0, followed.start_index)
        if followed.bound_bit is not None:
            below *= followed.bound_bit.to(below.dtype).unsqueeze(1)
        out = weights.new_zeros(followed.num_queries, num_channels)
        return out.index_add_(0, followed.query, below)


class _FollowedQueries(NamedTuple):
    """Range queries of a :class:`_WaveletMatrix`, followed down its levels.

    Attributes:
        end_index, start_index: ``[K]`` flat indices of the range ends in the ``[L * (n + 1)]``
            per-level prefix sums, one pair per (level, query) where the bound's bit is 1, or per
            (level, query) with fixed shapes (``K = L Q``).
        query: ``[K]`` the query of each pair.
        num_queries: ``Q``.
        bound_bit: with fixed shapes, ``[K]`` the bound's bit of each pair (the pairs with a 0
            count nothing); ``None`` when only the pairs with a 1 are kept.
    """

    end_index: torch.Tensor
    start_index: torch.Tensor
    query: torch.Tensor
    num_queries: int
    bound_bit: Optional[torch.Tensor] = None


class _KeyRestrictedStepSums:
    """Sums of ``H`` between points restricted by a strict key order (the sorting error of RS).

    For scores ``s [n]`` and keys ``y [n]``, with ``H(x) = clamp(x / (2 delta) + 1/2, 0, 1)``
    (the exact step ``x >= 0`` when ``delta == 0``):

    * :meth:`below`: ``out[a] = sum_{p: y_p < y_a} H(s_p - s_a) w_p``;
    * :meth:`above`: ``out[a] = sum_{p: y_p > y_a} H(s_a - s_p) w_p``.

    With the points ordered by score, each sum splits into points where ``H`` is 1 and points on
    its linear part, two index ranges of that order; the key restriction is a bound on the keys'
    ranks. Both are range queries of one :class:`_WaveletMatrix`, followed once for both sums:
    O(n log n) time and memory. Accumulation is in float64.
    """

    def __init__(
        self, scores: torch.Tensor, keys: torch.Tensor, delta: float, fixed_shapes: bool = False
    ):
        """
        Args:
            scores: ``[n]`` scores, ``n >= 1``.
            keys: ``[n]`` keys (ties never count).
            delta: half-width of ``H``, ``>= 0``.
            fixed_shapes: keep every shape independent of the data (:meth:`_WaveletMatrix.follow`).
        """
        n = scores.shape[0]
        acc = _accumulate_dtype(scores.device)
        self.size = n
        self.inverse_width = 1 / (2 * delta) if delta > 0 else 0.0
        self.scores = scores.detach().to(acc)
        sorted_scores, self.score_order = torch.sort(self.scores, stable=True)
        self.sorted_scores = sorted_scores
        sorted_keys, key_order = torch.sort(keys.detach(), stable=True)
        key_rank = torch.empty_like(key_order)
        key_rank[key_order] = torch.arange(n, device=scores.device)
        num_keys_below = torch.searchsorted(sorted_keys, keys, right=False)
        num_keys_at_most = torch.searchsorted(sorted_keys, keys, right=True)

        # Score-order ranges: [0, low) has s_p <= s_a - delta, [low, high) the linear part of H,
        # [high, n) has s_p >= s_a + delta. For the exact step, H(s_p - s_a) = 1 from the first
        # s_p >= s_a on, H(s_a - s_p) = 1 up to the last s_p <= s_a.
        if delta > 0:
            low = torch.searchsorted(sorted_scores, self.scores - delta, right=True)
            high = torch.searchsorted(sorted_scores, self.scores + delta, right=False)
            low_below, high_below = low, high
            low_above, high_above = low, high
        else:
            low_below = high_below = torch.searchsorted(sorted_scores, self.scores, right=False)
            low_above = high_above = torch.searchsorted(sorted_scores, self.scores, right=True)
        self.low_above, self.high_above = low_above, high_above
        zero = torch.zeros_like(low_above)
        full = torch.full_like(low_above, n)
        self.wavelet = _WaveletMatrix(key_rank[self.score_order])
        # below(): ranges where H = 1 and the linear part, keys strictly below the anchor's.
        self.followed_below = self.wavelet.follow(
            torch.cat([high_below, low_below]),
            torch.cat([full, high_below]),
            torch.cat([num_keys_below, num_keys_below]),
            fixed_shapes,
        )
        # above(): the same ranges for H(s_a - s_p); the wavelet sums keys <= the anchor's, the
        # complement of what above() wants.
        self.followed_at_most = self.wavelet.follow(
            torch.cat([zero, low_above]),
            torch.cat([low_above, high_above]),
            torch.cat([num_keys_at_most, num_keys_at_most]),
            fixed_shapes,
        )

    def _score_order_channels(self, weights: torch.Tensor) -> torch.Tensor:
        """``[w, w * s]`` in score order, ``[n, 2C]``."""
        w = weights.to(self.scores.dtype).index_select(0, self.score_order)
        return torch.cat([w, w * self.sorted_scores.unsqueeze(1)], dim=1)

    def below(self, weights: torch.Tensor) -> torch.Tensor:
        """``out[a] = sum_{p: y_p < y_a} H(s_p - s_a) w_p`` for ``weights [n, C]`` -> ``[n, C]``."""
        n, num_channels = self.size, weights.shape[1]
        sums = self.wavelet.sums(self._score_order_channels(weights), self.followed_below)
        linear_w, linear_sw = sums[n:, :num_channels], sums[n:, num_channels:]
        s = self.scores.unsqueeze(1)
        return (
            sums[:n, :num_channels] + (linear_sw - s * linear_w) * self.inverse_width + linear_w / 2
        )

    def above(self, weights: torch.Tensor) -> torch.Tensor:
        """``out[a] = sum_{p: y_p > y_a} H(s_a - s_p) w_p`` for ``weights [n, C]`` -> ``[n, C]``."""
        n, num_channels = self.size, weights.shape[1]
        channels = self._score_order_channels(weights)
        sums_at_most = self.wavelet.sums(channels, self.followed_at_most)
        # Key ranks >= the bound: the range's total minus the wavelet sum.
        prefix = torch.cat([channels.new_zeros(1, channels.shape[1]), torch.cumsum(channels, 0)])
        totals = torch.cat(
            [
                prefix[self.low_above] - prefix[0],
                prefix[self.high_above] - prefix[self.low_above],
            ]
        )
        sums = totals - sums_at_most
        linear_w, linear_sw = sums[n:, :num_channels], sums[n:, num_channels:]
        s = self.scores.unsqueeze(1)
        return (
            sums[:n, :num_channels] + (s * linear_w - linear_sw) * self.inverse_width + linear_w / 2
        )


def _rank_sort_loss_and_gradient(
    logits: torch.Tensor, targets: torch.Tensor, quality: torch.Tensor, delta: float
):
    """Returns ``(L_RS, d L_RS / d logits)``; see :func:`rank_sort_loss`."""
    problem = _prepare_ranking_problem(logits, targets, delta)
    if problem is None:
        return logits.new_zeros(()), torch.zeros_like(logits)
    anchor_logits = problem.logits  # [A]
    pos_quality = problem.at(quality).to(anchor_logits.dtype)

    # Sums over all positives, self pair included (H(0) = 1/2, or 1 for the exact step):
    # column 0 is rank_pos, column 1 the numerator of the current sorting error.
    pos_weights = problem.keep(torch.stack([torch.ones_like(anchor_logits), 1 - pos_quality], 1))
    pos_sums = problem.positive_sums(pos_weights)
    # The same over the positives of strictly lower quality only (the missorted ones); the target
    # sorting error uses the complement, the positives with quality >= the anchor's.
    by_quality = _KeyRestrictedStepSums(
        anchor_logits,
        problem.keep(pos_quality),
        delta,
        fixed_shapes=problem.fixed_shapes,
    )
    lower_sums = by_quality.below(pos_weights)
    num_fp = problem.false_positives()

    rank_pos = pos_sums[:, 0]
    ranking_error = num_fp / (rank_pos + num_fp)
    current_sorting_error = pos_sums[:, 1] / rank_pos
    target_sorting_error = (pos_sums[:, 1] - lower_sums[:, 1]) / (rank_pos - lower_sums[:, 0])
    sorting_error = current_sorting_error - target_sorting_error

    # Ranking: the positive's error goes to the negatives above it, in proportion to H.
    has_fp = num_fp > RANK_SORT_EPS
    pos_grad = -torch.where(has_fp, ranking_error, 0.0)
    neg_share = torch.where(has_fp, ranking_error / torch.where(has_fp, num_fp, 1.0), 0.0)
    neg_grad = problem.per_negative(neg_share)
    # Sorting: the positive's error goes to the lower-quality positives above it: positive k
    # receives sum_{i: y_i > y_k} H(s_k - s_i) share_i.
    missorted = lower_sums[:, 0]
    is_missorted = missorted > RANK_SORT_EPS
    pos_grad = pos_grad - torch.where(is_missorted, sorting_error, 0.0)
    sorting_share = torch.where(
        is_missorted, sorting_error / torch.where(is_missorted, missorted, 1.0), 0.0
    )
    pos_grad = pos_grad + by_quality.above(problem.keep(sorting_share).unsqueeze(1)).squeeze(1)

    grad = problem.gradient(pos_grad / problem.normalizer, neg_grad / problem.normalizer, logits)
    loss = problem.mean(ranking_error) + problem.mean(sorting_error)
    return loss.to(logits.dtype), grad


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
        passes its sorting error onto those in the same way. Values and gradients equal those of
        :func:`~paploss.losses.ranking_reference.rank_sort_loss_reference` up to rounding; the
        cost is O((P + M) log P) time and O(P log P + M) memory for ``M`` entries on the CPU,
        O(M log M) time and memory without host synchronisation elsewhere.

    Raises:
        ValueError: on malformed inputs, naming the argument.
    """
    check_ranking_inputs(logits, targets, quality, "quality")
    delta = _check_delta(delta, allow_zero=True)
    return _RankSortLoss.apply(logits, targets, quality.detach().to(logits.dtype), delta)
