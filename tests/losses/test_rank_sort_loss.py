"""Tests of Rank & Sort Loss: the fast version against the loop reference, hand-worked cases and
invariants."""

import pytest
import torch

from paploss.losses.rank_sort_loss import rank_sort_loss
from paploss.losses.ranking_reference import rank_sort_loss_reference

F64 = torch.float64


def _random_case(seed: int, num_entries: int, grid: float = 0.0, pos_frac: float = 0.35):
    """Random logits/targets/quality. With ``grid > 0`` logits are multiples of ``grid`` (ties and
    gaps on the kinks of the smoothed step); every other case rounds the quality to tenths so that
    positives share quality values (ties in the sorting targets)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_entries, generator=gen, dtype=F64) * 1.5
    if grid > 0:
        logits = torch.round(logits / grid) * grid
    draw = torch.rand(num_entries, generator=gen)
    targets = torch.where(draw < pos_frac, 1, torch.where(draw < 0.85, 0, -1))
    quality = torch.rand(num_entries, generator=gen, dtype=F64)
    if seed % 2:
        quality = torch.round(quality * 10) / 10
    quality[targets != 1] = 5.0  # never read: only positive entries count
    return logits, targets, quality


def _loss_and_grad(loss_fn, logits, targets, quality, **kwargs):
    logits = logits.clone().requires_grad_(True)
    loss = loss_fn(logits, targets, quality, **kwargs)
    loss.backward()
    return loss.detach(), logits.grad


def _dense_ranking_error(logits, targets, delta=0.5):
    """mean_i N_FP(i) / rank(i) with the self comparison counting H(0) = 1/2 (dense)."""
    pos = targets == 1
    step = torch.clamp((logits[None, :] - logits[pos][:, None]) / (2 * delta) + 0.5, 0, 1)
    num_fp = (step * (targets == 0)).sum(1)
    return (num_fp / (step * (targets >= 0)).sum(1)).mean()


@pytest.mark.parametrize("seed", range(24))
def test_fast_matches_reference(seed):
    num_entries = [1, 2, 5, 17, 40, 80][seed % 6]
    grid = [0.0, 0.25, 0.125][seed % 3]  # multiples of delta/2 and delta/4 for delta = 0.5
    delta = [0.5, 0.5, 0.25, 1.0][seed % 4]
    case = _random_case(seed, num_entries, grid)
    loss_ref, grad_ref = _loss_and_grad(rank_sort_loss_reference, *case, delta=delta)
    loss, grad = _loss_and_grad(rank_sort_loss, *case, delta=delta)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_fast_matches_reference_exact_step(seed):
    # delta = 0: exact step x >= 0, the self comparison counts 1.
    case = _random_case(50 + seed, 60, grid=0.5 if seed % 2 else 0.0)
    loss_ref, grad_ref = _loss_and_grad(rank_sort_loss_reference, *case, delta=0.0)
    loss, grad = _loss_and_grad(rank_sort_loss, *case, delta=0.0)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)


def test_fast_matches_reference_many_ties():
    gen = torch.Generator().manual_seed(13)
    logits = torch.randint(-3, 4, (150,), generator=gen).to(F64) * 0.25
    targets = torch.randint(-1, 2, (150,), generator=gen)
    quality = torch.randint(0, 5, (150,), generator=gen).to(F64) / 4  # includes 0 and 1
    loss_ref, grad_ref = _loss_and_grad(rank_sort_loss_reference, logits, targets, quality)
    loss, grad = _loss_and_grad(rank_sort_loss, logits, targets, quality)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("delta", [0.5, 0.0])
def test_fast_matches_reference_medium_size(delta):
    gen = torch.Generator().manual_seed(23)
    logits = torch.round(torch.randn(3000, generator=gen, dtype=F64) * 8) / 4
    targets = torch.where(torch.rand(3000, generator=gen) < 0.1, 1, 0)
    targets[torch.rand(3000, generator=gen) < 0.1] = -1
    quality = torch.round(torch.rand(3000, generator=gen, dtype=F64) * 20) / 20
    loss_ref, grad_ref = _loss_and_grad(
        rank_sort_loss_reference, logits, targets, quality, delta=delta
    )
    loss, grad = _loss_and_grad(rank_sort_loss, logits, targets, quality, delta=delta)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss_fn", [rank_sort_loss, rank_sort_loss_reference])
def test_hand_computed(loss_fn):
    # delta = 0.5, H(x) = clamp(x + 1/2, 0, 1).
    # A (pos, 3, y = 0.4), C (neg, 2), B (pos, 1, y = 0.8), D (ignored, 0).
    # A: rank_pos = H(0) = 1/2 (B is 2 below: H = 0), N_FP = H(2 - 3) = 0, l_R = 0.
    #    l_S = 1/2 (1 - 0.4) / (1/2) = 0.6; target set {y >= 0.4} = {A, B}: l_S* = 0.6. Error 0.
    # B: rank_pos = H(3 - 1) + H(0) = 1.5, N_FP = H(2 - 1) = 1, rank 2.5, l_R = 0.4.
    #    l_S = (1 * 0.6 + 1/2 * 0.2) / 1.5 = 7/15; target set {B}: l_S* = 0.2 = 3/15; error 4/15.
    #    Ranking: B -= 0.4, C += 0.4. Sorting: A (missorted, H = 1) += 4/15, B -= 4/15.
    # L_RS = (0 + 0.4)/2 + (0 + 4/15)/2 = 1/3; gradients / |P| = 2:
    #    A = 2/15, B = -(0.4 + 4/15)/2 = -1/3, C = 1/5.
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=F64)
    targets = torch.tensor([1, 0, 1, -1])
    quality = torch.tensor([0.4, 0.0, 0.8, 0.0], dtype=F64)
    loss, grad = _loss_and_grad(loss_fn, logits, targets, quality)
    torch.testing.assert_close(loss, torch.tensor(1 / 3, dtype=F64))
    torch.testing.assert_close(grad, torch.tensor([2 / 15, 1 / 5, -1 / 3, 0.0], dtype=F64))


@pytest.mark.parametrize("seed", range(6))
def test_gradient_sums(seed):
    # The logits' gradients sum to zero (the sorting update moves error between positives only).
    # The negatives' gradients sum to the ranking part mean_i N_FP(i)/rank(i) of L_RS, not to L_RS
    # (up to positives with 0 < N_FP <= 1e-10, which keep their error).
    logits, targets, quality = _random_case(300 + seed, 300, grid=0.125 if seed % 2 else 0.0)
    loss, grad = _loss_and_grad(rank_sort_loss, logits, targets, quality)
    torch.testing.assert_close(grad.sum(), torch.zeros((), dtype=F64), atol=1e-12, rtol=0)
    ranking_error = _dense_ranking_error(logits, targets)
    torch.testing.assert_close(grad[targets == 0].sum(), ranking_error, atol=1e-12, rtol=1e-10)
    # With every quality equal to 1 the sorting part vanishes and the two coincide.
    ones = torch.ones_like(quality)
    loss1, grad1 = _loss_and_grad(rank_sort_loss, logits, targets, ones)
    torch.testing.assert_close(loss1, ranking_error, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(grad1[targets == 0].sum(), loss1, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("loss_fn", [rank_sort_loss, rank_sort_loss_reference])
def test_perfect_ranking_and_sorting_give_zero_loss_and_gradient(loss_fn):
    # Positives at least delta = 0.5 above every negative and sorted by quality with gaps >= delta
    # (equal qualities may be in either order).
    logits = torch.tensor([4.0, 3.5, 3.0, 2.0, 1.5, 1.5, -1.0, 9.0], dtype=F64)
    targets = torch.tensor([1, 1, 1, 1, 0, 0, 0, -1])
    quality = torch.tensor([0.9, 0.7, 0.7, 0.2, 0.0, 0.0, 0.0, 0.0], dtype=F64)
    loss, grad = _loss_and_grad(loss_fn, logits, targets, quality)
    assert loss.item() == 0.0
    assert torch.count_nonzero(grad) == 0


def test_ignored_entries_get_zero_gradient_and_change_nothing():
    logits, targets, quality = _random_case(5, 200, grid=0.25)
    loss, grad = _loss_and_grad(rank_sort_loss, logits, targets, quality)
    assert torch.count_nonzero(grad[targets == -1]) == 0
    shuffled = logits.clone()
    ignored = targets == -1
    gen = torch.Generator().manual_seed(1)
    shuffled[ignored] = torch.randn(int(ignored.sum()), generator=gen, dtype=F64) * 10
    loss2, grad2 = _loss_and_grad(rank_sort_loss, shuffled, targets, quality)
    torch.testing.assert_close(loss2, loss)
    torch.testing.assert_close(grad2, grad)


@pytest.mark.parametrize("loss_fn", [rank_sort_loss, rank_sort_loss_reference])
@pytest.mark.parametrize("targets", [[0, 0, -1], [-1, -1, -1], []])
def test_no_positives_zero_loss(loss_fn, targets):
    targets = torch.tensor(targets, dtype=torch.long)
    logits = torch.linspace(-1, 1, len(targets), dtype=F64)
    quality = torch.full((len(targets),), float("nan"), dtype=F64)
    loss, grad = _loss_and_grad(loss_fn, logits, targets, quality)
    assert loss.item() == 0.0 and not torch.isnan(grad).any()
    assert torch.count_nonzero(grad) == 0


def test_float32_close_to_float64():
    logits, targets, quality = _random_case(3, 150)
    loss64, grad64 = _loss_and_grad(rank_sort_loss, logits, targets, quality)
    loss32, grad32 = _loss_and_grad(rank_sort_loss, logits.float(), targets, quality.float())
    assert loss32.dtype == torch.float32 and grad32.dtype == torch.float32
    torch.testing.assert_close(loss32.double(), loss64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad32.double(), grad64, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss_fn", [rank_sort_loss, rank_sort_loss_reference])
def test_bad_inputs_raise_value_error_naming_the_argument(loss_fn):
    logits = torch.zeros(4, dtype=F64)
    targets = torch.tensor([1, 0, 0, -1])
    quality = torch.zeros(4, dtype=F64)
    with pytest.raises(ValueError, match="delta"):
        loss_fn(logits, targets, quality, delta=-0.5)
    with pytest.raises(ValueError, match="quality"):
        loss_fn(logits, targets, torch.tensor([1.5, 0, 0, 0], dtype=F64))
    with pytest.raises(ValueError, match="quality"):
        loss_fn(logits, targets, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        loss_fn(logits, targets.view(2, 2), quality)


@pytest.mark.parametrize("delta", [0.5, 0.0])
@pytest.mark.parametrize("num_points", [1, 2, 7, 64, 257])
def test_key_restricted_step_sums_match_dense(num_points, delta):
    # The two-dimensional sums behind the sorting error, against a dense [n, n] evaluation, with
    # tied keys and tied scores.
    from paploss.losses.rank_sort_loss import _KeyRestrictedStepSums

    gen = torch.Generator().manual_seed(num_points)
    scores = torch.randint(-8, 9, (num_points,), generator=gen).to(F64) * 0.125
    keys = torch.randint(0, 6, (num_points,), generator=gen).to(F64) / 5
    weights = torch.rand(num_points, 3, generator=gen, dtype=F64)

    def step(gaps):
        return torch.clamp(gaps / (2 * delta) + 0.5, 0, 1) if delta > 0 else (gaps >= 0).to(F64)

    gaps = scores[None, :] - scores[:, None]  # [anchor a, point p]: s_p - s_a
    expected_below = (step(gaps) * (keys[None, :] < keys[:, None])) @ weights
    expected_above = (step(-gaps) * (keys[None, :] > keys[:, None])) @ weights
    sums = _KeyRestrictedStepSums(scores, keys, delta)
    torch.testing.assert_close(sums.below(weights), expected_below, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sums.above(weights), expected_above, rtol=1e-12, atol=1e-12)
