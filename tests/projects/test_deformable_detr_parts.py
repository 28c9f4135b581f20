"""Deformable DETR parts against readable references: the deformable attention against loops over
heads, levels and points, the Hungarian matcher against brute force over permutations."""

import itertools

import pytest
import torch
from deformable_detr import (
    HungarianMatcher,
    MultiScaleDeformableAttention,
    ms_deform_attn_reference,
    ms_deform_attn_sample,
)
from deformable_detr.box_ops import (
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    pairwise_generalized_iou,
)
from deformable_detr.transformer import encoder_reference_points, valid_ratios

from paploss.losses.box_quality import paired_iou_giou

SHAPES = [(5, 7), (3, 4), (1, 2)]


def _sampling_inputs(seed, n=2, queries=6, heads=3, head_dim=4, points=2, spread=1.4):
    generator = torch.Generator().manual_seed(seed)
    pixels = sum(h * w for h, w in SHAPES)
    value = torch.randn(n, pixels, heads, head_dim, generator=generator, dtype=torch.float64)
    # Locations also beyond the map (zero padding) and on exact pixel centres.
    locations = torch.rand(n, queries, heads, len(SHAPES), points, 2, generator=generator)
    locations = (locations.double() * spread - (spread - 1) / 2).requires_grad_()
    weights = torch.rand(n, queries, heads, len(SHAPES), points, generator=generator).double()
    return value.requires_grad_(), locations, weights.requires_grad_()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampling_matches_the_loop_reference_in_values_and_gradients(seed):
    value, locations, weights = _sampling_inputs(seed)
    fast = ms_deform_attn_sample(value, SHAPES, locations, weights)
    reference = ms_deform_attn_reference(value, SHAPES, locations, weights)
    assert fast.shape == (2, 6, 3 * 4)
    torch.testing.assert_close(fast, reference, atol=1e-12, rtol=0)
    upstream = torch.randn_like(fast)
    fast_grads = torch.autograd.grad(fast, (value, locations, weights), upstream)
    reference_grads = torch.autograd.grad(reference, (value, locations, weights), upstream)
    for name, a, b in zip(("value", "locations", "weights"), fast_grads, reference_grads):
        assert b.abs().sum() > 0, name
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=name)


def test_a_location_at_a_pixel_centre_reads_that_pixel_and_outside_reads_zero():
    value = torch.arange(2 * 3, dtype=torch.float64).view(1, 6, 1, 1)  # one level 2 x 3
    locations = torch.tensor([[(1.5 / 3, 0.5 / 2)], [(2.0, 2.0)]], dtype=torch.float64)
    locations = locations.view(1, 2, 1, 1, 1, 2)
    weights = torch.ones(1, 2, 1, 1, 1, dtype=torch.float64)
    for sample in (ms_deform_attn_sample, ms_deform_attn_reference):
        out = sample(value, [(2, 3)], locations, weights)
        assert out.flatten().tolist() == [1.0, 0.0]  # row 0, column 1; far outside


@pytest.mark.parametrize("reference_dim", [2, 4])
def test_attention_module_equals_the_reference_on_its_sampling(reference_dim):
    torch.manual_seed(0)
    module = MultiScaleDeformableAttention(embed_dim=8, num_heads=2, num_levels=3, num_points=2)
    torch.nn.init.normal_(module.sampling_offsets.weight, std=0.5)
    torch.nn.init.normal_(module.attention_weights.weight)
    pixels = sum(h * w for h, w in SHAPES)
    query = torch.randn(2, 5, 8)
    value_input = torch.randn(2, pixels, 8)
    reference = torch.rand(2, 5, 3, reference_dim)
    padding = torch.zeros(2, pixels, dtype=torch.bool)
    padding[1, -3:] = True
    out = module(query, reference, value_input, SHAPES, padding)

    locations, weights = module.sampling(query, reference, SHAPES)
    value = (
        module.value_proj(value_input).masked_fill(padding[..., None], 0.0).view(2, pixels, 2, 4)
    )
    expected = module.output_proj(ms_deform_attn_reference(value, SHAPES, locations, weights))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # Softmax over the L * P points of every head.
    torch.testing.assert_close(weights.sum(dim=(-1, -2)), torch.ones(2, 5, 2))


def test_attention_offsets_are_pixels_of_each_level_for_points_and_box_fractions_for_boxes():
    module = MultiScaleDeformableAttention(embed_dim=4, num_heads=1, num_levels=2, num_points=1)
    torch.nn.init.zeros_(module.sampling_offsets.weight)
    with torch.no_grad():
        module.sampling_offsets.bias.copy_(torch.tensor([1.0, 2.0, 1.0, 2.0]))  # (dx, dy) per level
    shapes = [(4, 8), (2, 4)]
    query = torch.zeros(1, 1, 4)
    points, _ = module.sampling(query, torch.full((1, 1, 2, 2), 0.5), shapes)
    torch.testing.assert_close(
        points.view(2, 2), torch.tensor([[0.5 + 1 / 8, 0.5 + 2 / 4], [0.5 + 1 / 4, 0.5 + 2 / 2]])
    )
    box = torch.tensor([0.5, 0.5, 0.2, 0.4]).expand(1, 1, 2, 4)
    boxes, _ = module.sampling(query, box, shapes)
    torch.testing.assert_close(boxes.view(2, 2), torch.tensor([[0.6, 0.9], [0.6, 0.9]]))


def test_encoder_reference_points_are_pixel_centres_of_the_valid_region():
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[:, 2:, :] = True  # bottom half is padding
    mask[:, :, 3:] = True  # right half is padding
    ratios = valid_ratios(mask)
    torch.testing.assert_close(ratios, torch.tensor([[0.5, 0.5]]))
    points = encoder_reference_points([(4, 6)], ratios[:, None])  # [1, 24, 1, 2]
    # Pixel (row 1, column 2): centre (2.5 / 3, 1.5 / 2) of the 2 x 3 image, then back to the
    # padded map's frame by the valid ratio.
    torch.testing.assert_close(points[0, 1 * 6 + 2, 0], torch.tensor([2.5 / 6, 1.5 / 4]))


def test_box_conversions_and_pairwise_giou_agree_with_paired_giou():
    torch.manual_seed(0)
    cxcywh = torch.rand(5, 4) * 0.5 + 0.1
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(cxcywh)), cxcywh)
    a, b = box_cxcywh_to_xyxy(cxcywh), box_cxcywh_to_xyxy(torch.rand(3, 4) * 0.5 + 0.1)
    pairwise = pairwise_generalized_iou(a, b)
    for j in range(3):
        _, giou = paired_iou_giou(a, b[j].expand(5, 4))
        torch.testing.assert_close(pairwise[:, j], giou)


def _brute_force(cost):
    queries, gts = cost.shape
    if queries >= gts:
        assignments = (
            (list(rows), list(range(gts))) for rows in itertools.permutations(range(queries), gts)
        )
    else:
        assignments = (
            (list(range(queries)), list(cols))
            for cols in itertools.permutations(range(gts), queries)
        )
    return min(cost[rows, cols].sum().item() for rows, cols in assignments)


@pytest.mark.parametrize("queries, gts", [(4, 1), (4, 3), (5, 4), (3, 5), (6, 2)])
@pytest.mark.parametrize("seed", [0, 1])
def test_matcher_finds_the_minimum_cost_assignment(queries, gts, seed):
    generator = torch.Generator().manual_seed(seed)
    matcher = HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0)
    logits = torch.randn(1, queries, 3, generator=generator)
    boxes = torch.rand(1, queries, 4, generator=generator) * 0.5 + 0.2
    target = {
        "labels": torch.randint(0, 3, (gts,), generator=generator),
        "boxes": torch.rand(gts, 4, generator=generator) * 0.5 + 0.2,
    }
    ((rows, cols),) = matcher(logits, boxes, [target])
    assert len(rows) == len(cols) == min(queries, gts)
    assert rows.tolist() == sorted(rows.tolist())
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    cost = matcher.cost_matrix(logits[0], boxes[0], target["labels"], target["boxes"])
    assert cost[rows, cols].sum().item() == pytest.approx(_brute_force(cost), abs=1e-5)


def test_matcher_cost_is_the_weighted_focal_l1_and_giou_sum():
    matcher = HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=3.0, focal_alpha=0.25)
    logits = torch.tensor([[0.3, -1.0]])
    box = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    gt_box = torch.tensor([[0.55, 0.5, 0.2, 0.3]])
    cost = matcher.cost_matrix(logits, box, torch.tensor([1]), gt_box)
    p = torch.sigmoid(torch.tensor(-1.0))
    focal = 0.25 * (1 - p) ** 2 * -torch.log(p) - 0.75 * p**2 * -torch.log(1 - p)
    _, giou = paired_iou_giou(box_cxcywh_to_xyxy(box), box_cxcywh_to_xyxy(gt_box))
    expected = 2.0 * focal + 5.0 * (0.05 + 0.1) - 3.0 * giou[0]
    assert cost.item() == pytest.approx(expected.item(), abs=1e-5)


def test_matcher_on_hand_made_cases():
    matcher = HungarianMatcher()
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.2, 0.2], [0.5, 0.5, 0.3, 0.3]]])
    logits = torch.full((1, 3, 2), -2.0)
    # Each ground truth sits exactly on one query, in another order.
    target = {"labels": torch.tensor([0, 1]), "boxes": boxes[0, [2, 0]]}
    ((rows, cols),) = matcher(logits, boxes, [target])
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 1), (2, 0)]
    # Same boxes for every query: the class score decides.
    same = boxes[:, :1].expand(1, 3, 4)
    scored = logits.clone()
    scored[0, 1, 1] = 5.0
    ((rows, cols),) = matcher(scored, same, [{"labels": torch.tensor([1]), "boxes": same[0, :1]}])
    assert rows.tolist() == [1] and cols.tolist() == [0]
    # An image without ground truth matches nothing.
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    ((rows, cols),) = matcher(logits, boxes, [empty])
    assert rows.numel() == cols.numel() == 0


def test_matcher_reports_non_finite_predictions_as_a_floating_point_error():
    matcher = HungarianMatcher()
    logits = torch.zeros(1, 2, 2)
    logits[0, 0, 0] = float("nan")
    target = {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.1, 0.1]])}
    with pytest.raises(FloatingPointError, match="not finite"):
        matcher(logits, torch.full((1, 2, 4), 0.5), [target])
