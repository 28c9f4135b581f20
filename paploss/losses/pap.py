"""The Unified Parameterized AP loss (PAP loss).

Over the flattened (anchor or RoI, class) entries of a batch, with logits ``s``, targets ``t`` in
{1, 0, -1} and qualities ``u`` (positives' localisation quality in [0, 1], 0 elsewhere), P the
positives, V the non-ignored entries and ``x_ij = clamp((s_j - s_i) / 2 + 1/2, 0, 1)``:

    L = 1/|P| sum_{i in P} [ (1 - I1(u_i)) + I3(u_i) * R_i ],
    R_i = sum_{j in V} H2(x_ij) (1 - I2(u_j)) / sum_{j in V} sg(H1(x_ij)),

``sg`` = stop-gradient. The sums include ``j = i`` (``x_ii = 1/2``). Logits get gradient
only through H2, qualities through I1, I2 and I3. With exact steps for H1/H2 (1/2 at 0) and
identities for I1/I2/I3, ``L = 1 - AP_w`` (quality-weighted AP).

**Top-k truncation** (``topk = N > 0``, the published implementation's ``num_topk``, 100,000
there): the j-sums of ``R_i`` run over the N largest valid logits only (:func:`topk_valid_mask`),
while every positive is still an ``i`` of the outer sum (its ``I1`` and ``I3`` terms count whether
or not it is among the N; its self pair is in its sums only if it is). Entries outside the top N
get no gradient through the j-sums. ``topk = 0`` (default), or ``N`` at least the number of valid
entries, is the exact loss over all valid entries.

Implementations:

* :func:`pap_loss` / :func:`pap_loss_components`: exact and fast. ``sum_j H(x_ij) w_j`` is computed
  for all anchors ``i`` at once by sorting the logits and using prefix sums
  (:mod:`paploss.losses.pairwise`), with a hand-derived backward. No truncation.
* :func:`pap_loss_dense` / :func:`pap_loss_dense_components`: the readable reference with
  ``[P, M]`` tensors (``[P, N]`` when truncated) and plain autograd, for tests and benchmarks.

Both share everything except how the numerators and denominators of ``R_i`` are computed (the fast
one keeps all entries in its sorted list and zeroes the weights of entries outside the j-sums; the
dense one gathers the entries of the j-sums as columns). Top-k costs one more O(M log M) sort.

**Anchors: gathered positives on the CPU, every entry elsewhere.** Which entries are the anchors
``i`` of the fast sums depends on the device of the logits
(:func:`paploss.losses._devices.needs_fixed_shapes`, shared with the AP, aLRP and RS losses):

* CPU tensors: the ``P`` positives, gathered with ``nonzero``. O(M log M + P K log M) time and
  O(M + P K) memory for ``K`` knots. Reading the positives' positions costs nothing on the CPU.
* Other devices (accelerators): every entry is an anchor and the non-positives are masked out, so
  that no shape depends on the data and the host never waits for the device (``nonzero`` would
  make it wait for the number of positives). O(M K log M) time, O(M K) memory: the searches of
  the ``M K`` thresholds and the backward's ``M K`` scatter dominate.

On the CPU the fixed-shape way was 4-28x slower (forward + backward, published RetinaNet
functions, P = 1000, one thread: 34 ms vs 8 ms at M = 1e3, 2.3 s vs 0.25 s at M = 1e5, 70 s vs
2.5 s at M = 1e6, with 3.5x the peak memory), and every CPU training would pay that. On an
accelerator the fixed shapes are kept so that the host can queue the whole step without waiting
(the two ways have not been timed against each other there). Both ways give the same values and
gradients (the extra anchors only add zeros; tested to 1e-12);
:data:`paploss.losses._devices.INDEXED_DEVICES` lets tests run the fixed-shape way on the CPU.
"""

from typing import Callable, NamedTuple, Optional, Tuple

import torch

from ._checks import check_ranking_inputs
from ._devices import needs_fixed_shapes
from .functions import PAPFunctions
from .pairwise import gap_sum, pairwise_gap_sum, piecewise_linear, sort_scores

__all__ = [
    "PAPLossComponents",
    "pap_loss",
    "pap_loss_components",
    "pap_loss_dense",
    "pap_loss_dense_components",
    "topk_valid_mask",
]

#: Added to |P| in the normalisation, as in the published code.
NORMALIZER_EPS = 1e-8
#: Lower bound of the H1 sums (only reached by degenerate H1 with H1(1/2) = 0).
RANK_EPS = 1e-12


class PAPLossComponents(NamedTuple):
    """The PAP loss and its parts (scalar tensors).

    Attributes:
        loss: ``localization + ranking``.
        localization: ``1/|P| sum_i (1 - I1(u_i))``.
        ranking: ``1/|P| sum_i I3(u_i) R_i``.
        num_positives: ``|P|``, an int64 scalar tensor (reading it on the host synchronises).
        precision_error: ``1/|P| sum_i R_i``, detached: the positives' mean precision error. A
            diagnosis, not part of the loss: with identity functions a positive's box gradient
            is ``1 - R_i``, so while it is near 1 the box branch learns next to nothing.
    """

    loss: torch.Tensor
    localization: torch.Tensor
    ranking: torch.Tensor
    num_positives: torch.Tensor
    precision_error: torch.Tensor


class _Anchors(NamedTuple):
    """The anchors ``i`` of the ratio sums, ``A`` of them.

    Either the positives, gathered by ``index`` (``[P]``, A = P), or every entry (``index`` is
    ``None``, A = M), with ``is_positive`` (``[M]``) marking the positives among them.
    """

    index: Optional[torch.Tensor]
    is_positive: torch.Tensor

    def at(self, values: torch.Tensor) -> torch.Tensor:
        """``[M]`` values -> ``[A]``, their values at the anchors."""
        return values if self.index is None else values[self.index]

    def keep(self, values: torch.Tensor) -> torch.Tensor:
        """``[A]`` values at the anchors, zeroed at the anchors that are not positives."""
        return torch.where(self.is_positive, values, 0.0) if self.index is None else values

    def put(self, base: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``[M]`` ``base`` with the positives' entries replaced by their ``[A]`` ``values``."""
        if self.index is None:
            return torch.where(self.is_positive, values, base)
        return base.index_put((self.index,), values)

    def positions(self) -> torch.Tensor:
        """``[P]`` positions of the positives (a data-dependent shape when ``index`` is None)."""
        if self.index is None:
            return torch.nonzero(self.is_positive, as_tuple=True)[0]
        return self.index


def _anchors(is_positive: torch.Tensor) -> _Anchors:
    if needs_fixed_shapes(is_positive.device):
        return _Anchors(None, is_positive)
    return _Anchors(torch.nonzero(is_positive, as_tuple=True)[0], is_positive)


# (logits [M], in_sums [M] bool, anchors, weights [M], functions) -> (numerators [A],
# denominators [A]) at the anchors (only the positives' are used); the j-sums run over the entries
# with in_sums True and weights are 0 elsewhere.
RatioTerms = Callable[
    [torch.Tensor, torch.Tensor, _Anchors, torch.Tensor, PAPFunctions],
    Tuple[torch.Tensor, torch.Tensor],
]


def _check_topk(topk) -> None:
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 0:
        raise ValueError(f"topk must be an integer >= 0 (0: no truncation), got {topk!r}")


def topk_valid_mask(logits: torch.Tensor, valid: torch.Tensor, topk: int) -> torch.Tensor:
    """The entries of the top-k truncation: the ``topk`` largest valid logits.

    Ties at the boundary are broken deterministically by position: among equal logits the entry
    with the lower index in the flattened ``[M]`` list is taken first (a stable descending sort),
    so the result never depends on the device or on ``torch.topk``'s unspecified tie order.
    O(M log M), with fixed shapes only (no host synchronisation): the ignored entries are sorted
    below every valid one and dropped again after the cut.

    Args:
        logits: ``[M]`` finite logits.
        valid: ``[M]`` bool, the non-ignored entries.
        topk: ``N >= 0``; 0 keeps every valid entry.

    Returns:
        ``[M]`` bool: ``valid`` itself when ``topk`` is 0 or at least the number of valid entries,
        otherwise exactly ``topk`` valid entries.
    """
    _check_topk(topk)
    if topk == 0 or topk >= valid.shape[0]:
        return valid
    keys = torch.where(valid, logits.detach(), float("-inf"))
    order = torch.sort(keys, descending=True, stable=True).indices
    return torch.zeros_like(valid).index_fill_(0, order[:topk], True) & valid


def _fast_ratio_terms(logits, in_sums, anchors, weights, functions):
    """Numerators ``sum_j H2(x_ij) w_j`` (differentiable) and ``sum_j H1(x_ij)`` over ``in_sums``
    at the anchors ``i``.

    Entries outside the j-sums (ignored, or beyond the top-k) stay in the sorted list with weight
    0 (no compaction needed).
    """
    sorted_scores = sort_scores(logits)
    anchor_logits = anchors.at(logits)
    h2_x, h2_y = functions["H2"].gap_knots()
    numerators = gap_sum(anchor_logits, logits, weights, h2_x, h2_y, sorted_scores=sorted_scores)
    h1_x, h1_y = functions["H1"].gap_knots()
    # Without ignored or truncated entries the H1 sums count every entry (no weights to gather);
    # knowing that reads a value, which only the CPU way may do.
    all_in_sums = anchors.index is not None and bool(in_sums.all())
    counts = None if all_in_sums else in_sums.to(logits.dtype)
    denominators = pairwise_gap_sum(anchor_logits.detach(), sorted_scores, counts, h1_x, h1_y)
    return numerators, denominators


def _dense_ratio_terms(logits, in_sums, anchors, weights, functions):
    """Same as :func:`_fast_ratio_terms` with explicit ``[P, N]`` matrices between the ``P``
    positives and the ``N`` entries of the j-sums (gathered as columns, as the published
    implementation does); 0 at the anchors that are not positives. A reference: its shapes depend
    on the data."""
    rows = anchors.positions()  # [P]
    columns = torch.nonzero(in_sums, as_tuple=True)[0]  # [N]
    gaps = logits[columns][None, :] - logits[rows][:, None]  # [P, N], s_j - s_i
    # H(x) with x = gap / 2 + 1/2, evaluated as a function of the gap (same knots and derivative
    # convention as the fast sums; see paploss.losses.pairwise).
    h2 = piecewise_linear(gaps, *functions["H2"].gap_knots())
    h1 = piecewise_linear(gaps.detach(), *functions["H1"].gap_knots())
    numerators = (h2 * weights[columns][None, :]).sum(dim=1)
    denominators = h1.sum(dim=1)
    if anchors.index is not None:
        return numerators, denominators
    scatter = torch.zeros_like(logits).index_put
    return scatter((rows,), numerators), scatter((rows,), denominators)


def _components(logits, targets, quality, functions, topk, ratio_terms: RatioTerms):
    check_ranking_inputs(logits, targets, quality, per_positive_name="quality")
    if not isinstance(functions, PAPFunctions):
        raise ValueError(f"functions must be a PAPFunctions, got {type(functions).__name__}")
    _check_topk(topk)
    # The number of positives is a tensor and, off the CPU, the positives are a mask (every entry
    # an anchor), so that nothing waits for the device. Without positives every part is 0 with a
    # zero gradient.
    is_positive = targets == 1  # [M]
    num_positives = is_positive.sum()
    anchors = _anchors(is_positive)
    # Qualities are read only at positives (u = 0 elsewhere, so 1 - I2(u) = 1 at negatives).
    u = anchors.keep(anchors.at(quality).to(logits.dtype))  # [A]
    in_sums = topk_valid_mask(logits, targets != -1, topk)  # [M], the entries j of the sums
    positive_weights = (1 - functions["I2"](u)) * anchors.at(in_sums)  # [A]
    weights = anchors.put(in_sums.to(logits.dtype), positive_weights)  # [M]
    numerators, denominators = ratio_terms(logits, in_sums, anchors, weights, functions)
    ratios = numerators / denominators.clamp_min(RANK_EPS)  # R_i, [A], used at positives only
    normalizer = num_positives.to(logits.dtype) + NORMALIZER_EPS
    localization = anchors.keep(1 - functions["I1"](u)).sum() / normalizer
    ranking = anchors.keep(functions["I3"](u) * ratios).sum() / normalizer
    precision_error = anchors.keep(ratios.detach()).sum() / num_positives.clamp_min(1)
    return PAPLossComponents(
        localization + ranking, localization, ranking, num_positives, precision_error
    )


def pap_loss_components(
    logits: torch.Tensor,
    targets: torch.Tensor,
    quality: torch.Tensor,
    functions: PAPFunctions,
    topk: int = 0,
) -> PAPLossComponents:
    """The PAP loss and its parts, exact fast implementation.

    By default all non-ignored entries enter every sum; ``topk > 0`` gives the published top-k
    truncation (module docstring). Time O(M log M + P K log M), memory O(M + P K) in forward and
    backward for CPU tensors, ``K`` knots; on other devices O(M K log M) and O(M K), with no host
    synchronisation (module docstring). The H1 sums are
    floored at ``RANK_EPS`` (1e-12), which only matters for an H1 with H1(1/2) = 0; the
    normaliser is ``|P| + 1e-8``.

    Args:
        logits: ``[M]`` float logits of all (anchor or RoI, class) entries.
        targets: ``[M]`` in {1, 0, -1}: positive (the anchor's own class), negative, ignored.
        quality: ``[M]`` in [0, 1], read only where ``targets == 1`` (e.g. ``(GIoU + 1) / 2`` of
            the predicted box). Apply :func:`paploss.losses.scale_grad` to it first to scale the
            box-branch gradient.
        functions: the head's :class:`PAPFunctions`.
        topk: ``N >= 0``: the j-sums run over the N largest valid logits only (ties broken by
            lower index, :func:`topk_valid_mask`); 0 (default): over all valid entries.

    Returns:
        :class:`PAPLossComponents`. Without positives all parts are 0 (with a zero gradient).

    Raises:
        ValueError: naming the argument on bad shapes, targets, qualities, non-finite logits, a
            negative or non-integer ``topk``, or if ``functions`` is not a :class:`PAPFunctions`.
    """
    return _components(logits, targets, quality, functions, topk, _fast_ratio_terms)


def pap_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    quality: torch.Tensor,
    functions: PAPFunctions,
    topk: int = 0,
) -> torch.Tensor:
    """The PAP loss (scalar tensor); see :func:`pap_loss_components` for the arguments."""
    return pap_loss_components(logits, targets, quality, functions, topk).loss


def pap_loss_dense_components(
    logits: torch.Tensor,
    targets: torch.Tensor,
    quality: torch.Tensor,
    functions: PAPFunctions,
    topk: int = 0,
) -> PAPLossComponents:
    """Reference implementation of :func:`pap_loss_components` with ``[P, M]`` tensors.

    Same arguments and result; memory grows with ``P * M`` (``P * topk`` when truncated), use it
    for tests and benchmarks.
    """
    return _components(logits, targets, quality, functions, topk, _dense_ratio_terms)


def pap_loss_dense(
    logits: torch.Tensor,
    targets: torch.Tensor,
    quality: torch.Tensor,
    functions: PAPFunctions,
    topk: int = 0,
) -> torch.Tensor:
    """Reference implementation of :func:`pap_loss` with ``[P, M]`` tensors."""
    return pap_loss_dense_components(logits, targets, quality, functions, topk).loss
