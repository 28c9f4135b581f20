"""HeadRanking and its builders: the RPN's label remap, the ROI head's delta selection, decoding
again from other predictions, and the head-loss registry."""

import pytest
import torch
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances

from paploss.modeling import (
    HEAD_LOSS_REGISTRY,
    ALRPHeadLoss,
    APHeadLoss,
    HeadRanking,
    PAPHeadLoss,
    RankingHeadLoss,
    RSHeadLoss,
    StockHeadLoss,
    roi_ranking,
    rpn_ranking,
)
from paploss.modeling.graph_loss import GraphHeadLoss

TRANSFORM = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))


def _boxes(n, generator):
    xy = torch.rand(n, 2, generator=generator) * 50
    return torch.cat([xy, xy + 5 + 20 * torch.rand(n, 2, generator=generator)], dim=1)


def test_rpn_ranking_is_one_class_with_the_objectness_labels_remapped():
    g = torch.Generator().manual_seed(0)
    anchors = [Boxes(_boxes(3, g)), Boxes(_boxes(2, g))]  # two levels, A = 5
    logits = [torch.randn(2, 3, generator=g), torch.randn(2, 2, generator=g)]
    deltas = [torch.randn(2, 3, 4, generator=g), torch.randn(2, 2, 4, generator=g)]
    gt_labels = [torch.tensor([1, 0, -1, 0, 1]), torch.tensor([0, 0, 1, -1, -1])]
    gt_boxes = [_boxes(5, g), _boxes(5, g)]
    ranking = rpn_ranking(anchors, logits, gt_labels, deltas, gt_boxes, TRANSFORM)

    assert ranking.logits.shape == (10, 1)
    assert ranking.labels.tolist() == [0, 1, -1, 1, 0, 1, 1, 0, -1, -1]  # 1 -> 0, 0 -> 1
    assert ranking.targets.tolist() == [1, 0, -1, 0, 1, 0, 0, 1, -1, -1]
    assert ranking.positive_rows.tolist() == [0, 4, 7]
    assert ranking.image_index.tolist() == [0] * 5 + [1] * 5
    all_anchors = torch.cat([a.tensor for a in anchors])
    image_deltas = [torch.cat([d[n] for d in deltas]) for n in range(2)]
    expected = [(0, 0), (0, 4), (1, 2)]  # (image, anchor) of each positive
    for p, (n, a) in enumerate(expected):
        assert ranking.logits[ranking.positive_rows[p], 0] == torch.cat([x[n] for x in logits])[a]
        torch.testing.assert_close(ranking.pred_deltas[p], image_deltas[n][a])
        torch.testing.assert_close(
            ranking.pred_boxes[p],
            TRANSFORM.apply_deltas(image_deltas[n][a : a + 1], all_anchors[a : a + 1])[0],
        )
        torch.testing.assert_close(ranking.gt_boxes[p], gt_boxes[n][a])
        torch.testing.assert_close(
            ranking.gt_deltas[p],
            TRANSFORM.get_deltas(all_anchors[a : a + 1], gt_boxes[n][a : a + 1])[0],
        )


def _proposals(g, sizes, num_classes):
    proposals = []
    for size in sizes:
        p = Instances((128, 128))
        p.proposal_boxes = Boxes(_boxes(size, g))
        p.gt_boxes = Boxes(_boxes(size, g))
        p.gt_classes = torch.randint(-1, num_classes + 1, (size,), generator=g)
        proposals.append(p)
    return proposals


@pytest.mark.parametrize("class_specific", [True, False])
def test_roi_ranking_selects_each_positive_rois_deltas_of_its_class(class_specific):
    g = torch.Generator().manual_seed(1)
    num_classes = 3
    proposals = _proposals(g, [6, 4], num_classes)
    scores = torch.randn(10, num_classes, generator=g)
    deltas = torch.randn(10, 4 * num_classes if class_specific else 4, generator=g)
    ranking = roi_ranking((scores, deltas), proposals, TRANSFORM)

    labels = torch.cat([p.gt_classes for p in proposals])
    rows = [r for r in range(10) if 0 <= labels[r] < num_classes]
    assert rows and ranking.positive_rows.tolist() == rows
    assert ranking.image_index.tolist() == [0] * 6 + [1] * 4
    boxes = torch.cat([p.proposal_boxes.tensor for p in proposals])
    gt = torch.cat([p.gt_boxes.tensor for p in proposals])
    for p, r in enumerate(rows):
        c = int(labels[r])
        own = deltas[r, 4 * c : 4 * c + 4] if class_specific else deltas[r]
        torch.testing.assert_close(ranking.pred_deltas[p], own)
        torch.testing.assert_close(
            ranking.pred_boxes[p], TRANSFORM.apply_deltas(own[None], boxes[r : r + 1])[0]
        )
        torch.testing.assert_close(ranking.gt_boxes[p], gt[r])
        assert ranking.positive_index[p] == r * num_classes + c
        assert ranking.targets[r * num_classes + c] == 1


def test_with_predictions_decodes_new_positive_deltas_like_from_deltas():
    g = torch.Generator().manual_seed(2)
    proposals = _proposals(g, [8], 2)
    scores = torch.randn(8, 2, generator=g)
    deltas = torch.randn(8, 8, generator=g)
    ranking = roi_ranking((scores, deltas), proposals, TRANSFORM)
    new_logits = torch.randn(8, 2, generator=g)
    new_deltas = torch.randn(ranking.num_positives, 4, generator=g)
    moved = ranking.with_predictions(new_logits, new_deltas)

    rebuilt = HeadRanking.from_deltas(
        logits=new_logits,
        labels=ranking.labels,
        deltas=moved.deltas,
        reference_boxes=ranking.reference_boxes,
        matched_gt_boxes=torch.cat([p.gt_boxes.tensor for p in proposals]),
        image_index=ranking.image_index,
        box2box_transform=TRANSFORM,
    )
    torch.testing.assert_close(moved.pred_deltas, new_deltas)
    torch.testing.assert_close(moved.pred_boxes, rebuilt.pred_boxes)
    torch.testing.assert_close(moved.gt_deltas, ranking.gt_deltas)
    changed = moved.deltas != ranking.deltas  # [R, K, 4]: only the positives' own classes
    rows, classes = ranking.positive_rows, ranking.labels[ranking.positive_rows]
    assert changed[rows, classes].all() and changed.sum() == 4 * ranking.num_positives
    plain = HeadRanking(logits=scores, labels=ranking.labels, pred_boxes=ranking.pred_boxes,
                        gt_boxes=ranking.gt_boxes)  # fmt: skip
    with pytest.raises(ValueError, match="from_deltas"):
        plain.with_predictions(new_logits, new_deltas)


def test_a_ranking_needs_one_predicted_box_per_positive():
    labels = torch.tensor([0, 1, 2, 2])  # K = 2: two positives, a background, ...
    with pytest.raises(ValueError, match="2 positives in labels but 3 predicted boxes"):
        HeadRanking(logits=torch.zeros(4, 2), labels=labels, pred_boxes=torch.zeros(3, 4),
                    gt_boxes=torch.zeros(3, 4))  # fmt: skip


def test_head_losses_are_registered_under_their_loss_names():
    assert dict(HEAD_LOSS_REGISTRY) == {
        "pap": PAPHeadLoss,
        "ap": APHeadLoss,
        "alrp": ALRPHeadLoss,
        "rs": RSHeadLoss,
        "stock": StockHeadLoss,
        "graph": GraphHeadLoss,
    }
    registry = type(HEAD_LOSS_REGISTRY)("TEST")  # same kind of registry, not the global one

    @registry.register()
    class Mine(RankingHeadLoss):
        loss_name = "mine"

    assert registry.get("mine") is Mine and "Mine" not in registry
    with pytest.raises(ValueError, match="Nameless needs a loss_name"):
        registry.register(type("Nameless", (RankingHeadLoss,), {}))


def test_an_error_names_the_config_key_only_when_built_from_a_config():
    with pytest.raises(ValueError, match=r"^tau must be a number in \(0.0, 1.0\), got 1.5$"):
        ALRPHeadLoss(tau=1.5)
    with pytest.raises(ValueError, match=r"^MODEL.PAPLOSS.RPN.ALRP_TAU must be a number"):
        ALRPHeadLoss(tau=1.5, head="RPN")
    with pytest.raises(ValueError, match=r"^MODEL.PAPLOSS.ALRP.BALANCE_PERIOD must be an integer"):
        ALRPHeadLoss(balance_period=True, head="RPN")
