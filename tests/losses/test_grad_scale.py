"""Gradient scaling: identity forward, exactly lambda times the gradient backward."""

import math

import pytest
import torch

from paploss.losses import (
    GradScale,
    PAPFunctions,
    lambda_from_theta,
    pap_loss_components,
    scale_grad,
    theta_from_lambda,
)


@pytest.mark.parametrize("lam", [0.1, 1.0, 4.1231, torch.tensor(7.5, dtype=torch.float64)])
def test_forward_identity_backward_scaled(lam):
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(4, 3, dtype=torch.float64)
    y = scale_grad(x, lam)
    assert torch.equal(y, x)
    (grad,) = torch.autograd.grad(y, x, upstream)
    assert torch.equal(grad, upstream * lam)


def test_lambda_scales_only_the_quality_gradient_of_the_pap_loss():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(-1, 2, (300,), generator=g)
    quality = torch.rand(300, generator=g, dtype=torch.float64, requires_grad=True)
    functions = PAPFunctions.published("retinanet")
    lam = 4.1231

    plain = pap_loss_components(logits, targets, quality, functions)
    plain_grads = torch.autograd.grad(plain.loss, (logits, quality))
    scaled = pap_loss_components(logits, targets, scale_grad(quality, lam), functions)
    scaled_grads = torch.autograd.grad(scaled.loss, (logits, quality))

    for a, b in zip(plain, scaled):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))  # values unchanged
    assert torch.equal(scaled_grads[0], plain_grads[0])  # logits gradient unchanged
    assert torch.equal(scaled_grads[1], plain_grads[1] * lam)  # quality gradient times lambda


def test_no_gradient_to_lambda_tensor():
    lam = torch.tensor(2.0, requires_grad=True)
    x = torch.ones(3, requires_grad=True)
    scale_grad(x, lam).sum().backward()
    assert lam.grad is None
    assert torch.equal(x.grad, torch.full((3,), 2.0))


@pytest.mark.parametrize(
    "lam", [0.0, -1.0, float("nan"), float("inf"), torch.ones(2), "big", torch.tensor(-2.0)]
)
def test_bad_lambda_raises(lam):
    with pytest.raises(ValueError, match="lam"):
        scale_grad(torch.ones(2), lam)


def test_lambda_from_theta():
    assert lambda_from_theta(0.5) == 1.0
    assert lambda_from_theta(0.0) == pytest.approx(0.1)
    assert lambda_from_theta(1.0) == pytest.approx(10.0)
    theta = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(lambda_from_theta(theta), 10 ** (2 * theta - 1))
    for lam in (0.1, 1.695, 4.1231, 10.0):
        assert lambda_from_theta(theta_from_lambda(lam)) == pytest.approx(lam)
    assert theta_from_lambda(4.1231) == pytest.approx((math.log10(4.1231) + 1) / 2)
    torch.testing.assert_close(theta_from_lambda(lambda_from_theta(theta)), theta)


@pytest.mark.parametrize("theta", [-0.1, 1.5, torch.tensor([0.5, 2.0])])
def test_theta_out_of_range_raises(theta):
    with pytest.raises(ValueError, match="theta"):
        lambda_from_theta(theta)


@pytest.mark.parametrize("lam", [0.05, 11.0, torch.tensor([1.0, 20.0])])
def test_lambda_out_of_range_raises(lam):
    with pytest.raises(ValueError, match="lam"):
        theta_from_lambda(lam)


def test_grad_scale_module_is_per_instance():
    a, b = GradScale(2.0), GradScale.from_theta(0.0)
    assert a.lam == 2.0 and b.lam == pytest.approx(0.1)
    x = torch.ones(2, requires_grad=True)
    a(x).sum().backward()
    assert torch.equal(x.grad, torch.full((2,), 2.0))
    assert "lam=2" in repr(a)
