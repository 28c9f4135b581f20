"""The PAP loss: hand-computed values, 1 - AP_w, fast == dense, CPU anchors == fixed-shape
anchors, gradcheck, edge cases, errors."""

import numpy as np
import pytest
import torch

import paploss.losses._devices as devices_module
from paploss.losses import (
    FUNCTION_NAMES,
    PAPFunctions,
    PiecewiseLinear,
    pap_loss,
    pap_loss_components,
    pap_loss_dense,
    pap_loss_dense_components,
    topk_valid_mask,
)

F64 = torch.float64
DIAGONAL = [[0.2, 0.2], [0.4, 0.4], [0.6, 0.6], [0.8, 0.8]]
# Exact step at x = 1/2 (logit gap 0) as a valid monotone piecewise-linear function: a segment of
# x-width 2 * 2**-20 around 1/2. It is exactly 0 / 1 for logit gaps beyond 2**-19 in size and
# exactly 1/2 at a tie (0.5 +- 2**-20 are exact binary numbers), i.e. the step with H(0) = 1/2.
STEP_EPS = 2.0**-20
STEP = [[0.25, 0.0], [0.5 - STEP_EPS, 0.0], [0.5 + STEP_EPS, 1.0], [0.75, 1.0]]


def functions_with(**knots):
    return PAPFunctions.from_knots({name: knots.get(name, DIAGONAL) for name in FUNCTION_NAMES})


def loss_and_grads(loss_fn, logits, targets, quality, functions):
    logits = logits.detach().clone().requires_grad_(True)
    quality = quality.detach().clone().requires_grad_(True)
    components = loss_fn(logits, targets, quality, functions)
    grads = torch.autograd.grad(components.loss, (logits, quality), allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, (logits, quality))]
    return components, grads[0], grads[1]


BOTH = [pap_loss_components, pap_loss_dense_components]


@pytest.mark.parametrize("loss_fn", BOTH)
def test_hand_computed_single_positive(loss_fn):
    # Identity functions. Entries: A (s=1, positive, u=.5), B (s=.5, negative),
    # C (s=2.5, negative), D (s=1.2, ignored; its quality 7 is never read).
    # x_Aj = clamp((s_j - 1) / 2 + 1/2, 0, 1): A .5 (self), B .25, C 1 (1.25 clamped).
    # D_A = sum H1 = .5 + .25 + 1 = 1.75; weights 1 - I2(u): A .5, B 1, C 1.
    # N_A = .5 * .5 + .25 * 1 + 1 * 1 = 1.5; R_A = 1.5 / 1.75 = 6/7.
    # L = (1 - .5) + .5 * 6/7 = 1/2 + 3/7 = 13/14.
    logits = torch.tensor([1.0, 0.5, 2.5, 1.2], dtype=F64)
    targets = torch.tensor([1, 0, 0, -1])
    quality = torch.tensor([0.5, 0.9, 0.0, 7.0], dtype=F64)
    components, grad_logits, grad_quality = loss_and_grads(
        loss_fn, logits, targets, quality, PAPFunctions.identity()
    )
    assert components.num_positives == 1
    torch.testing.assert_close(components.loss, torch.tensor(13 / 14, dtype=F64))
    torch.testing.assert_close(components.localization, torch.tensor(0.5, dtype=F64))
    torch.testing.assert_close(components.ranking, torch.tensor(3 / 7, dtype=F64))
    torch.testing.assert_close(components.precision_error, torch.tensor(6 / 7, dtype=F64))
    assert not components.precision_error.requires_grad
    # dL/dN_A = I3(u) / D_A = .5 / 1.75 = 2/7. dN_A/ds_B = H2'(x) dx/ds_B v_B = 1 * 1/2 * 1;
    # C is saturated (no gradient); the self pair cancels; dN_A/ds_A = -1/2 (from B only).
    # So dL/ds = (-1/7, 1/7, 0, 0); the ignored D gets nothing.
    torch.testing.assert_close(grad_logits, torch.tensor([-1, 1, 0, 0], dtype=F64) / 7)
    # dL/du_A = -1 + N_A / D_A + u_A * dN_A/du_A / D_A = -1 + 6/7 + .5 * (-.5) / 1.75 = -2/7.
    torch.testing.assert_close(grad_quality, torch.tensor([-2 / 7, 0, 0, 0], dtype=F64))


@pytest.mark.parametrize("loss_fn", BOTH)
@pytest.mark.parametrize("h", ["identity", "step"])
def test_hand_computed_two_positives(loss_fn, h):
    # Logits p1=3 (u=.8), n=2, p2=1 (u=.6), m=0. All gaps between different entries are >= 1, so
    # the identity ramp equals the exact step here: H = 1 above, 0 below, 1/2 for the self pair.
    # p1: D = .5, N = .5 * (1 - .8) = .1            -> (1 - .8) + .8 * .1 / .5 = .36
    # p2: D = 1 + 1 + .5 = 2.5,
    #     N = 1 * (1 - .8) + 1 * 1 + .5 * (1 - .6) = 1.4 -> (1 - .6) + .6 * 1.4 / 2.5 = .736
    # L = (.36 + .736) / 2 = .548, localization = (.2 + .4) / 2 = .3, ranking = .248.
    # 1 - AP_w: precision_w(p1) = .5 * .8 / .5 = .8, precision_w(p2) = (.8 + 0 + .3) / 2.5 = .44,
    # AP_w = (.8 * .8 + .6 * .44) / 2 = .452 -> 1 - AP_w = .548.
    knots = DIAGONAL if h == "identity" else STEP
    functions = functions_with(H1=knots, H2=knots)
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=F64)
    targets = torch.tensor([1, 0, 1, 0])
    quality = torch.tensor([0.8, 0.0, 0.6, 0.0], dtype=F64)
    components, grad_logits, grad_quality = loss_and_grads(
        loss_fn, logits, targets, quality, functions
    )
    torch.testing.assert_close(components.loss, torch.tensor(0.548, dtype=F64))
    torch.testing.assert_close(components.localization, torch.tensor(0.3, dtype=F64))
    torch.testing.assert_close(components.ranking, torch.tensor(0.248, dtype=F64))
    # R1 = .1 / .5 = .2, R2 = 1.4 / 2.5 = .56: mean precision error .38.
    torch.testing.assert_close(components.precision_error, torch.tensor(0.38, dtype=F64))
    # dL/du1 = 1/2 [-1 + N1/D1 + u1 (-.5)/D1 + u2 (-1)/D2] = 1/2 [-1 + .2 - .8 - .24] = -.92
    # dL/du2 = 1/2 [-1 + N2/D2 + u2 (-.5)/D2] = 1/2 [-1 + .56 - .12] = -.28
    torch.testing.assert_close(grad_quality, torch.tensor([-0.92, 0, -0.28, 0], dtype=F64))
    if h == "identity":
        # Gaps of exactly +-1 sit on the ramp's ends; the derivative is the right derivative in
        # the gap: 1/2 at gap -1 (x = 0, start of the ramp), 0 at gap +1 (x = 1, end of it).
        # dL/dN1 = I3(u1) / (|P| D1) = .8, dL/dN2 = .6 / (2 * 2.5) = .12.
        # N1 gets 1/2 from n (gap -1); N2 gets 1/2 from m (gap -1), 0 from n (gap +1).
        # ds = (-.8 * .5, .8 * .5, -.12 * .5, .12 * .5)
        expected = torch.tensor([-0.4, 0.4, -0.06, 0.06], dtype=F64)
        torch.testing.assert_close(grad_logits, expected)
    else:
        # Flat away from gap 0; the self pairs on the steep segment (slope 2**18) cancel up to
        # float64 rounding.
        torch.testing.assert_close(grad_logits, torch.zeros(4, dtype=F64), rtol=0, atol=1e-9)


def weighted_ap_by_sorting(logits, targets, quality):
    """AP_w = 1/|P| sum_i u_i sum_j H(s_j - s_i) u_j / sum_j H(s_j - s_i), H the step with
    H(0) = 1/2, over non-ignored entries; computed from a descending sort and tie groups."""
    keep = targets != -1
    s, t, q = logits[keep], targets[keep], quality[keep]
    u = np.where(t == 1, q, 0.0)
    order = np.argsort(-s, kind="stable")
    s, t, u = s[order], t[order], u[order]
    u_before = np.concatenate([[0.0], np.cumsum(u)])
    ap, num_positives, start = 0.0, int((t == 1).sum()), 0
    while start < len(s):
        end = start
        while end < len(s) and s[end] == s[start]:
            end += 1
        # Entries strictly above count 1, ties (the entry itself included) count 1/2.
        rank = start + (end - start) / 2
        matched = u_before[start] + (u_before[end] - u_before[start]) / 2
        for k in range(start, end):
            if t[k] == 1:
                ap += u[k] * matched / rank
        start = end
    return ap / num_positives


@pytest.mark.parametrize("seed", range(6))
def test_exact_step_reproduces_one_minus_weighted_ap(seed):
    g = np.random.default_rng(seed)
    num = int(g.integers(5, 300))
    # Logits on a 1/8 grid: many exact ties, all other gaps far beyond the step's width.
    logits = g.integers(-20, 20, num) / 8.0
    targets = g.choice([-1, 0, 0, 1], num)
    targets[g.integers(num)] = 1
    quality = g.random(num)
    expected = 1 - weighted_ap_by_sorting(logits, targets, quality)
    functions = functions_with(H1=STEP, H2=STEP)
    args = (torch.tensor(logits), torch.tensor(targets), torch.tensor(quality), functions)
    torch.testing.assert_close(pap_loss(*args), torch.tensor(expected, dtype=F64))
    torch.testing.assert_close(pap_loss_dense(*args), torch.tensor(expected, dtype=F64))


def random_theta_functions(seed, low=0.0, high=1.0):
    g = torch.Generator().manual_seed(seed)
    return PAPFunctions.from_theta(low + (high - low) * torch.rand(5, 8, generator=g, dtype=F64))


def make_inputs(seed, num, positive_fraction=0.1, ignored_fraction=0.1, logits="normal"):
    g = torch.Generator().manual_seed(seed)
    if logits == "normal":
        values = 2 * torch.randn(num, generator=g, dtype=F64)
    elif logits == "ties":  # half-integers: ties and gaps exactly on identity breakpoints
        values = torch.randint(-6, 7, (num,), generator=g).to(F64) / 2
    else:  # all equal
        values = torch.full((num,), 0.3, dtype=F64)
    r = torch.rand(num, generator=g, dtype=F64)
    targets = torch.zeros(num, dtype=torch.long)
    targets[r < positive_fraction] = 1
    targets[(r >= positive_fraction) & (r < positive_fraction + ignored_fraction)] = -1
    quality = torch.rand(num, generator=g, dtype=F64)
    return values, targets, quality


FAST_VS_DENSE_CASES = [
    # (seed, M, positive fraction, ignored fraction, logits kind, functions)
    (0, 50, 0.2, 0.1, "normal", "identity"),
    (1, 200, 0.1, 0.2, "ties", "identity"),
    (2, 200, 0.3, 0.0, "ties", "retinanet"),
    (3, 500, 0.05, 0.1, "normal", "faster_rcnn_rpn"),
    (4, 500, 0.05, 0.1, "normal", "faster_rcnn_roi"),
    (5, 300, 0.2, 0.1, "equal", "retinanet"),
    (6, 300, 0.2, 0.1, "equal", "identity"),
    (7, 400, 0.1, 0.1, "normal", "random"),
    (8, 400, 0.1, 0.1, "ties", "random"),
    (9, 400, 0.1, 0.1, "normal", "extreme"),
    (10, 100, 0.0, 0.0, "normal", "retinanet"),  # single positive (set below)
    (11, 100, 0.3, 0.6, "ties", "step"),
    (12, 1, 1.0, 0.0, "normal", "retinanet"),
    (13, 3000, 0.1, 0.05, "normal", "retinanet"),
    (14, 100_000, 0.0003, 0.05, "normal", "retinanet"),
]


def build_functions(kind, seed):
    if kind == "identity":
        return PAPFunctions.identity()
    if kind == "random":
        return random_theta_functions(seed)
    if kind == "extreme":  # theta near 0 / 1: steep segments of minimum width
        return (
            random_theta_functions(seed, 0.0, 0.05)
            if seed % 2
            else random_theta_functions(seed, 0.95, 1.0)
        )
    if kind == "step":
        return functions_with(H1=STEP, H2=STEP)
    return PAPFunctions.published(kind)


@pytest.mark.parametrize("case", FAST_VS_DENSE_CASES, ids=lambda c: f"seed{c[0]}-M{c[1]}-{c[4]}")
def test_fast_equals_dense(case):
    seed, num, positive_fraction, ignored_fraction, kind, function_kind = case
    logits, targets, quality = make_inputs(seed, num, positive_fraction, ignored_fraction, kind)
    if positive_fraction == 0.0:
        targets[num // 2] = 1
    functions = build_functions(function_kind, seed)
    fast, fast_logits, fast_quality = loss_and_grads(
        pap_loss_components, logits, targets, quality, functions
    )
    dense, dense_logits, dense_quality = loss_and_grads(
        pap_loss_dense_components, logits, targets, quality, functions
    )
    assert fast.num_positives == dense.num_positives == int((targets == 1).sum())
    for a, b in zip(fast[:3], dense[:3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(fast_logits, dense_logits, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(fast_quality, dense_quality, rtol=1e-5, atol=1e-12)
    assert bool((fast_logits[targets == -1] == 0).all())
    assert bool((fast_quality[targets != 1] == 0).all())


def test_fast_equals_dense_float32():
    logits, targets, quality = make_inputs(20, 2000, 0.05, 0.1)
    functions = PAPFunctions.published("retinanet")
    fast = loss_and_grads(pap_loss_components, logits.float(), targets, quality.float(), functions)
    exact = loss_and_grads(pap_loss_components, logits, targets, quality, functions)
    assert fast[0].loss.dtype == torch.float32 and fast[1].dtype == torch.float32
    torch.testing.assert_close(fast[0].loss.double(), exact[0].loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[1].double(), exact[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fast[2].double(), exact[2], rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_equals_dense_on_cuda():
    logits, targets, quality = make_inputs(21, 5000, 0.05, 0.1)
    functions = PAPFunctions.published("retinanet").to("cuda")
    on_gpu = loss_and_grads(
        pap_loss_components, logits.cuda(), targets.cuda(), quality.cuda(), functions
    )
    on_cpu = loss_and_grads(
        pap_loss_dense_components, logits, targets, quality, functions.to("cpu")
    )
    torch.testing.assert_close(on_gpu[0].loss.cpu(), on_cpu[0].loss, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(on_gpu[1].cpu(), on_cpu[1], rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(on_gpu[2].cpu(), on_cpu[2], rtol=1e-5, atol=1e-12)


def test_gradcheck_with_h1_flat_over_all_gaps():
    """H1 is stop-gradient, so the loss gradient is not the derivative of the loss value and
    finite differences of the value disagree with it in general. Here H1 is constant (0.3) for
    x in [0.2, 0.8], i.e. logit gaps below 0.6 in size, and all logits lie within 0.25 of each
    other: H1 has zero slope at every pair, so stop-gradient changes nothing and gradcheck of the
    whole loss (fast and dense, w.r.t. logits and quality) is a valid check of both backwards."""
    g = torch.Generator().manual_seed(30)
    num = 24
    logits = (0.25 * torch.rand(num, generator=g, dtype=F64)).requires_grad_(True)
    targets = torch.randint(-1, 2, (num,), generator=g)
    targets[:3] = torch.tensor([1, 0, -1])
    quality = (0.05 + 0.9 * torch.rand(num, generator=g, dtype=F64)).requires_grad_(True)
    flat_h1 = [[0.2, 0.3], [0.4, 0.3], [0.6, 0.3], [0.8, 0.3]]
    retinanet = PAPFunctions.published("retinanet").to_dict()
    functions = PAPFunctions.from_knots({**retinanet, "H1": flat_h1})
    for loss_fn in (pap_loss, pap_loss_dense):
        assert torch.autograd.gradcheck(
            lambda s, q: loss_fn(s, targets, q, functions), (logits, quality)
        )


@pytest.mark.parametrize("loss_fn", [pap_loss, pap_loss_dense])
def test_gradcheck_quality_with_published_functions(loss_fn):
    """H1 does not depend on the qualities, so w.r.t. quality the stop-gradient is irrelevant and
    gradcheck applies with any functions."""
    logits, targets, quality = make_inputs(31, 60, 0.3, 0.1)
    quality = quality.clamp(0.02, 0.98).requires_grad_(True)
    functions = PAPFunctions.published("faster_rcnn_roi")
    assert torch.autograd.gradcheck(lambda q: loss_fn(logits, targets, q, functions), (quality,))


def test_logit_gradient_treats_h1_as_constant():
    """The logits' gradient equals that of sum H2(.) v / D with the denominators D frozen."""
    logits, targets, quality = make_inputs(32, 40, 0.3, 0.0)
    functions = PAPFunctions.published("retinanet")
    _, grad_logits, _ = loss_and_grads(pap_loss_components, logits, targets, quality, functions)
    # Manual formula with frozen denominators, differentiated by autograd.
    s = logits.clone().requires_grad_(True)
    pos = targets == 1
    u = quality[pos]
    v = torch.ones_like(s)
    v[pos] = 1 - functions["I2"](u)
    x = torch.clamp((s[None, :] - s[pos][:, None]) / 2 + 0.5, 0, 1)
    frozen = functions["H1"](x.detach()).sum(dim=1)
    ranking = (functions["I3"](u) * (functions["H2"](x) * v).sum(dim=1) / frozen).sum()
    (expected,) = torch.autograd.grad(ranking / (int(pos.sum()) + 1e-8), s)
    torch.testing.assert_close(grad_logits, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss_fn", BOTH)
@pytest.mark.parametrize("targets", [[0, 0, -1, 0], [-1, -1, -1, -1], []])
def test_no_positives_gives_zero_with_gradient_path(loss_fn, targets):
    targets = torch.tensor(targets, dtype=torch.long)
    logits = torch.randn(len(targets), dtype=F64)
    quality = torch.rand(len(targets), dtype=F64)
    components, grad_logits, grad_quality = loss_and_grads(
        loss_fn, logits, targets, quality, PAPFunctions.published("retinanet")
    )
    assert components.num_positives == 0
    assert components.loss.item() == 0.0 and components.loss.requires_grad
    assert torch.equal(grad_logits, torch.zeros_like(logits))
    assert torch.equal(grad_quality, torch.zeros_like(quality))


@pytest.mark.parametrize("loss_fn", BOTH)
def test_components_add_up(loss_fn):
    logits, targets, quality = make_inputs(33, 300, 0.1, 0.1)
    functions = PAPFunctions.published("faster_rcnn_rpn")
    components = loss_fn(logits, targets, quality, functions)
    torch.testing.assert_close(components.loss, components.localization + components.ranking)
    u = quality[targets == 1]
    torch.testing.assert_close(
        components.localization, (1 - functions["I1"](u)).sum() / (len(u) + 1e-8)
    )


def test_quality_only_read_at_positives_and_ignored_logits_do_not_matter():
    logits, targets, quality = make_inputs(34, 200, 0.1, 0.2)
    functions = PAPFunctions.published("retinanet")
    reference = pap_loss(logits, targets, quality, functions)
    changed_quality = quality.clone()
    changed_quality[targets != 1] = float("nan")  # never read
    changed_logits = logits.clone()
    changed_logits[targets == -1] += 100.0
    for loss_fn in (pap_loss, pap_loss_dense):
        torch.testing.assert_close(
            loss_fn(changed_logits, targets, changed_quality, functions), reference
        )


def test_degenerate_h1_stays_finite():
    """H1(1/2) = 0 lets a top-ranked positive have an empty H1 sum; the sum is floored."""
    h1 = [[0.6, 0.0], [0.7, 0.0], [0.8, 0.0], [0.9, 0.5]]
    functions = functions_with(H1=h1)
    logits = torch.tensor([5.0, 0.0, -1.0], dtype=F64)
    targets = torch.tensor([1, 0, 1])
    quality = torch.tensor([0.5, 0.0, 0.5], dtype=F64)
    fast, fast_logits, fast_quality = loss_and_grads(
        pap_loss_components, logits, targets, quality, functions
    )
    dense = pap_loss_dense_components(logits, targets, quality, functions)
    assert torch.isfinite(fast.loss) and bool(torch.isfinite(fast_logits).all())
    assert bool(torch.isfinite(fast_quality).all())
    torch.testing.assert_close(fast.loss, dense.loss)


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(targets=torch.tensor([1, 0, 0])), "targets"),
        (dict(targets=torch.tensor([1, 0, 2, 0])), "targets"),
        (dict(quality=torch.tensor([1.5, 0.0, 0.0, 0.0], dtype=F64)), "quality"),
        (dict(quality=torch.tensor([-0.1, 0.0, 0.0, 0.0], dtype=F64)), "quality"),
        (dict(quality=torch.zeros(5, dtype=F64)), "quality"),
        (dict(logits=torch.tensor([0.0, float("nan"), 1.0, 2.0], dtype=F64)), "logits"),
        (dict(logits=torch.zeros(2, 2, dtype=F64)), "logits"),
        (dict(logits=torch.tensor([0, 1, 2, 3])), "logits"),
        (dict(functions={"H1": DIAGONAL}), "functions"),
    ],
)
@pytest.mark.parametrize("loss_fn", [pap_loss, pap_loss_dense])
def test_bad_inputs_raise_value_error_naming_the_argument(change, name, loss_fn):
    args = dict(
        logits=torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=F64),
        targets=torch.tensor([1, 0, 0, -1]),
        quality=torch.tensor([0.5, 0.0, 0.0, 0.0], dtype=F64),
        functions=PAPFunctions.identity(),
    )
    args.update(change)
    with pytest.raises(ValueError, match=name):
        loss_fn(**args)


def test_functions_on_other_dtype_are_cast():
    """float32 functions (e.g. after model.float()) evaluate in the logits' dtype."""
    logits, targets, quality = make_inputs(35, 100)
    f64 = PAPFunctions.published("retinanet")
    f32 = PAPFunctions.published("retinanet").float()
    value = pap_loss(logits, targets, quality, f32)
    assert value.dtype == F64
    torch.testing.assert_close(value, pap_loss(logits, targets, quality, f64), rtol=1e-6, atol=0)


def test_custom_piecewise_linear_functions_are_accepted():
    functions = PAPFunctions(
        {name: PiecewiseLinear(DIAGONAL, name=name) for name in FUNCTION_NAMES}
    )
    logits, targets, quality = make_inputs(36, 50)
    torch.testing.assert_close(
        pap_loss(logits, targets, quality, functions),
        pap_loss(logits, targets, quality, PAPFunctions.identity()),
    )


# ---- Top-k truncation: the j-sums over the N largest valid logits only ----------------------


def topk_mask_by_counting(logits, valid, topk):
    """Readable rule: a valid entry's position is the number of valid entries with a larger
    logit, plus those with an equal logit and a lower index; the top-k are positions < topk."""
    logits, valid = logits.tolist(), valid.tolist()
    mask = []
    for k, (s_k, v_k) in enumerate(zip(logits, valid)):
        position = sum(
            1
            for j, (s_j, v_j) in enumerate(zip(logits, valid))
            if v_j and (s_j > s_k or (s_j == s_k and j < k))
        )
        mask.append(bool(v_k) and (topk == 0 or position < topk))
    return torch.tensor(mask)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("topk", [0, 1, 7, 30, 79, 80, 200])
def test_topk_mask_takes_the_largest_valid_logits_lower_index_first(seed, topk):
    logits, targets, _ = make_inputs(seed, 100, 0.1, 0.2, logits="ties" if seed % 2 else "normal")
    valid = targets != -1
    mask = topk_valid_mask(logits, valid, topk)
    assert torch.equal(mask, topk_mask_by_counting(logits, valid, topk))
    assert int(mask.sum()) == (int(valid.sum()) if topk == 0 else min(topk, int(valid.sum())))
    assert not bool((mask & ~valid).any())


def test_topk_boundary_tie_goes_to_the_lower_index():
    logits = torch.tensor([1.0, 2.0, 1.0, 1.0, 0.0], dtype=F64)
    valid = torch.tensor([True, True, False, True, True])
    assert topk_valid_mask(logits, valid, 2).tolist() == [True, True, False, False, False]
    assert topk_valid_mask(logits, valid, 3).tolist() == [True, True, False, True, False]
    assert topk_valid_mask(logits.flip(0), valid.flip(0), 2).tolist() == [
        False,
        True,
        False,
        True,
        False,
    ]


@pytest.mark.parametrize("loss_fn", BOTH)
def test_topk_hand_computed_positive_outside_the_top_k(loss_fn):
    # Identity functions, topk = 2. Entries: A (2.5, negative), B (2, positive, u = .5),
    # C (0, positive, u = .5), D (1, negative), E (5, ignored), F (2, negative: ties with B at the
    # boundary and loses, its index being higher). The j-sums run over {A, B}; C is still an i.
    # B: x_BA = .75, x_BB = .5 -> D_B = 1.25, N_B = .75 * 1 + .5 * .5 = 1, R_B = .8.
    # C: x_CA = x_CB = 1 (clamped) -> D_C = 2, N_C = 1 + 1 * .5 = 1.5, R_C = .75.
    # L = ((1 - .5) + .5 * .8 + (1 - .5) + .5 * .75) / 2 = .8875.
    logits = torch.tensor([2.5, 2.0, 0.0, 1.0, 5.0, 2.0], dtype=F64)
    targets = torch.tensor([0, 1, 1, 0, -1, 0])
    quality = torch.tensor([0.0, 0.5, 0.5, 0.0, 0.0, 0.0], dtype=F64)
    components, grad_logits, grad_quality = loss_and_grads(
        lambda *args: loss_fn(*args, topk=2), logits, targets, quality, PAPFunctions.identity()
    )
    assert components.num_positives == 2
    torch.testing.assert_close(components.loss, torch.tensor(0.8875, dtype=F64))
    torch.testing.assert_close(components.localization, torch.tensor(0.5, dtype=F64))
    # dL/ds_A = 1/2 * I3(u_B) / D_B * H2'(x_BA) / 2 * w_A = .5 * .4 * .5 = .1; B the negative of
    # that (its self pair cancels); C's pairs are saturated; D and F are outside the sums.
    torch.testing.assert_close(grad_logits, torch.tensor([0.1, -0.1, 0, 0, 0, 0], dtype=F64))
    # dL/du_B = 1/2 (-1 + R_B - u_B H2(x_BB) / D_B) + 1/2 (-u_C H2(x_CB) / D_C) = -.2 - .125;
    # dL/du_C = 1/2 (-1 + R_C): C is outside the sums, so no I2 term.
    torch.testing.assert_close(grad_quality, torch.tensor([0, -0.325, -0.125, 0, 0, 0], dtype=F64))


TOPK_CASES = [
    # (seed, M, positive fraction, ignored fraction, logits kind, functions, topk)
    (40, 200, 0.2, 0.1, "normal", "identity", 50),
    (41, 200, 0.2, 0.1, "ties", "identity", 50),  # ties at the boundary
    (42, 300, 0.3, 0.1, "ties", "retinanet", 17),
    (43, 300, 0.1, 0.2, "normal", "faster_rcnn_rpn", 1),
    (44, 300, 0.1, 0.2, "equal", "faster_rcnn_roi", 40),  # every logit tied
    (45, 400, 0.1, 0.1, "normal", "random", 120),
    (46, 400, 0.1, 0.1, "ties", "step", 120),
    (47, 400, 0.1, 0.1, "normal", "extreme", 10),
    (48, 3000, 0.05, 0.05, "normal", "retinanet", 1000),
    (49, 100, 0.2, 0.1, "normal", "retinanet", 10_000),  # N beyond the valid entries
]


@pytest.mark.parametrize("case", TOPK_CASES, ids=lambda c: f"seed{c[0]}-{c[4]}-{c[5]}-top{c[6]}")
def test_topk_fast_equals_dense_truncated_reference(case):
    seed, num, positive_fraction, ignored_fraction, kind, function_kind, topk = case
    logits, targets, quality = make_inputs(seed, num, positive_fraction, ignored_fraction, kind)
    functions = build_functions(function_kind, seed)
    truncated = lambda fn: lambda *args: fn(*args, topk=topk)  # noqa: E731
    fast, fast_logits, fast_quality = loss_and_grads(
        truncated(pap_loss_components), logits, targets, quality, functions
    )
    dense, dense_logits, dense_quality = loss_and_grads(
        truncated(pap_loss_dense_components), logits, targets, quality, functions
    )
    for a, b in zip(fast[:3], dense[:3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(fast_logits, dense_logits, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(fast_quality, dense_quality, rtol=1e-5, atol=1e-12)
    # Outside the top-k only positives (as i) get logit gradient; the sums' I2 only reaches
    # positives inside it.
    outside = ~topk_valid_mask(logits, targets != -1, topk)
    assert bool((fast_logits[outside & (targets != 1)] == 0).all())
    exact = pap_loss(logits, targets, quality, functions)
    if topk >= int((targets != -1).sum()):
        torch.testing.assert_close(fast.loss, exact, rtol=0, atol=0)
    elif positive_fraction > 0:
        assert not torch.allclose(fast.loss, exact)


ANCHOR_PATH_CASES = [(*case, 0) for case in FAST_VS_DENSE_CASES if case[1] <= 3000] + TOPK_CASES


@pytest.mark.parametrize("loss_fn", BOTH)
@pytest.mark.parametrize(
    "case", ANCHOR_PATH_CASES, ids=lambda c: f"seed{c[0]}-{c[4]}-{c[5]}-top{c[6]}"
)
def test_gathered_and_fixed_shape_anchors_agree(case, loss_fn, monkeypatch):
    """The positives gathered as anchors (the CPU way) and every entry as an anchor with the
    others masked out (the fixed-shape way of accelerators, forced here on the CPU): the same
    gradients bit for bit and the same values up to the order of the final sums."""
    seed, num, positive_fraction, ignored_fraction, kind, function_kind, topk = case
    logits, targets, quality = make_inputs(seed, num, positive_fraction, ignored_fraction, kind)
    if positive_fraction == 0.0:
        targets[num // 2] = 1
    functions = build_functions(function_kind, seed)
    truncated = lambda *args: loss_fn(*args, topk=topk)  # noqa: E731
    gathered = loss_and_grads(truncated, logits, targets, quality, functions)
    monkeypatch.setattr(devices_module, "INDEXED_DEVICES", ())
    fixed = loss_and_grads(truncated, logits, targets, quality, functions)
    assert torch.equal(gathered[0].num_positives, fixed[0].num_positives)
    for a, b in zip(gathered[0], fixed[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert torch.equal(gathered[1], fixed[1]) and torch.equal(gathered[2], fixed[2])


@pytest.mark.parametrize("loss_fn", BOTH)
@pytest.mark.parametrize("targets", [[0, 0, -1, 0], [-1, -1, -1, -1], []])
def test_fixed_shape_anchors_without_positives_give_zero(targets, loss_fn, monkeypatch):
    monkeypatch.setattr(devices_module, "INDEXED_DEVICES", ())
    targets = torch.tensor(targets, dtype=torch.long)
    logits = torch.randn(len(targets), dtype=F64)
    quality = torch.rand(len(targets), dtype=F64)
    components, grad_logits, grad_quality = loss_and_grads(
        loss_fn, logits, targets, quality, PAPFunctions.published("retinanet")
    )
    assert components.num_positives == 0 and components.loss.item() == 0.0
    assert torch.equal(grad_logits, torch.zeros_like(logits))
    assert torch.equal(grad_quality, torch.zeros_like(quality))


def published_formula(logits, targets, quality, functions, topk):
    """The published implementation's formula, restated: top-k of the valid logits by
    ``torch.topk`` (tie order unspecified, so only used without ties), ``[N, P]`` matrices."""
    pos = targets == 1
    pos_logits, pos_u = logits[pos], quality[pos]
    valid = targets != -1
    all_logits, all_u = logits[valid], quality[valid] * pos[valid]
    if all_logits.numel() > topk:
        all_logits, index = torch.topk(all_logits, topk)
        all_u = all_u[index]
    x = torch.clamp((all_logits[:, None] - pos_logits[None, :]) / 2 + 0.5, 0, 1)
    h1 = functions["H1"](x).detach()
    h2 = functions["H2"](x)
    i2 = functions["I2"](all_u)[:, None]
    i3 = functions["I3"](pos_u)[None, :]
    loss = (1 - functions["I1"](pos_u)) + (h2 * (1 - i2) * i3).sum(0) / h1.sum(0)
    return loss.sum() / (len(pos_logits) + 1e-8)


@pytest.mark.parametrize("topk", [5, 60, 250])
def test_topk_matches_the_published_formula_without_ties(topk):
    logits, targets, quality = make_inputs(50, 300, 0.15, 0.1)
    functions = PAPFunctions.published("retinanet")
    grads = []
    for loss_fn in (lambda *a: pap_loss(*a, topk=topk), lambda *a: published_formula(*a, topk)):
        s = logits.clone().requires_grad_(True)
        q = quality.clone().requires_grad_(True)
        value = loss_fn(s, targets, q, functions)
        grads.append((value, *torch.autograd.grad(value, (s, q))))
    for ours, published in zip(*grads):
        torch.testing.assert_close(ours, published, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("topk", [-1, 2.0, True, "100"])
@pytest.mark.parametrize("loss_fn", [pap_loss, pap_loss_dense])
def test_bad_topk_raises_value_error_naming_it(topk, loss_fn):
    logits, targets, quality = make_inputs(51, 20)
    with pytest.raises(ValueError, match="topk"):
        loss_fn(logits, targets, quality, PAPFunctions.identity(), topk=topk)
