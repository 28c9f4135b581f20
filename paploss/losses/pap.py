"""The Unified Parameterized AP loss (PAP loss).

Over the flattened (anchor or RoI, class) entries of a batch, with logits ``s``, targets ``t`` in
{1, 0, -1} and qualities ``u`` (positives' localisation quality in [0, 1], 0 elsewhere), P the
positives, V the non-ignored entries and ``x_ij = clamp((s_j - s_i) / 2 + 1/2, 0, 1)``:

    L = 1/|P| sum_{i in P} [ (1 - I1(u_i)) + I3(u_i) * R_i ],
    R_i = sum_{j in V} H2(x_ij) (1 - I2(u_j)) / sum_{j in V} sg(H1(x_ij)),

``sg`` = stop-gradient. The sums include ``j = i`` (``x_ii = 1/2``). Logits get gradient
only through H2, qualities through I1, I2 and I3. With exact steps for H1/H2 (1/2 at 0) and
identities for I1/I2/I3, ``L = 1 - AP_w`` (quality-weighted AP).

Implementations:

* :func:`pap_loss` / :func:`pap_loss_components`: exact and fast. ``sum_j H(x_ij) w_j`` is computed
  for all positives at once by sorting the logits and using prefix sums
  (:mod:`paploss.losses.pairwise`), with a hand-derived backward. O((M + P) log M) time,
  O(M + P) memory, no truncation.
* :func:`pap_loss_dense` / :func:`pap_loss_dense_components`: the readable reference with
  ``[P, M]`` tensors and plain autograd, for tests and benchmarks.

Both share everything except how the numerators and denominators of ``R_i`` are computed.
"""

from typing import Callable, NamedTuple, Tuple

import torch

from ._checks import check_ranking_inputs
from .functions import PAPFunctions
from .pairwise import gap_sum, pairwise_gap_sum, piecewise_linear, sort_scores

__all__ = [
    "PAPLossComponents",
    "pap_loss",
    "pap_loss_components",
    "pap_loss_dense",
    "pap_loss_dense_components",
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
        num_positives: ``|P|``.
    """

    loss: torch.Tensor
    localization: torch.Tensor
    ranking: torch.Tensor
    num_positives: int


# (logits [M], valid [M] bool, positive_index [P], weights [M], functions)
#     -> (numerators [P], denominators [P])
RatioTerms = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, PAPFunctions],
    Tuple[torch.Tensor, torch.Tensor],
]


def _fast_ratio_terms(logits, valid, positive_index, weights, functions):
    """Numerators ``sum_{j in V} H2(x_ij) w_j`` (differentiable) and ``sum_{j in V} H1(x_ij)``.

    Ignored entries stay in the sorted list with weight 0 (no compaction needed).
    """
    sorted_scores = sort_scores(logits)
    anchors = logits[positive_index]
    h2_x, h2_y = functions["H2"].gap_knots()
    numerators = gap_sum(anchors, logits, weights, h2_x, h2_y, sorted_scores=sorted_scores)
    h1_x, h1_y = functions["H1"].gap_knots()
    counts = None if bool(valid.all()) else valid.to(logits.dtype)
    denominators = pairwise_gap_sum(anchors.detach(), sorted_scores, counts, h1_x, h1_y)
    return numerators, denominators


def _dense_ratio_terms(logits, valid, positive_index, weights, functions):
    """Same as :func:`_fast_ratio_terms` with explicit ``[P, M]`` matrices."""
    gaps = logits[None, :] - logits[positive_index][:, None]  # [P, M], s_j - s_i
    # H(x) with x = gap / 2 + 1/2, evaluated as a function of the gap (same knots and derivative
    # convention as the fast sums; see paploss.losses.pairwise).
    h2 = piecewise_linear(gaps, *functions["H2"].gap_knots())
    h1 = piecewise_linear(gaps.detach(), *functions["H1"].gap_knots())
    numerators = (h2 * weights[None, :]).sum(dim=1)  # weights are 0 at ignored entries
    denominators = (h1 * valid[None, :]).sum(dim=1)
    return numerators, denominators


def _components(logits, targets, quality, functions, ratio_terms: RatioTerms):
    check_ranking_inputs(logits, targets, quality, per_positive_name="quality")
    if not isinstance(functions, PAPFunctions):
        raise ValueError(f"functions must be a PAPFunctions, got {type(functions).__name__}")
    positive_index = torch.nonzero(targets == 1, as_tuple=True)[0]
    num_positives = int(positive_index.numel())
    if num_positives == 0:
        zero = (logits * 0).sum() + (quality[positive_index] * 0).sum().to(logits.dtype)
        return PAPLossComponents(zero, zero, zero, 0)

    # Qualities are read only at positives (u = 0 elsewhere, so 1 - I2(u) = 1 at negatives).
    u = quality[positive_index].to(logits.dtype)  # [P]
    valid = targets != -1
    weights = valid.to(logits.dtype).index_put((positive_index,), 1 - functions["I2"](u))  # [M]
    numerators, denominators = ratio_terms(logits, valid, positive_index, weights, functions)
    ratios = numerators / denominators.clamp_min(RANK_EPS)  # R_i, [P]
    normalizer = num_positives + NORMALIZER_EPS
    localization = (1 - functions["I1"](u)).sum() / normalizer
    ranking = (functions["I3"](u) * ratios).sum() / normalizer
    return PAPLossComponents(localization + ranking, localization, ranking, num_positives)


def pap_loss_components(
    logits: torch.Tensor,
    targets: torch.Tensor,
    quality: torch.Tensor,
    functions: PAPFunctions,
) -> PAPLossComponents:
    """The PAP loss and its parts, exact fast implementation.

    All non-ignored entries enter every sum (no top-k truncation). Time O((M + P) log M), memory
    O(M + P) in forward and backward. The H1 sums are floored at ``RANK_EPS`` (1e-12), which only
    matters for an H1 with H1(1/2) = 0; the normaliser is ``|P| + 1e-8``.

    Args:
        logits: ``[M]`` float logits of all (anchor or RoI, class) entries.
        targets: ``[M]`` in {1, 0, -1}: positive (the anchor's own class), negative, ignored.
        quality: ``[M]`` in [0, 1], read only where ``targets == 1`` (e.g. ``(GIoU + 1) / 2`` of
            the predicted box). Apply :func:`paploss.losses.scale_grad` to it first to scale the
            box-branch gradient.
        functions: the head's :class:`PAPFunctions`.

    Returns:
        :class:`PAPLossComponents`. Without positives all parts are 0 (with a zero gradient).

    Raises:
        ValueError: naming the argument on bad shapes, targets, qualities, non-finite logits or
            if ``functions`` is not a :class:`PAPFunctions`.
    """
    return _components(logits, targets, quality, functions, _fast_ratio_terms)


def pap_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    quality: torch.Tensor,
    functions: PAPFunctions,
) -> torch.Tensor:
    """The PAP loss (scalar tensor); see :func:`pap_loss_components` for the arguments."""
    return pap_loss_components(logits, targets, quality, functions).loss


def pap_loss_dense_components(
    logits: torch.Tensor,
    targets: torch.Tensor,
    quality: torch.Tensor,
    functions: PAPFunctions,
) -> PAPLossComponents:
    """Reference implementation of :func:`pap_loss_components` with ``[P, M]`` tensors.

    Same arguments and result; memory grows with ``P * M``, use it for tests and benchmarks.
    """
    return _components(logits, targets, quality, functions, _dense_ratio_terms)


def pap_loss_dense(
    logits: torch.Tensor,
    targets: torch.Tensor,
    quality: torch.Tensor,
    functions: PAPFunctions,
) -> torch.Tensor:
    """Reference implementation of :func:`pap_loss` with ``[P, M]`` tensors."""
    return pap_loss_dense_components(logits, targets, quality, functions).loss
