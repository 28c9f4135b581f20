"""AP-Loss, aLRP Loss and Rank & Sort Loss: the fixed-shape way of accelerators against the CPU way.

On the CPU the losses gather their positives; elsewhere every entry takes part with the positives
as a mask (:mod:`paploss.losses._devices`). Setting ``INDEXED_DEVICES`` to ``()`` runs the
fixed-shape way on the CPU: both ways must give the same values and gradients in float64.
"""

import pytest
import torch

import paploss.losses._devices as devices_module
from paploss.losses.alrp_loss import alrp_loss
from paploss.losses.ap_loss import ap_loss
from paploss.losses.rank_sort_loss import rank_sort_loss

F64 = torch.float64
TOLERANCE = dict(rtol=1e-12, atol=1e-12)

#: name -> f(logits, targets, per-positive values) -> scalar loss.
LOSSES = {
    "ap": lambda s, t, q: ap_loss(s, t),
    "ap_narrow": lambda s, t, q: ap_loss(s, t, delta=0.1),
    "alrp": lambda s, t, q: sum(alrp_loss(s, t, 2 * q)),
    "alrp_cls": lambda s, t, q: alrp_loss(s, t, 2 * q)[0],
    "rs": lambda s, t, q: rank_sort_loss(s, t, q),
    "rs_exact_step": lambda s, t, q: rank_sort_loss(s, t, q, delta=0.0),
}


def _case(name: str, seed: int = 0):
    """``(logits, targets, per-positive values)`` in float64 for the named case."""
    generator = torch.Generator().manual_seed(seed)
    num = {"large": 30_000, "one_positive": 500, "tiny": 3}.get(name, 400)
    logits = torch.randn(num, generator=generator, dtype=F64)
    draw = torch.rand(num, generator=generator)
    targets = torch.where(draw < 0.15, 1, torch.where(draw < 0.25, -1, 0)).to(torch.int8)
    quality = torch.rand(num, generator=generator, dtype=F64)
    if name == "ties":  # logits on a coarse grid, qualities tied too
        logits = torch.round(logits * 2) / 2
        quality = torch.round(quality * 4) / 4
    elif name == "no_positives":
        targets[targets == 1] = 0
    elif name == "all_ignored":
        targets[:] = -1
    elif name == "one_positive":
        targets[targets == 1] = 0
        targets[num // 3] = 1
    elif name == "only_positives":
        targets[:] = 1
    elif name == "large":
        targets = torch.where(draw < 0.01, 1, torch.where(draw < 0.05, -1, 0)).to(torch.int8)
    elif name == "tiny":
        targets = torch.tensor([1, 0, -1], dtype=torch.int8)
    return logits, targets, quality * (targets == 1)


CASES = ["random", "ties", "no_positives", "all_ignored", "one_positive", "only_positives"]
CASES += ["large", "tiny"]


def _loss_and_grads(loss_fn, logits, targets, quality):
    s = logits.clone().requires_grad_(True)
    q = quality.clone().requires_grad_(True)
    loss = loss_fn(s, targets, q)
    grads = torch.autograd.grad(loss, (s, q), allow_unused=True)
    return [loss.detach()] + [torch.zeros_like(s) if g is None else g for g in grads]


def _both_ways(loss_fn, logits, targets, quality, monkeypatch):
    gathered = _loss_and_grads(loss_fn, logits, targets, quality)
    with monkeypatch.context() as patch:
        patch.setattr(devices_module, "INDEXED_DEVICES", ())
        fixed = _loss_and_grads(loss_fn, logits, targets, quality)
    return gathered, fixed


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("case", CASES)
def test_fixed_shapes_give_the_values_and_gradients_of_the_cpu_way(loss, case, monkeypatch):
    logits, targets, quality = _case(case)
    gathered, fixed = _both_ways(LOSSES[loss], logits, targets, quality, monkeypatch)
    for a, b in zip(gathered, fixed):
        torch.testing.assert_close(a, b, **TOLERANCE)


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("seed", range(4))
def test_fixed_shapes_agree_on_random_problems(loss, seed, monkeypatch):
    logits, targets, quality = _case("ties" if seed % 2 else "random", seed)
    gathered, fixed = _both_ways(LOSSES[loss], logits, targets, quality, monkeypatch)
    for a, b in zip(gathered, fixed):
        torch.testing.assert_close(a, b, **TOLERANCE)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_fixed_shapes_never_read_values_away_from_the_positives(loss, monkeypatch):
    """Per-positive values are read at the positives only: junk elsewhere (NaN, out of range)
    changes nothing in either way."""
    logits, targets, quality = _case("random")
    junk = torch.where(targets == 1, quality, torch.full_like(quality, float("nan")))
    gathered, fixed = _both_ways(LOSSES[loss], logits, targets, junk, monkeypatch)
    reference = _loss_and_grads(LOSSES[loss], logits, targets, quality)
    for a, b, c in zip(gathered, fixed, reference):
        torch.testing.assert_close(b, a, **TOLERANCE)
        torch.testing.assert_close(b, c, **TOLERANCE)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_fixed_shapes_with_no_entries_give_zero(loss, monkeypatch):
    monkeypatch.setattr(devices_module, "INDEXED_DEVICES", ())
    empty = torch.zeros(0, dtype=F64)
    value, grad_logits, grad_quality = _loss_and_grads(
        LOSSES[loss], empty, torch.zeros(0, dtype=torch.int8), empty
    )
    assert value.item() == 0.0 and grad_logits.numel() == 0 and grad_quality.numel() == 0
