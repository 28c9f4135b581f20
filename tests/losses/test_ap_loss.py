"""Tests of AP-Loss: the fast version against the loop reference, hand-worked cases, invariants."""

import pytest
import torch

from paploss.losses.ap_loss import ap_loss
from paploss.losses.ranking_reference import ap_loss_reference

F64 = torch.float64


def _random_case(seed: int, num_entries: int, grid: float = 0.0, pos_frac: float = 0.3):
    """Random logits/targets; with ``grid > 0`` logits are multiples of ``grid`` (many ties, and
    gaps that hit the kinks of the smoothed step exactly)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_entries, generator=gen, dtype=F64) * 2
    if grid > 0:
        logits = torch.round(logits / grid) * grid
    draw = torch.rand(num_entries, generator=gen)
    targets = torch.where(draw < pos_frac, 1, torch.where(draw < 0.85, 0, -1))
    return logits, targets


def _loss_and_grad(loss_fn, logits, targets, **kwargs):
    logits = logits.clone().requires_grad_(True)
    loss = loss_fn(logits, targets, **kwargs)
    loss.backward()
    return loss.detach(), logits.grad


@pytest.mark.parametrize("seed", range(24))
def test_fast_matches_reference(seed):
    num_entries = [1, 2, 5, 17, 40, 80][seed % 6]
    grid = [0.0, 0.5, 0.25][seed % 3]  # delta/2 and delta/4 grids give exact ties and kinks
    delta = [1.0, 1.0, 0.5, 2.0][seed % 4]
    logits, targets = _random_case(seed, num_entries, grid)
    loss_ref, grad_ref = _loss_and_grad(ap_loss_reference, logits, targets, delta=delta)
    loss, grad = _loss_and_grad(ap_loss, logits, targets, delta=delta)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)


def test_fast_matches_reference_many_ties_and_interpolation():
    # Few distinct logits, positives interleaved with negatives: many tied positives and many
    # interpolated (c_i != 1) positives.
    gen = torch.Generator().manual_seed(7)
    logits = torch.randint(-3, 4, (120,), generator=gen).to(F64) * 0.5
    targets = torch.randint(-1, 2, (120,), generator=gen)
    loss_ref, grad_ref = _loss_and_grad(ap_loss_reference, logits, targets)
    loss, grad = _loss_and_grad(ap_loss, logits, targets)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss_fn", [ap_loss, ap_loss_reference])
def test_hand_computed_simple(loss_fn):
    # delta = 1, H(x) = clamp(x/2 + 1/2, 0, 1). Entries: A (pos, 2), B (pos, 0), C (neg, 1),
    # D (ignored, 5).
    # B: rank_pos = 1 + H(2 - 0) = 2, N_FP = H(1 - 0) = 1, rank = 3, prec = 2/3.
    # A: rank_pos = 1 + H(0 - 2) = 1, N_FP = H(1 - 2) = 0, prec = 1.
    # Ascending visit: B sets max_prec = 2/3 (c = 1): C gets 1/3, B gets -(1 - 2/3) = -1/3;
    # A: max_prec = 1, grad 0. Loss = 1 - (2/3 + 1)/2 = 1/6; gradients / |P| = 2.
    logits = torch.tensor([2.0, 0.0, 1.0, 5.0], dtype=F64)
    targets = torch.tensor([1, 1, 0, -1])
    loss, grad = _loss_and_grad(loss_fn, logits, targets)
    torch.testing.assert_close(loss, torch.tensor(1 / 6, dtype=F64))
    torch.testing.assert_close(grad, torch.tensor([0.0, -1 / 6, 1 / 6, 0.0], dtype=F64))


@pytest.mark.parametrize("loss_fn", [ap_loss, ap_loss_reference])
def test_hand_computed_interpolated_precision(loss_fn):
    # delta = 1, logit gaps >= 2 so every H is 0 or 1. Ranking: N (8), P1 (6), P2 (4), P3 (2).
    # prec: P1 = 1/2, P2 = 2/3, P3 = 3/4; interpolated: 3/4 for all three (loss 1/4).
    # Ascending visit: P3: c = 1, N += 1/4. P2: c = (1 - 3/4)/(1 - 2/3) = 3/4, N += 3/4 * 1/3.
    # P1: c = (1 - 3/4)/(1 - 1/2) = 1/2, N += 1/2 * 1/2. N = 3/4, each positive -(1 - 3/4).
    # Divided by |P| = 3: N = 1/4, P1 = P2 = P3 = -1/12.
    logits = torch.tensor([8.0, 6.0, 4.0, 2.0], dtype=F64)
    targets = torch.tensor([0, 1, 1, 1])
    loss, grad = _loss_and_grad(loss_fn, logits, targets)
    torch.testing.assert_close(loss, torch.tensor(0.25, dtype=F64))
    torch.testing.assert_close(grad, torch.tensor([0.25, -1 / 12, -1 / 12, -1 / 12], dtype=F64))


@pytest.mark.parametrize("seed", range(6))
def test_gradients_sum_to_zero_and_negatives_sum_to_loss(seed):
    # AP-Loss: sum_j grad_j = (1/|P|) sum_i c_i N_FP(i)/rank(i) = (1/|P|) sum_i (1 - prec_interp(i))
    # = loss over the negatives, and the positives get exactly minus that.
    logits, targets = _random_case(100 + seed, 300, grid=0.25 if seed % 2 else 0.0)
    loss, grad = _loss_and_grad(ap_loss, logits, targets)
    assert loss > 0
    torch.testing.assert_close(grad.sum(), torch.zeros((), dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(grad[targets == 0].sum(), loss, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("loss_fn", [ap_loss, ap_loss_reference])
def test_perfect_ranking_gives_zero_loss_and_gradient(loss_fn):
    # Every positive at least delta above every negative: N_FP = 0 for all positives.
    logits = torch.tensor([3.0, 5.0, 4.0, 2.0, 1.5, -1.0, 9.0], dtype=F64)
    targets = torch.tensor([1, 1, 1, 0, 0, 0, -1])
    loss, grad = _loss_and_grad(loss_fn, logits, targets, delta=1.0)
    assert loss.item() == 0.0
    assert torch.count_nonzero(grad) == 0


def test_ignored_entries_get_zero_gradient_and_change_nothing():
    logits, targets = _random_case(5, 200, grid=0.5)
    loss, grad = _loss_and_grad(ap_loss, logits, targets)
    assert torch.count_nonzero(grad[targets == -1]) == 0
    shuffled = logits.clone()
    ignored = targets == -1
    gen = torch.Generator().manual_seed(1)
    shuffled[ignored] = torch.randn(int(ignored.sum()), generator=gen, dtype=F64) * 10
    loss2, grad2 = _loss_and_grad(ap_loss, shuffled, targets)
    torch.testing.assert_close(loss2, loss)
    torch.testing.assert_close(grad2, grad)


@pytest.mark.parametrize("loss_fn", [ap_loss, ap_loss_reference])
@pytest.mark.parametrize("targets", [[0, 0, -1], [-1, -1, -1], [0, 0, 0], []])
def test_no_positives_zero_loss(loss_fn, targets):
    targets = torch.tensor(targets, dtype=torch.long)
    logits = torch.linspace(-1, 1, len(targets), dtype=F64)
    loss, grad = _loss_and_grad(loss_fn, logits, targets)
    assert loss.item() == 0.0 and not torch.isnan(grad).any()
    assert torch.count_nonzero(grad) == 0


def test_only_positives_zero_loss():
    logits = torch.tensor([0.3, 0.3, -2.0], dtype=F64)
    loss, grad = _loss_and_grad(ap_loss, logits, torch.tensor([1, 1, 1]))
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0


def test_grad_output_scales_gradient_and_float32_runs():
    logits, targets = _random_case(3, 150)
    _, grad = _loss_and_grad(ap_loss, logits, targets)
    x = logits.clone().requires_grad_(True)
    (3.0 * ap_loss(x, targets)).backward()
    torch.testing.assert_close(x.grad, 3.0 * grad)
    loss32, grad32 = _loss_and_grad(ap_loss, logits.float(), targets)
    assert loss32.dtype == torch.float32 and grad32.dtype == torch.float32
    loss64, grad64 = _loss_and_grad(ap_loss, logits, targets)
    torch.testing.assert_close(loss32.double(), loss64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad32.double(), grad64, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss_fn", [ap_loss, ap_loss_reference])
def test_bad_inputs_raise_value_error_naming_the_argument(loss_fn):
    logits = torch.zeros(4, dtype=F64)
    targets = torch.tensor([1, 0, 0, -1])
    with pytest.raises(ValueError, match="delta"):
        loss_fn(logits, targets, delta=0.0)
    with pytest.raises(ValueError, match="delta"):
        loss_fn(logits, targets, delta=float("nan"))
    with pytest.raises(ValueError, match="targets"):
        loss_fn(logits, torch.tensor([1, 0, 2, 0]))
    with pytest.raises(ValueError, match="targets"):
        loss_fn(logits, targets[:3])
    with pytest.raises(ValueError, match="logits"):
        loss_fn(logits.view(2, 2), targets.view(2, 2))
    with pytest.raises(ValueError, match="logits"):
        loss_fn(torch.tensor([0.0, float("inf"), 0.0, 0.0]), targets)


@pytest.mark.parametrize("seed", range(6))
def test_count_at_most_matches_searchsorted(seed):
    # The bucketed search behind the fast losses, on spread-out, clustered and tied boundaries,
    # with values on the boundaries and outside their range.
    from paploss.losses.ap_loss import _count_at_most

    gen = torch.Generator().manual_seed(seed)
    num_boundaries = [1, 2, 9, 100, 1000, 64][seed]
    if seed % 2:
        boundaries = torch.randint(-3, 4, (num_boundaries,), generator=gen).to(F64)
    else:
        boundaries = torch.randn(num_boundaries, generator=gen, dtype=F64)
        boundaries[: num_boundaries // 3] = 0.25  # a cluster of ties
    boundaries = torch.sort(boundaries).values
    values = torch.cat(
        [boundaries, torch.randn(5000, generator=gen, dtype=F64) * 3, boundaries + 1e-300]
    )
    expected = torch.searchsorted(boundaries, values, right=True)
    assert torch.equal(_count_at_most(boundaries, values).long(), expected)


@pytest.mark.parametrize("delta", [1.0, 0.0])
def test_negatives_around_positives_match_dense(delta):
    from paploss.losses.ap_loss import _NegativesAroundPositives

    gen = torch.Generator().manual_seed(3)
    pos = torch.randint(-6, 7, (40,), generator=gen).to(F64) * 0.5
    logits = torch.cat([pos, torch.randint(-10, 11, (300,), generator=gen).to(F64) * 0.5])
    is_negative = torch.rand(logits.shape[0], generator=gen) < 0.7
    is_negative[:40] = False  # the positives themselves
    gaps = logits[None, :] - pos[:, None]  # [P, M]
    step = torch.clamp(gaps / (2 * delta) + 0.5, 0, 1) if delta > 0 else (gaps >= 0).to(F64)
    step = step * is_negative
    pos_weights = torch.rand(pos.shape[0], generator=gen, dtype=F64)
    sums = _NegativesAroundPositives(pos, logits, is_negative, delta)
    torch.testing.assert_close(sums.false_positives(), step.sum(1))
    torch.testing.assert_close(sums.per_negative(pos_weights), pos_weights @ step)


def test_fast_matches_reference_medium_size():
    # Enough positives for clustered breakpoints (a deeper bucketed search) and many ties.
    gen = torch.Generator().manual_seed(21)
    logits = torch.round(torch.randn(3000, generator=gen, dtype=F64) * 8) / 4
    targets = torch.where(torch.rand(3000, generator=gen) < 0.1, 1, 0)
    targets[torch.rand(3000, generator=gen) < 0.1] = -1
    loss_ref, grad_ref = _loss_and_grad(ap_loss_reference, logits, targets)
    loss, grad = _loss_and_grad(ap_loss, logits, targets)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)
