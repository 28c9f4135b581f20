"""Tests of aLRP Loss: the fast version against the loop reference, hand-worked cases and
invariants (the self-balancing weight is the head's: tests/modeling/test_baseline_heads.py)."""

import pytest
import torch

from paploss.losses.alrp_loss import alrp_loss
from paploss.losses.ranking_reference import alrp_loss_reference

F64 = torch.float64


def _random_case(seed: int, num_entries: int, grid: float = 0.0, pos_frac: float = 0.3):
    """Random logits/targets/loc errors; with ``grid > 0`` logits are multiples of ``grid`` (ties,
    and gaps that hit the kinks of the smoothed step exactly)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_entries, generator=gen, dtype=F64) * 2
    if grid > 0:
        logits = torch.round(logits / grid) * grid
    draw = torch.rand(num_entries, generator=gen)
    targets = torch.where(draw < pos_frac, 1, torch.where(draw < 0.85, 0, -1))
    loc_errors = torch.rand(num_entries, generator=gen, dtype=F64) * 2
    loc_errors[targets != 1] = -1.0  # never read: only positive entries count
    return logits, targets, loc_errors


def _run(loss_fn, logits, targets, loc_errors, **kwargs):
    """Returns cls loss, loc loss, d cls/d logits, d loc/d loc_errors."""
    logits = logits.clone().requires_grad_(True)
    loc_errors = loc_errors.clone().requires_grad_(True)
    cls_loss, loc_loss = loss_fn(logits, targets, loc_errors, **kwargs)
    cls_loss.backward()
    assert loc_errors.grad is None or torch.count_nonzero(loc_errors.grad) == 0
    loc_loss.backward()
    return cls_loss.detach(), loc_loss.detach(), logits.grad, loc_errors.grad


def _dense_negative_gradient_total(logits, targets, loc_errors, delta=1.0, eps=1e-5):
    """(1/|P|) sum_{i: N_FP(i) > eps} [N_FP(i) + sum_{k in P, k != i} H(s_k - s_i) E(k)] / rank(i),
    computed with dense [P, M] tensors."""
    pos = targets == 1
    step = torch.clamp((logits[None, :] - logits[pos][:, None]) / (2 * delta) + 0.5, 0, 1)
    num_fp = (step * (targets == 0)).sum(1)
    pos_step = step[:, pos] * (1 - torch.eye(int(pos.sum()), dtype=logits.dtype))
    rank = 1 + pos_step.sum(1) + num_fp
    error = (num_fp + pos_step @ loc_errors[pos]) / rank
    return (error * (num_fp > eps)).sum() / pos.sum()


@pytest.mark.parametrize("seed", range(24))
def test_fast_matches_reference(seed):
    num_entries = [1, 2, 5, 17, 40, 80][seed % 6]
    grid = [0.0, 0.5, 0.25][seed % 3]
    delta = [1.0, 1.0, 0.5, 2.0][seed % 4]
    case = _random_case(seed, num_entries, grid)
    expected = _run(alrp_loss_reference, *case, delta=delta)
    actual = _run(alrp_loss, *case, delta=delta)
    for name, a, e in zip(["cls_loss", "loc_loss", "logit grad", "loc grad"], actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")


def test_fast_matches_reference_many_ties():
    gen = torch.Generator().manual_seed(11)
    logits = torch.randint(-3, 4, (120,), generator=gen).to(F64) * 0.5
    targets = torch.randint(-1, 2, (120,), generator=gen)
    loc_errors = torch.rand(120, generator=gen, dtype=F64)
    expected = _run(alrp_loss_reference, logits, targets, loc_errors)
    actual = _run(alrp_loss, logits, targets, loc_errors)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss_fn", [alrp_loss, alrp_loss_reference])
def test_hand_computed(loss_fn):
    # delta = 1, H(x) = clamp(x/2 + 1/2, 0, 1). A (pos, 2, E = 0.4), B (pos, 0, E = 0.2),
    # C (neg, 1), D (ignored, 5).
    # A: rank_pos = 1, N_FP = H(-1) = 0: rank 1, prec 1, no gradient (N_FP <= 1e-5).
    # B: rank_pos = 1 + H(2) = 2, N_FP = H(1) = 1: rank 3, prec 2/3;
    #    B's error = (N_FP + H(s_A - s_B) E_A) / rank = (1 + 0.4)/3, all of it sent to C.
    # cls = 1 - (1 + 2/3)/2 = 1/6; gradients / |P| = 2: B = -0.7/3, C = +0.7/3.
    # loc: descending order A, B; running sums 0.4, 0.6; ranks 1, 3:
    #    (0.4/1 + 0.6/3)/2 = 0.3; d/dE_A = (1/1 + 1/3)/2 = 2/3, d/dE_B = (1/3)/2 = 1/6.
    logits = torch.tensor([2.0, 0.0, 1.0, 5.0], dtype=F64)
    targets = torch.tensor([1, 1, 0, -1])
    loc_errors = torch.tensor([0.4, 0.2, 7.0, float("nan")], dtype=F64)
    cls_loss, loc_loss, grad, loc_grad = _run(loss_fn, logits, targets, loc_errors)
    torch.testing.assert_close(cls_loss, torch.tensor(1 / 6, dtype=F64))
    torch.testing.assert_close(loc_loss, torch.tensor(0.3, dtype=F64))
    torch.testing.assert_close(grad, torch.tensor([0.0, -0.7 / 3, 0.7 / 3, 0.0], dtype=F64))
    torch.testing.assert_close(loc_grad, torch.tensor([2 / 3, 1 / 6, 0.0, 0.0], dtype=F64))


@pytest.mark.parametrize("seed", range(6))
def test_gradient_sums(seed):
    # The logits' gradients sum to zero. The negatives' share is NOT the classification loss: it is
    # (1/|P|) sum_{i: N_FP(i) > 1e-5} [N_FP(i) + sum_{k != i} H(x_ik) E(k)] / rank(i), which equals
    # cls_loss when every localisation error is zero (and no positive has 0 < N_FP <= 1e-5).
    logits, targets, loc_errors = _random_case(200 + seed, 300, grid=0.25 if seed % 2 else 0.0)
    cls_loss, _, grad, _ = _run(alrp_loss, logits, targets, loc_errors)
    torch.testing.assert_close(grad.sum(), torch.zeros((), dtype=F64), atol=1e-12, rtol=0)
    expected = _dense_negative_gradient_total(logits, targets, loc_errors.clamp(min=0))
    torch.testing.assert_close(grad[targets == 0].sum(), expected, atol=1e-12, rtol=1e-10)

    cls_loss0, _, grad0, _ = _run(alrp_loss, logits, targets, torch.zeros_like(loc_errors))
    torch.testing.assert_close(cls_loss0, cls_loss)  # the loss value ignores loc errors
    torch.testing.assert_close(grad0[targets == 0].sum(), cls_loss, atol=1e-12, rtol=1e-10)


def test_localisation_gradient_by_gradcheck():
    logits, targets, loc_errors = _random_case(9, 60, grid=0.5)
    loc_errors = loc_errors.clamp(min=0).requires_grad_(True)

    def loc_term(errors):
        return alrp_loss(logits, targets, errors)[1]

    assert torch.autograd.gradcheck(loc_term, (loc_errors,))


@pytest.mark.parametrize("loss_fn", [alrp_loss, alrp_loss_reference])
def test_perfect_ranking_gives_zero_classification_loss_and_gradient(loss_fn):
    logits = torch.tensor([3.0, 5.0, 4.0, 2.0, 1.5, -1.0, 9.0], dtype=F64)
    targets = torch.tensor([1, 1, 1, 0, 0, 0, -1])
    loc_errors = torch.tensor([0.5, 0.1, 0.3, 0, 0, 0, 0], dtype=F64)
    cls_loss, loc_loss, grad, _ = _run(loss_fn, logits, targets, loc_errors)
    assert cls_loss.item() == 0.0 and torch.count_nonzero(grad) == 0
    # Ranks 1, 2, 3 (gaps of exactly delta: H = 1): (0.1/1 + 0.4/2 + 0.9/3) / 3 = 0.2.
    torch.testing.assert_close(loc_loss, torch.tensor(0.2, dtype=F64))


def test_ignored_entries_get_zero_gradient_and_change_nothing():
    logits, targets, loc_errors = _random_case(5, 200, grid=0.5)
    cls_loss, loc_loss, grad, loc_grad = _run(alrp_loss, logits, targets, loc_errors)
    assert torch.count_nonzero(grad[targets == -1]) == 0
    assert torch.count_nonzero(loc_grad[targets != 1]) == 0
    shuffled = logits.clone()
    ignored = targets == -1
    gen = torch.Generator().manual_seed(1)
    shuffled[ignored] = torch.randn(int(ignored.sum()), generator=gen, dtype=F64) * 10
    again = _run(alrp_loss, shuffled, targets, loc_errors)
    for a, e in zip(again, (cls_loss, loc_loss, grad, loc_grad)):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("loss_fn", [alrp_loss, alrp_loss_reference])
@pytest.mark.parametrize("targets", [[0, 0, -1], [-1, -1, -1], []])
def test_no_positives_zero_loss(loss_fn, targets):
    targets = torch.tensor(targets, dtype=torch.long)
    logits = torch.linspace(-1, 1, len(targets), dtype=F64)
    loc_errors = torch.full((len(targets),), float("nan"), dtype=F64)
    cls_loss, loc_loss, grad, loc_grad = _run(loss_fn, logits, targets, loc_errors)
    assert cls_loss.item() == 0.0 and loc_loss.item() == 0.0
    assert torch.count_nonzero(grad) == 0 and not torch.isnan(grad).any()
    assert loc_grad is None or torch.count_nonzero(loc_grad) == 0


def test_float32_close_to_float64():
    logits, targets, loc_errors = _random_case(3, 150)
    loc_errors = loc_errors.clamp(min=0)
    r64 = _run(alrp_loss, logits, targets, loc_errors)
    r32 = _run(alrp_loss, logits.float(), targets, loc_errors.float())
    for a, e in zip(r32, r64):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss_fn", [alrp_loss, alrp_loss_reference])
def test_bad_inputs_raise_value_error_naming_the_argument(loss_fn):
    logits = torch.zeros(4, dtype=F64)
    targets = torch.tensor([1, 0, 0, -1])
    errors = torch.zeros(4, dtype=F64)
    with pytest.raises(ValueError, match="delta"):
        loss_fn(logits, targets, errors, delta=-1.0)
    with pytest.raises(ValueError, match="loc_errors"):
        loss_fn(logits, targets, torch.tensor([-0.5, 0, 0, 0], dtype=F64))
    with pytest.raises(ValueError, match="loc_errors"):
        loss_fn(logits, targets, errors[:3])
    with pytest.raises(ValueError, match="targets"):
        loss_fn(logits, torch.tensor([1, 0, 3, 0]), errors)


def test_fast_matches_reference_medium_size():
    gen = torch.Generator().manual_seed(22)
    logits = torch.round(torch.randn(3000, generator=gen, dtype=F64) * 8) / 4
    targets = torch.where(torch.rand(3000, generator=gen) < 0.1, 1, 0)
    targets[torch.rand(3000, generator=gen) < 0.1] = -1
    loc_errors = torch.rand(3000, generator=gen, dtype=F64)
    expected = _run(alrp_loss_reference, logits, targets, loc_errors)
    actual = _run(alrp_loss, logits, targets, loc_errors)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
