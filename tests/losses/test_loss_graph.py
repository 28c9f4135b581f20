"""Loss graphs: text form, evaluation against hand-written torch, guarded numerics, canonical
form and the branches' inputs."""

import random

import pytest
import torch
import torch.nn.functional as F
from fvcore.nn import giou_loss

from paploss.losses.box_quality import paired_iou_giou
from paploss.losses.graph import (
    BINARY_OPERATORS,
    BOX,
    CE_EXPRESSION,
    CLS,
    GIOU_EXPRESSION,
    IOU_EXPRESSION,
    L1_EXPRESSION,
    OPERATORS,
    UNARY_OPERATORS,
    GraphSyntaxError,
    Node,
    box_inputs,
    box_loss,
    canonical,
    cls_loss,
    evaluate,
    parse,
    parse_branch,
    structural_hash,
)
from paploss.search.proposers.graph_mutation import GraphSpace, random_graph


def _boxes(n, generator, scale=100.0):
    corners = scale * torch.rand(n, 2, generator=generator, dtype=torch.float64)
    sizes = 1.0 + scale * torch.rand(n, 2, generator=generator, dtype=torch.float64)
    return torch.cat((corners, corners + sizes), dim=1)


def _cls_batch(seed=0, rows=12, classes=4):
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(rows, classes, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, classes + 1, (rows,), generator=generator)
    targets = F.one_hot(labels, classes + 1)[:, :classes].to(torch.float64)
    return logits, targets


def _box_batch(seed=0, rows=10):
    generator = torch.Generator().manual_seed(seed)
    gt = _boxes(rows, generator)
    pred = gt + 20 * torch.randn(rows, 4, generator=generator, dtype=torch.float64)
    pred = torch.cat((pred[:, :2], torch.max(pred[:, 2:], pred[:, :2] + 1)), dim=1)
    return pred, gt


# ---------------------------------------------------------------------------- text form


def test_parse_and_print():
    node = parse(" mul( neg(y) , log(x) ) ")
    assert node == Node("mul", (Node("neg", (Node("y"),)), Node("log", (Node("x"),))))
    assert str(node) == "mul(neg(y),log(x))"
    assert str(parse("add(x,1.0)")) == "add(x,1)"
    assert str(parse("add(x,0.25)")) == "add(x,0.25)"
    assert str(parse("mul(x,2.5e-3)")) == "mul(x,0.0025)"
    assert parse("mean_all(x)").children[0].is_input and parse("1").is_constant


@pytest.mark.parametrize(
    "text, match",
    [
        ("lg(x)", r"unknown operator 'lg' .*at position 0"),
        ("add(x)", r"'add' takes 2 operand\(s\), got 1"),
        ("neg(x,y)", r"'neg' takes 1 operand\(s\), got 2"),
        ("add(x,z)", r"unknown input 'z' \(known: x, y\) at position 6"),
        ("add(x,y", r"expected '\)', found the end"),
        ("add(x,y))", r"unexpected '\)' after a complete expression at position 8"),
        ("", r"expected an operator, an input or a number, found the end"),
        ("neg", r"operator 'neg' needs operands"),
        ("neg(-1)", r"found '-'"),
    ],
)
def test_parse_errors_are_one_line(text, match):
    with pytest.raises(GraphSyntaxError, match=match) as info:
        parse(text, CLS.inputs)
    assert "\n" not in str(info.value)


def test_branch_graph_must_read_the_predictions():
    with pytest.raises(ValueError, match="does not depend on the predictions"):
        parse_branch("mul(y,y)", CLS)
    with pytest.raises(ValueError, match="unknown input 'x'"):
        parse_branch("log(x)", BOX)
    assert str(parse_branch(GIOU_EXPRESSION, BOX)) == GIOU_EXPRESSION


def _spaces():
    deep = {"init_depth": (1, 5), "max_depth": 7, "max_nodes": 40}
    return [GraphSpace.for_branch(CLS, **deep), GraphSpace.for_branch(BOX, **deep)]


def test_round_trip_over_random_graphs():
    rng = random.Random(0)
    for _ in range(300):
        for space in _spaces():
            node = random_graph(rng, space)
            text = str(node)
            assert parse(text) == node
            assert str(parse(text)) == text
            assert parse(str(canonical(node))) == canonical(node)


# ---------------------------------------------------------------------------- evaluation


def test_ce_expression_is_sigmoid_cross_entropy_with_its_gradient():
    logits, targets = _cls_batch()
    logits.requires_grad_(True)
    graph = cls_loss(parse(CE_EXPRESSION), logits, targets)
    (graph_grad,) = torch.autograd.grad(graph, logits)
    reference = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / len(logits)
    (reference_grad,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(graph, reference, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(graph_grad, reference_grad, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(
    "expression, reference",
    [
        ("mul(neg(y),log(x))", lambda x, y: (-y * x.log()).sum(1).mean()),
        ("mean_c(square(sub(x,y)))", lambda x, y: ((x - y) ** 2).mean(1).mean()),
        ("mean_all(abs(sub(x,y)))", lambda x, y: (x - y).abs().mean()),
        ("max(x,tanh(y))", lambda x, y: torch.maximum(x, y.tanh()).sum(1).mean()),
        ("div(min(x,y),add(x,y))", lambda x, y: (torch.minimum(x, y) / (x + y)).sum(1).mean()),
        ("mul(sqrt(x),exp(neg(y)))", lambda x, y: (x.sqrt() * (-y).exp()).sum(1).mean()),
        ("recip(add(x,1))", lambda x, y: (1 / (x + 1)).sum(1).mean()),
    ],
)
def test_cls_expressions_match_hand_written_torch(expression, reference):
    logits, targets = _cls_batch(seed=1)
    torch.testing.assert_close(
        cls_loss(parse(expression), logits, targets),
        reference(logits.sigmoid(), targets),
        rtol=1e-9,
        atol=1e-9,
    )


def test_box_expressions_match_hand_written_torch():
    pred, gt = _box_batch()
    pred.requires_grad_(True)
    iou, giou = paired_iou_giou(pred, gt, eps=0.0)
    for expression, reference in [
        (GIOU_EXPRESSION, (1 - giou).mean()),
        (IOU_EXPRESSION, (1 - iou).mean()),
    ]:
        value = box_loss(parse(expression), pred, gt)
        torch.testing.assert_close(value, reference, rtol=1e-9, atol=1e-12)
        grads = [torch.autograd.grad(v, pred, retain_graph=True)[0] for v in (value, reference)]
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(
        box_loss(parse(GIOU_EXPRESSION), pred, gt),
        giou_loss(pred, gt, reduction="mean"),
        rtol=1e-6,
        atol=1e-9,
    )
    deltas, targets = torch.randn(10, 4, dtype=torch.float64), torch.randn(
        10, 4, dtype=torch.float64
    )
    torch.testing.assert_close(
        box_loss(parse(L1_EXPRESSION), pred, gt, deltas, targets),
        (deltas - targets).abs().sum(1).mean(),
    )


def test_box_areas_are_scale_free_and_ratios_unchanged():
    pred, gt = _box_batch(seed=2)
    inputs = box_inputs(pred, gt)
    assert all(v.shape == (10, 1) for v in inputs.values())
    assert all(bool(((v >= 0) & (v <= 1 + 1e-12)).all()) for v in inputs.values())
    torch.testing.assert_close(inputs["e"], torch.ones_like(inputs["e"]))
    for expression in ("sub(u,i)", GIOU_EXPRESSION, "square(sub(p,g))"):
        small = box_loss(parse(expression), pred, gt)
        large = box_loss(parse(expression), 10 * pred, 10 * gt)
        torch.testing.assert_close(small, large)
    with pytest.raises(ValueError, match="uses input 'd'"):
        box_loss(parse(L1_EXPRESSION), pred, gt)


def test_empty_branches_are_zero_and_connected():
    logits = torch.zeros(0, 4, requires_grad=True)
    loss = cls_loss(parse(CE_EXPRESSION), logits, torch.zeros(0, 4))
    assert loss.item() == 0.0 and loss.requires_grad
    boxes = torch.zeros(0, 4, requires_grad=True)
    assert box_loss(parse(GIOU_EXPRESSION), boxes, torch.zeros(0, 4)).item() == 0.0


# ---------------------------------------------------------------------------- numerics

#: Inputs at the singularities of log, div, recip and sqrt, and large magnitudes that the
#: dtype can hold after squaring or a division by the guard's eps.
EXTREMES = {
    torch.float32: [0.0, 1e-30, -1e-30, 1e-12, -1e-12, 1.0, -1.0, 1e6, -1e6, 1e12, -1e12],
    torch.float64: [0.0, 1e-300, -1e-300, 1e-12, -1e-12, 1.0, -1.0, 1e30, -1e30, 1e100, -1e100],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", UNARY_OPERATORS + BINARY_OPERATORS)
def test_guarded_operators_are_finite_on_extreme_inputs(name, dtype):
    values = torch.tensor(EXTREMES[dtype], dtype=dtype)
    count = len(values)
    a = values.repeat_interleave(count).reshape(-1, 1).requires_grad_(True)
    b = values.repeat(count).reshape(-1, 1).requires_grad_(True)
    operator = OPERATORS[name]
    operands = (a,) if operator.arity == 1 else (a, b)
    out = operator.function(*operands)
    grads = torch.autograd.grad(out.sum(), operands)
    assert bool(torch.isfinite(out).all()), (name, out)
    assert all(bool(torch.isfinite(g).all()) for g in grads), (name, grads)


def test_reference_losses_are_finite_on_extreme_predictions():
    logits = torch.tensor([[-1e4, 1e4, 0.0, 50.0], [100.0, -100.0, 1e-8, -50.0]])
    logits.requires_grad_(True)
    targets = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    loss = cls_loss(parse(CE_EXPRESSION), logits, targets)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss) and bool(torch.isfinite(grad).all())
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4)
    pred = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0], [5.0, 5.0, 5.0, 5.0], [3, 3, 1, 1.0]]
    ).requires_grad_(True)
    for expression in (GIOU_EXPRESSION, IOU_EXPRESSION, "log(div(i,u))", "recip(i)"):
        loss = box_loss(parse(expression), pred, gt)
        (grad,) = torch.autograd.grad(loss, pred)
        assert torch.isfinite(loss) and bool(torch.isfinite(grad).all()), expression


# ---------------------------------------------------------------------------- canonical form


def test_canonical_form_and_structural_hash():
    assert canonical(parse("add(y,x)")) == canonical(parse("add(x,y)"))
    assert canonical(parse("sub(y,x)")) != canonical(parse("sub(x,y)"))
    assert str(canonical(parse("neg(neg(abs(neg(x))))"))) == "abs(x)"
    assert str(canonical(parse("abs(square(x))"))) == "square(x)"
    assert str(canonical(parse("mean_c(mean_all(mean_c(x)))"))) == "mean_all(x)"
    assert str(canonical(parse("max(mul(x,y),mul(y,x))"))) == "mul(x,y)"
    assert str(canonical(parse("add(x,sqrt(square(1)))"))) == "add(1,x)"
    assert str(canonical(parse("mul(x,sub(1,add(1,1)))"))) == "mul(neg(1),x)"
    assert structural_hash(parse("mul(x,y)"), parse("i")) == structural_hash(
        parse("mul(y,x)"), parse("i")
    )
    assert structural_hash(parse("mul(x,y)")) != structural_hash(parse("add(x,y)"))


def test_canonical_form_is_idempotent_and_computes_the_same_function():
    rng = random.Random(1)
    logits, targets = _cls_batch(seed=3, rows=6)
    pred, gt = _box_batch(seed=3, rows=6)
    inputs = {"cls": {"x": logits.sigmoid(), "y": targets}, "box": box_inputs(pred, gt)}
    for _ in range(300):
        for space, branch in zip(_spaces(), ("cls", "box")):
            node = random_graph(rng, space)
            form = canonical(node)
            assert canonical(form) == form
            torch.testing.assert_close(
                evaluate(form, inputs[branch]).expand(6, -1),
                evaluate(node, inputs[branch]).expand(6, -1),
                rtol=1e-9,
                atol=1e-12,
                equal_nan=True,
            )
