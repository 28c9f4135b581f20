"""Monotone piecewise-linear functions, the theta <-> knots transform and the shipped parameters."""

import numpy as np
import pytest
import torch

from paploss.losses import (
    FUNCTION_NAMES,
    IDENTITY_THETA,
    MIN_KNOT_SPACING,
    PAPFunctions,
    PiecewiseLinear,
    knots_to_theta,
    published_grad_scale,
    published_names,
    theta_to_knots,
)
from paploss.losses.published import PUBLISHED_KNOTS

DIAGONAL = [[0.2, 0.2], [0.4, 0.4], [0.6, 0.6], [0.8, 0.8]]


def test_function_names_follow_the_published_flat_order():
    assert FUNCTION_NAMES == ("H2", "I2", "I3", "I1", "H1")


@pytest.mark.parametrize("min_spacing", [0.0, MIN_KNOT_SPACING, 0.05])
def test_identity_theta_gives_the_diagonal(min_spacing):
    knots = theta_to_knots(torch.tensor(IDENTITY_THETA, dtype=torch.float64), min_spacing)
    torch.testing.assert_close(knots, torch.tensor(DIAGONAL, dtype=torch.float64))


def test_stick_breaking_by_hand():
    # x: p1 = .5, p2 = .5 + .5 * .5 = .75, p3 = .75 + 0 = .75 (+ spacing), p4 = .75 + 1 * .25 = 1
    # y: p1 = 0,  p2 = 0 + .2 * 1 = .2,    p3 = .2 + .5 * .8 = .6,        p4 = .6 + .25 * .4 = .7
    theta = torch.tensor([0.5, 0.0, 0.5, 0.2, 0.0, 0.5, 1.0, 0.25], dtype=torch.float64)
    knots = theta_to_knots(theta, min_spacing=0.0)
    expected = torch.tensor([[0.5, 0.0], [0.75, 0.2], [0.75, 0.6], [1.0, 0.7]], dtype=torch.float64)
    torch.testing.assert_close(knots, expected)
    # With a spacing d, x_m = m d + (1 - 5 d) p_m keeps every segment at least d wide.
    spaced = theta_to_knots(theta, min_spacing=0.01)
    torch.testing.assert_close(spaced[:, 0], torch.arange(1, 5) * 0.01 + 0.95 * expected[:, 0])
    torch.testing.assert_close(spaced[:, 1], expected[:, 1])


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_extreme_theta_keeps_a_minimum_spacing(value):
    theta = torch.full((3, 8), value, dtype=torch.float64)
    knots = theta_to_knots(theta)
    xs = torch.cat([torch.zeros(3, 1), knots[..., 0], torch.ones(3, 1)], dim=1)
    assert bool((xs.diff(dim=1) >= MIN_KNOT_SPACING * (1 - 1e-9)).all())
    PAPFunctions.from_theta(theta[0].expand(5, 8))  # valid functions (no zero-width segment)


def test_theta_round_trip_and_batch_shapes():
    g = torch.Generator().manual_seed(0)
    theta = torch.rand(2, 5, 8, generator=g, dtype=torch.float64) * 0.98 + 0.01
    knots = theta_to_knots(theta)
    assert knots.shape == (2, 5, 4, 2)
    assert bool((knots[..., 1:, 0] > knots[..., :-1, 0]).all())
    assert bool((knots[..., 1:, 1] >= knots[..., :-1, 1]).all())
    torch.testing.assert_close(knots_to_theta(knots), theta, rtol=0, atol=1e-12)


def test_theta_to_knots_is_differentiable():
    theta = torch.full((8,), 0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(theta_to_knots, (theta,))


@pytest.mark.parametrize("name", sorted(PUBLISHED_KNOTS))
def test_published_knots_round_trip_through_theta(name):
    functions = PAPFunctions.published(name)
    theta = functions.to_theta()
    assert theta.shape == (5, 8) and bool(((theta >= 0) & (theta <= 1)).all())
    back = PAPFunctions.from_theta(theta).to_dict()
    for fn in FUNCTION_NAMES:
        np.testing.assert_allclose(back[fn], PUBLISHED_KNOTS[name][fn], rtol=0, atol=1e-12)


def test_used_up_stick_maps_to_zero_theta():
    knots = torch.tensor([[0.3, 1.0], [0.5, 1.0], [0.7, 1.0], [0.9, 1.0]], dtype=torch.float64)
    theta = knots_to_theta(knots, min_spacing=0.0)
    torch.testing.assert_close(theta[1::2], torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(theta_to_knots(theta, min_spacing=0.0), knots)


@pytest.mark.parametrize(
    "theta",
    [torch.zeros(7), torch.zeros(()), torch.full((8,), 1.5), torch.full((8,), float("nan"))],
)
def test_bad_theta_raises(theta):
    with pytest.raises(ValueError, match="theta"):
        theta_to_knots(theta)


@pytest.mark.parametrize(
    "knots",
    [
        [[0.2, 0.2], [0.4, 0.4], [0.6, 0.6]],  # wrong shape
        [[0.4, 0.2], [0.2, 0.4], [0.6, 0.6], [0.8, 0.8]],  # x decreasing
        [[0.2, 0.5], [0.4, 0.4], [0.6, 0.6], [0.8, 0.8]],  # y decreasing
        [[0.2, 0.2], [0.2 + 1e-6, 0.4], [0.6, 0.6], [0.8, 0.8]],  # closer than the spacing
        [[0.2, 0.2], [0.4, 0.4], [0.6, 0.6], [0.8, 1.2]],  # out of range
    ],
)
def test_unreachable_knots_raise_in_knots_to_theta(knots):
    with pytest.raises(ValueError, match="knots"):
        knots_to_theta(torch.tensor(knots, dtype=torch.float64))


def test_piecewise_linear_evaluation():
    knots = [[0.2, 0.1], [0.4, 0.1], [0.5, 0.6], [0.9, 0.8]]
    f = PiecewiseLinear(knots)
    x = torch.linspace(-0.5, 1.5, 101, dtype=torch.float64)
    xs = [0.0] + [k[0] for k in knots] + [1.0]
    ys = [0.0] + [k[1] for k in knots] + [1.0]
    torch.testing.assert_close(f(x), torch.from_numpy(np.interp(x.numpy(), xs, ys)))
    # Any shape and dtype; float32 in, float32 out.
    assert f(torch.rand(3, 4)).shape == (3, 4) and f(torch.rand(3)).dtype == torch.float32
    # Autograd gives the segment slope: (0.6 - 0.1) / (0.5 - 0.4) = 5 inside (0.4, 0.5), right
    # slope exactly at a knot, 0 outside [0, 1] and at x = 1.
    x = torch.tensor([0.45, 0.4, 0.2, -1.0, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(f(x).sum(), x)
    torch.testing.assert_close(
        grad, torch.tensor([5.0, 5.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    )


def test_gap_knots_describe_the_function_of_the_logit_gap():
    f = PiecewiseLinear([[0.1, 0.3], [0.3, 0.35], [0.7, 0.4], [0.95, 0.9]])
    gap_x, gap_y = f.gap_knots()
    torch.testing.assert_close(gap_x[[0, -1]], torch.tensor([-1.0, 1.0], dtype=torch.float64))
    d = torch.linspace(-3, 3, 61, dtype=torch.float64)
    expected = f(torch.clamp(d / 2 + 0.5, 0, 1))
    torch.testing.assert_close(torch.from_numpy(np.interp(d, gap_x, gap_y)), expected)


def test_identity_functions_are_the_identity():
    functions = PAPFunctions.identity()
    x = torch.rand(50, dtype=torch.float64)
    for name in FUNCTION_NAMES:
        torch.testing.assert_close(functions[name](x), x)
        assert functions[name] is getattr(functions, name)
    assert functions.to_dict() == {name: DIAGONAL for name in FUNCTION_NAMES}


def test_from_theta_rows_follow_function_names():
    theta = torch.tensor([IDENTITY_THETA] * 5, dtype=torch.float64)
    theta[0, 1] = 0.0  # first row is H2: its first knot moves down to y = 0
    functions = PAPFunctions.from_theta(theta)
    assert functions.to_dict()["H2"][0][1] == 0.0
    np.testing.assert_allclose(functions.to_dict()["H1"], DIAGONAL, atol=1e-12)


def test_to_dict_round_trip_and_plain_floats():
    functions = PAPFunctions.published("retinanet")
    as_dict = functions.to_dict()
    assert set(as_dict) == set(FUNCTION_NAMES)
    assert all(type(v) is float for knots in as_dict.values() for knot in knots for v in knot)
    assert PAPFunctions.from_knots(as_dict).to_dict() == as_dict
    assert as_dict["H2"][0] == [0.4182, 0.0277]


def test_functions_move_with_to():
    functions = PAPFunctions.identity().to(torch.float32)
    assert functions["H1"].knots_x.dtype == torch.float32
    assert [name for name, _ in functions.named_buffers()] == [
        f"{name}.{buffer}" for name in FUNCTION_NAMES for buffer in ("knots_x", "knots_y")
    ]
    if torch.cuda.is_available():
        moved = functions.to("cuda")
        assert moved["I1"].knots_y.device.type == "cuda"
        assert moved["I1"](torch.rand(4, device="cuda")).device.type == "cuda"


@pytest.mark.parametrize(
    "bad, message",
    [
        ([[0.2, 0.2], [0.4, 0.4], [0.6, 0.6]], "4 interior knots"),
        ([[0.2, 0.2], [0.4, 0.4], [0.6, 0.6], [0.6, 0.8]], "strictly increasing"),
        ([[0.0, 0.0], [0.4, 0.4], [0.6, 0.6], [0.8, 0.8]], "strictly increasing"),
        ([[0.2, 0.2], [0.4, 0.4], [0.6, 0.6], [1.0, 0.8]], "strictly increasing"),
        ([[0.2, 0.3], [0.4, 0.2], [0.6, 0.6], [0.8, 0.8]], "non-decreasing"),
        ([[0.2, 0.2], [0.4, 0.4], [0.6, 0.6], [0.8, 1.1]], r"\[0, 1\]"),
        ([[0.2, -0.1], [0.4, 0.4], [0.6, 0.6], [0.8, 0.8]], r"\[0, 1\]"),
        ([[0.2, float("nan")], [0.4, 0.4], [0.6, 0.6], [0.8, 0.8]], "finite"),
        ("not knots", "knots"),
    ],
)
def test_from_knots_validation_names_the_function(bad, message):
    knots = {name: DIAGONAL for name in FUNCTION_NAMES}
    knots["I3"] = bad
    with pytest.raises(ValueError, match=message) as info:
        PAPFunctions.from_knots(knots)
    assert str(info.value).startswith("I3")


def test_from_knots_requires_all_five_names():
    knots = {name: DIAGONAL for name in FUNCTION_NAMES if name != "H1"}
    with pytest.raises(ValueError, match="knots"):
        PAPFunctions.from_knots(knots)
    with pytest.raises(ValueError, match="knots"):
        PAPFunctions.from_knots({**knots, "H1": DIAGONAL, "H3": DIAGONAL})


@pytest.mark.parametrize("shape", [(8,), (5, 7), (4, 8)])
def test_from_theta_rejects_wrong_shapes(shape):
    with pytest.raises(ValueError, match="theta"):
        PAPFunctions.from_theta(torch.full(shape, 0.5))


def test_published_sets():
    assert published_names() == ["faster_rcnn_roi", "faster_rcnn_rpn", "retinanet"]
    assert published_grad_scale("retinanet") == 4.1231
    assert published_grad_scale("faster_rcnn_rpn") == 1.6950
    assert published_grad_scale("faster_rcnn_roi") == 7.1324
    rpn = PAPFunctions.published("faster_rcnn_rpn").to_dict()
    assert rpn["H2"][1] == [0.9068, 0.5120] and rpn["I1"][0] == [0.0045, 0.3599]
    with pytest.raises(ValueError, match="name"):
        PAPFunctions.published("yolo")
    with pytest.raises(ValueError, match="name"):
        published_grad_scale("yolo")
