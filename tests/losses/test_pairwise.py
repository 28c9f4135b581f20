"""Exact sort + prefix-sum pairwise sums against brute-force double loops."""

import numpy as np
import pytest
import torch

from paploss.losses.pairwise import (
    gap_sum,
    pairwise_gap_slope_sum,
    pairwise_gap_sum,
    pairwise_gap_sums,
    pairwise_gap_sums_per_score,
    piecewise_linear,
    sort_scores,
)

# A non-monotone test function with knots on the half-integer grid, so that integer and
# half-integer scores put gaps exactly on breakpoints (and ties exactly on the knot at 0).
KNOTS_X = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.float64)
KNOTS_Y = torch.tensor([0.1, 0.2, 0.7, 0.3, 0.9], dtype=torch.float64)


def brute_value(d, xs, ys):
    return float(np.interp(d, xs, ys))  # linear interpolation, constant outside the knots


def brute_slope(d, xs, ys):
    """Right derivative: slope of the segment [x_k, x_{k+1}) containing d, 0 outside."""
    for k in range(len(xs) - 1):
        if xs[k] <= d < xs[k + 1]:
            return (ys[k + 1] - ys[k]) / (xs[k + 1] - xs[k])
    return 0.0


def brute_sums(anchors, scores, weights, xs, ys, reverse=False, slope=False):
    """out[i] = sum_j f(gap_ij) w_j by a double loop, gap = s_j - a_i (a_i - s_j if reverse)."""
    anchors, scores, weights = anchors.numpy(), scores.numpy(), weights.numpy()
    xs, ys = xs.numpy(), ys.numpy()
    f = brute_slope if slope else brute_value
    out = np.zeros((len(anchors),) + weights.shape[1:])
    for i, a in enumerate(anchors):
        for j, s in enumerate(scores):
            out[i] += f((a - s) if reverse else (s - a), xs, ys) * weights[j]
    return torch.from_numpy(out)


def make_case(seed, num_scores=25, num_anchors=8, grid=False, anchors_from_scores=True, channels=0):
    g = torch.Generator().manual_seed(seed)
    if grid:  # half-integers: many ties and gaps exactly on the knots
        scores = torch.randint(-4, 5, (num_scores,), generator=g).double() / 2
    else:
        scores = torch.randn(num_scores, generator=g, dtype=torch.float64)
    if anchors_from_scores:
        anchors = scores[torch.randperm(num_scores, generator=g)[:num_anchors]]
    else:
        anchors = torch.randn(num_anchors, generator=g, dtype=torch.float64)
    shape = (num_scores, channels) if channels else (num_scores,)
    weights = torch.rand(shape, generator=g, dtype=torch.float64)
    return anchors, scores, weights


CASES = [
    dict(seed=0),
    dict(seed=1, grid=True),
    dict(seed=2, grid=True, channels=3),
    dict(seed=3, anchors_from_scores=False),
    dict(seed=4, grid=True, anchors_from_scores=False),
    dict(seed=5, num_scores=1, num_anchors=1),
    dict(seed=6, num_scores=12, num_anchors=0),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("reverse", [False, True])
def test_per_anchor_sums_match_double_loop(case, reverse):
    anchors, scores, weights = make_case(**case)
    values, slopes = pairwise_gap_sums(
        anchors, scores, weights, KNOTS_X, KNOTS_Y, reverse=reverse, slopes=True
    )
    expected_values = brute_sums(anchors, scores, weights, KNOTS_X, KNOTS_Y, reverse)
    expected_slopes = brute_sums(anchors, scores, weights, KNOTS_X, KNOTS_Y, reverse, slope=True)
    torch.testing.assert_close(values, expected_values, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(slopes, expected_slopes, rtol=1e-12, atol=1e-12)
    # The single-purpose wrappers give the same numbers.
    torch.testing.assert_close(
        pairwise_gap_sum(anchors, scores, weights, KNOTS_X, KNOTS_Y, reverse=reverse), values
    )
    torch.testing.assert_close(
        pairwise_gap_slope_sum(anchors, scores, weights, KNOTS_X, KNOTS_Y, reverse=reverse), slopes
    )


@pytest.mark.parametrize("case", CASES)
def test_per_score_sums_match_double_loop(case):
    anchors, scores, _ = make_case(**case)
    g = torch.Generator().manual_seed(case["seed"] + 100)
    anchor_weights = torch.randn(anchors.shape[0], generator=g, dtype=torch.float64)
    values, slopes = pairwise_gap_sums_per_score(
        scores, anchors, anchor_weights, KNOTS_X, KNOTS_Y, slopes=True
    )
    # out[j] = sum_i f(s_j - a_i) g_i: the per-anchor brute force with the roles swapped.
    expected_values = brute_sums(scores, anchors, anchor_weights, KNOTS_X, KNOTS_Y, reverse=True)
    expected_slopes = brute_sums(
        scores, anchors, anchor_weights, KNOTS_X, KNOTS_Y, reverse=True, slope=True
    )
    torch.testing.assert_close(values, expected_values, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(slopes, expected_slopes, rtol=1e-12, atol=1e-12)


def test_per_score_sums_with_channels():
    anchors, scores, _ = make_case(seed=7, grid=True)
    anchor_weights = torch.rand(anchors.shape[0], 2, dtype=torch.float64)
    values, slopes = pairwise_gap_sums_per_score(
        scores, anchors, anchor_weights, KNOTS_X, KNOTS_Y, slopes=True
    )
    for c in range(2):
        v, s = pairwise_gap_sums_per_score(
            scores, anchors, anchor_weights[:, c], KNOTS_X, KNOTS_Y, slopes=True
        )
        torch.testing.assert_close(values[:, c], v)
        torch.testing.assert_close(slopes[:, c], s)


def test_unit_weights_and_shared_sort():
    anchors, scores, _ = make_case(seed=8, grid=True)
    sorted_scores = sort_scores(scores)
    counts = pairwise_gap_sum(anchors, sorted_scores, None, KNOTS_X, KNOTS_Y)
    expected = pairwise_gap_sum(anchors, scores, torch.ones_like(scores), KNOTS_X, KNOTS_Y)
    torch.testing.assert_close(counts, expected)
    assert torch.equal(sorted_scores.values, scores[sorted_scores.order])


def test_smoothed_step_of_ranking_losses():
    """The smoothed step H(d) = clamp(d / (2 delta) + 1/2, 0, 1): knots [-delta, delta], [0, 1]."""
    delta = 0.5
    scores = torch.tensor([0.0, 0.25, 0.5, 1.0, -2.0], dtype=torch.float64)
    anchors = torch.tensor([0.0, 0.5], dtype=torch.float64)
    knots_x = torch.tensor([-delta, delta], dtype=torch.float64)
    knots_y = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ranks = pairwise_gap_sum(anchors, scores, None, knots_x, knots_y)
    # Anchor 0: H(0)=.5, H(.25)=.75, H(.5)=1, H(1)=1, H(-2)=0 -> 3.25.
    # Anchor .5: H(-.5)=0, H(-.25)=.25, H(0)=.5, H(.5)=1, H(-2.5)=0 -> 1.75.
    torch.testing.assert_close(ranks, torch.tensor([3.25, 1.75], dtype=torch.float64))


def test_piecewise_linear_values_and_right_derivative():
    x = torch.tensor([-3.0, -1.0, -0.75, -0.5, 0.0, 0.25, 0.5, 1.0, 2.0], dtype=torch.float64)
    x.requires_grad_(True)
    y = piecewise_linear(x, KNOTS_X, KNOTS_Y)
    expected = [brute_value(v, KNOTS_X.numpy(), KNOTS_Y.numpy()) for v in x.tolist()]
    torch.testing.assert_close(y, torch.tensor(expected, dtype=torch.float64))
    (grad,) = torch.autograd.grad(y.sum(), x)
    expected_grad = [brute_slope(v, KNOTS_X.numpy(), KNOTS_Y.numpy()) for v in x.tolist()]
    torch.testing.assert_close(grad, torch.tensor(expected_grad, dtype=torch.float64))


@pytest.mark.parametrize("grid", [False, True])
def test_gap_sum_gradients_match_dense_autograd(grid):
    """Values and gradients of the autograd function equal plain autograd through [P, M] gaps,
    also with ties and gaps exactly on breakpoints (same right-derivative convention)."""
    _, scores, _ = make_case(seed=9, num_scores=60, grid=grid)
    g = torch.Generator().manual_seed(10)
    weights = torch.rand(60, 2, generator=g, dtype=torch.float64)
    index = torch.randperm(60, generator=g)[:15]
    scores.requires_grad_(True)
    weights.requires_grad_(True)
    upstream = torch.randn(15, 2, generator=g, dtype=torch.float64)

    fast = gap_sum(scores[index], scores, weights, KNOTS_X, KNOTS_Y)
    fast_grads = torch.autograd.grad(fast, (scores, weights), upstream)
    gaps = scores[None, :] - scores[index][:, None]
    dense = (piecewise_linear(gaps, KNOTS_X, KNOTS_Y)[:, :, None] * weights[None]).sum(dim=1)
    dense_grads = torch.autograd.grad(dense, (scores, weights), upstream)
    torch.testing.assert_close(fast, dense, rtol=1e-12, atol=1e-12)
    for a, b in zip(fast_grads, dense_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gap_sum_gradcheck():
    """Finite differences are valid here: no stop-gradient, and random scores keep every gap away
    from the breakpoints by far more than the finite-difference step."""
    g = torch.Generator().manual_seed(11)
    scores = torch.randn(20, generator=g, dtype=torch.float64, requires_grad=True)
    anchors = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(20, generator=g, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 3, 7, 19])

    def fn(scores, anchors, weights):
        # Anchors both separate and shared with the scores (two roles of one tensor).
        all_anchors = torch.cat([anchors, scores[index]])
        return gap_sum(all_anchors, scores, weights, KNOTS_X, KNOTS_Y)

    assert torch.autograd.gradcheck(fn, (scores, anchors, weights))


def test_float32_inputs_keep_precision():
    """Large offset logits in float32: prefix sums in float64 keep differences exact."""
    g = torch.Generator().manual_seed(12)
    scores64 = 50.0 + torch.randn(20000, generator=g, dtype=torch.float64)
    scores64 = scores64.float().double()  # exactly representable in float32
    anchors64 = scores64[:50]
    weights64 = torch.rand(20000, generator=g, dtype=torch.float64).float().double()
    result32 = pairwise_gap_sum(
        anchors64.float(), scores64.float(), weights64.float(), KNOTS_X, KNOTS_Y
    )
    result64 = pairwise_gap_sum(anchors64, scores64, weights64, KNOTS_X, KNOTS_Y)
    assert result32.dtype == torch.float32
    torch.testing.assert_close(result32.double(), result64, rtol=1e-6, atol=1e-4)


def test_bad_inputs_raise():
    scores = torch.randn(5, dtype=torch.float64)
    with pytest.raises(ValueError, match="weights"):
        pairwise_gap_sum(scores[:2], scores, torch.ones(4), KNOTS_X, KNOTS_Y)
    with pytest.raises(ValueError, match="anchors"):
        pairwise_gap_sum(scores[None], scores, None, KNOTS_X, KNOTS_Y)
    with pytest.raises(ValueError, match="knots"):
        pairwise_gap_sum(scores[:2], scores, None, KNOTS_X, KNOTS_Y[:3])
    with pytest.raises(ValueError, match="scores"):
        sort_scores(scores[None])
    with pytest.raises(ValueError, match="anchor_weights"):
        pairwise_gap_sums_per_score(scores, scores[:2], torch.ones(3), KNOTS_X, KNOTS_Y)
