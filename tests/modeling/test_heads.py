"""PAP heads: the loss the models compute, where its gradient goes, edge cases and bad configs."""

import copy
import importlib
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torchvision.ops import generalized_box_iou

from paploss.losses import PAPFunctions, pap_loss_dense

from .utils import build_train_model, losses_with_storage, make_cfg

RETINANET = "configs/synthetic/pap_retinanet_identity.yaml"
FASTER_RCNN = "configs/synthetic/pap_faster_rcnn_identity.yaml"
# Tests that need positives in the R-CNN head add the ground-truth boxes to the proposals: the
# PAP recipe does not, and an untrained RPN's proposals often match no ground truth at IoU 0.5.
GT_PROPOSALS = ("MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", "True")


def test_retinanet_loss_equals_pap_loss_on_hand_flattened_tensors(synthetic_batch):
    model = build_train_model(RETINANET)
    losses, storage = losses_with_storage(model, synthetic_batch)
    assert set(losses) == {"loss_pap"}

    # The same batch, flattened by hand with an independent GIoU (torchvision) and the
    # readable dense reference of the loss.
    with torch.no_grad():
        images = model.preprocess_image(synthetic_batch)
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        logits, deltas = model._transpose_dense_predictions(model.head(features), [4, 4])
        anchors = model.anchor_generator(features)
        gt_labels, gt_boxes = model.label_anchors(
            anchors, [x["instances"] for x in synthetic_batch]
        )
        all_anchors = torch.cat([a.tensor for a in anchors])
        logits, deltas = torch.cat(logits, dim=1), torch.cat(deltas, dim=1)
        targets, quality, flat_logits = [], [], []
        for n, labels in enumerate(gt_labels):
            per_image = torch.zeros(len(labels), 4)
            per_image[labels == -1] = -1
            q = torch.zeros(len(labels), 4)
            for r in torch.nonzero((labels >= 0) & (labels < 4)).flatten().tolist():
                c = int(labels[r])
                per_image[r, c] = 1
                box = model.box2box_transform.apply_deltas(
                    deltas[n, r : r + 1], all_anchors[r : r + 1]
                )
                giou = generalized_box_iou(box, gt_boxes[n][r : r + 1])[0, 0]
                q[r, c] = (giou + 1) / 2
            targets.append(per_image.flatten())
            quality.append(q.flatten())
            flat_logits.append(logits[n].flatten())
        expected = pap_loss_dense(
            torch.cat(flat_logits).double(),
            torch.cat(targets).long(),
            torch.cat(quality).double().clamp(0, 1),
            PAPFunctions.identity().double(),
        )
    assert losses["loss_pap"].item() == pytest.approx(expected.item(), rel=1e-4)
    num_positives = int(sum(((t == 1).sum() for t in targets)))
    assert storage.history("retinanet/num_positives").latest() == num_positives > 0
    parts = storage.history("retinanet/pap_localization").latest()
    parts += storage.history("retinanet/pap_ranking").latest()
    assert parts == pytest.approx(losses["loss_pap"].item(), rel=1e-5)
    assert 0 < storage.history("retinanet/pap_precision_error").latest() <= 1


def _head_grads(model, batch, names):
    model.zero_grad()
    losses, _ = losses_with_storage(model, batch)
    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    return {name: params[name].grad.clone() for name in names}


@pytest.mark.parametrize(
    "config_file, head, cls_param, box_param",
    [
        (RETINANET, "RETINANET", "head.cls_score.weight", "head.bbox_pred.weight"),
        (FASTER_RCNN, "RPN", "proposal_generator.rpn_head.objectness_logits.weight",
         "proposal_generator.rpn_head.anchor_deltas.weight"),
        (FASTER_RCNN, "ROI_HEADS", "roi_heads.box_predictor.cls_score.weight",
         "roi_heads.box_predictor.bbox_pred.weight"),
    ],
)  # fmt: skip
def test_gradient_reaches_both_branches_and_lambda_scales_only_the_box_branch(
    synthetic_batch, config_file, head, cls_param, box_param
):
    opts = GT_PROPOSALS if head == "ROI_HEADS" else ()
    base = build_train_model(config_file, *opts)
    scaled = build_train_model(config_file, *opts, f"MODEL.PAPLOSS.{head}.GRAD_SCALE", "3.0")
    scaled.load_state_dict(base.state_dict())
    torch.manual_seed(1)  # same proposal sampling in both runs
    g1 = _head_grads(base, synthetic_batch, [cls_param, box_param])
    torch.manual_seed(1)
    g3 = _head_grads(scaled, synthetic_batch, [cls_param, box_param])
    assert g1[cls_param].abs().sum() > 0 and g1[box_param].abs().sum() > 0
    torch.testing.assert_close(g3[cls_param], g1[cls_param], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(g3[box_param], 3.0 * g1[box_param], rtol=1e-4, atol=1e-9)


def _without_annotations(batch):
    empty = []
    for item in batch:
        item = copy.copy(item)
        size = item["instances"].image_size
        instances = Instances(size)
        instances.gt_boxes = Boxes(torch.zeros((0, 4)))
        instances.gt_classes = torch.zeros((0,), dtype=torch.int64)
        item["instances"] = instances
        empty.append(item)
    return empty


@pytest.mark.parametrize("config_file", [RETINANET, FASTER_RCNN])
def test_batch_without_positives_trains_without_nan(synthetic_batch, config_file):
    model = build_train_model(config_file, *(GT_PROPOSALS if config_file == FASTER_RCNN else ()))
    batch = _without_annotations(synthetic_batch)
    losses, storage = losses_with_storage(model, batch)
    total = sum(losses.values())
    assert torch.isfinite(total) and total.item() == 0.0
    total.backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
    # mixing an empty image into a normal batch is fine too
    losses, _ = losses_with_storage(model, batch[:1] + list(synthetic_batch[1:]))
    assert all(torch.isfinite(v) and v.item() > 0 for v in losses.values())


def test_stock_loss_key_keeps_detectron2losses_with_storage(synthetic_batch):
    losses, _ = losses_with_storage(
        build_train_model(RETINANET, "MODEL.PAPLOSS.LOSS", "stock"), synthetic_batch
    )
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    losses, _ = losses_with_storage(
        build_train_model(FASTER_RCNN, "MODEL.PAPLOSS.LOSS", "stock"), synthetic_batch
    )
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}


def test_roi_head_without_sampling_ranks_all_proposals(synthetic_batch):
    sampled = build_train_model(FASTER_RCNN, "MODEL.PAPLOSS.ROI_HEADS.SAMPLE_PROPOSALS", "True")
    everything = build_train_model(FASTER_RCNN)  # the PAP recipe ranks all proposals
    _, s1 = losses_with_storage(sampled, synthetic_batch)
    _, s2 = losses_with_storage(everything, synthetic_batch)
    n1 = (
        s1.history("roi_head/num_bg_samples").latest()
        + s1.history("roi_head/num_fg_samples").latest()
    )
    n2 = (
        s2.history("roi_head/num_bg_samples").latest()
        + s2.history("roi_head/num_fg_samples").latest()
    )
    assert n1 <= 128 < n2


def _rows_sorted(boxes):
    for column in reversed(range(boxes.shape[1])):
        boxes = boxes[torch.sort(boxes[:, column], stable=True).indices]
    return boxes


@pytest.mark.parametrize("append_gt", [False, True])
def test_roi_head_ranks_exactly_the_proposals_without_ground_truth_boxes(
    synthetic_batch, append_gt
):
    """``PROPOSAL_APPEND_GT: False`` + ``SAMPLE_PROPOSALS: False`` (the PAP recipe): the RoIs
    of the ranking are the RPN's proposals, one for one; with ``True`` the ground-truth boxes
    are added to them."""
    model = build_train_model(FASTER_RCNN, "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", str(append_gt))
    batch = synthetic_batch[:2]
    with EventStorage(0):
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        targets = [x["instances"] for x in batch]
        proposals, _ = model.proposal_generator(images, features, targets)
        labelled = model.roi_heads.label_and_sample_proposals(proposals, targets)
    for before, after, gt in zip(proposals, labelled, targets):
        expected = torch.cat([before.proposal_boxes.tensor] + [gt.gt_boxes.tensor] * append_gt)
        assert len(after) == len(expected)
        # The same boxes (compared as sorted rows: the head may reorder them).
        torch.testing.assert_close(
            _rows_sorted(after.proposal_boxes.tensor), _rows_sorted(expected)
        )


def _rpn_ranked_anchors(storage):
    return (
        storage.history("rpn/num_pos_anchors").latest(),
        storage.history("rpn/num_neg_anchors").latest(),
    )


def test_rpn_ranks_only_the_sampled_anchors_when_asked(synthetic_batch):
    """``MODEL.PAPLOSS.RPN.SAMPLE_ANCHORS``: Detectron2's sampler (128 per image here, at most
    half positive) decides which anchors the ranking sees; without it every labelled anchor."""
    _, sampled = losses_with_storage(build_train_model(FASTER_RCNN), synthetic_batch)
    _, everything = losses_with_storage(
        build_train_model(FASTER_RCNN, "MODEL.PAPLOSS.RPN.SAMPLE_ANCHORS", "False"),
        synthetic_batch,
    )
    positives, negatives = _rpn_ranked_anchors(sampled)
    assert 0 < positives <= 64 and positives + negatives == 128
    all_positives, all_negatives = _rpn_ranked_anchors(everything)
    assert all_positives == positives  # the sampler keeps every positive when they are few
    assert all_negatives > 20 * negatives


def test_topk_key_reaches_the_pap_loss(synthetic_batch):
    exact = build_train_model(RETINANET)
    truncated = build_train_model(RETINANET, "MODEL.PAPLOSS.TOPK", "1000")
    assert (exact.head_loss.topk, truncated.head_loss.topk) == (0, 1000)
    (a,) = losses_with_storage(exact, synthetic_batch)[0].values()
    (b,) = losses_with_storage(truncated, synthetic_batch)[0].values()
    assert torch.isfinite(b) and abs(a.item() - b.item()) > 1e-4
    large = build_train_model(RETINANET, "MODEL.PAPLOSS.TOPK", str(10**7))
    (c,) = losses_with_storage(large, synthetic_batch)[0].values()
    assert c.item() == pytest.approx(a.item(), rel=1e-6)


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.PAPLOSS.LOSS", "focal"],
         r"^MODEL.PAPLOSS.LOSS must be one of the registered head losses "
         r"\(alrp, ap, graph, pap, rs, stock\), got 'focal'$"),
        (["MODEL.PAPLOSS.RETINANET.FUNCTIONS.H2", "[[0.2, 0.2], [0.1, 0.4], [0.6, 0.6], [0.8, 0.8]]"],
         r"MODEL.PAPLOSS.RETINANET.FUNCTIONS: H2"),
        (["MODEL.PAPLOSS.RETINANET.FUNCTIONS.I1", "[[0.2, 0.5], [0.4, 0.4], [0.6, 0.6], [0.8, 0.8]]"],
         r"MODEL.PAPLOSS.RETINANET.FUNCTIONS: I1"),
        (["MODEL.PAPLOSS.RETINANET.FUNCTIONS.H1", "[[0.2, 0.2], [0.4, 0.4], [0.6, 0.6]]"],
         r"MODEL.PAPLOSS.RETINANET.FUNCTIONS: H1.*4 interior knots"),
        (["MODEL.PAPLOSS.RETINANET.GRAD_SCALE", "0.0"], r"MODEL.PAPLOSS.RETINANET.GRAD_SCALE"),
        (["MODEL.PAPLOSS.RETINANET.GRAD_SCALE", "-2.0"], r"MODEL.PAPLOSS.RETINANET.GRAD_SCALE"),
        (["MODEL.PAPLOSS.QUALITY", "dice"], "MODEL.PAPLOSS.QUALITY must be one of"),
        (["MODEL.PAPLOSS.TOPK", "-1"], r"MODEL.PAPLOSS.TOPK must be an integer >= 0"),
    ],
)  # fmt: skip
def test_bad_config_fails_at_build_time_naming_the_key(opts, message):
    with pytest.raises(ValueError, match=message):
        build_model(make_cfg(RETINANET, *opts))


def test_importing_and_reloading_the_package_is_harmless():
    code = (
        "import importlib, paploss.modeling, paploss.modeling.retinanet\n"
        "import paploss.modeling as again\n"
        "importlib.reload(paploss.modeling)\n"
        "from detectron2.modeling import META_ARCH_REGISTRY, PROPOSAL_GENERATOR_REGISTRY, "
        "ROI_HEADS_REGISTRY\n"
        "assert META_ARCH_REGISTRY.get('PAPRetinaNet') is paploss.modeling.PAPRetinaNet\n"
        "assert PROPOSAL_GENERATOR_REGISTRY.get('PAPRPN') and ROI_HEADS_REGISTRY.get('PAPROIHeads')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert importlib.import_module("paploss.modeling").PAPRetinaNet.__name__ == "PAPRetinaNet"


def test_checkpoints_never_carry_the_loss_functions():
    published = build_train_model("configs/synthetic/pap_retinanet_published.yaml")
    identity = build_train_model(RETINANET)
    assert not [k for k in published.state_dict() if "knots" in k]
    identity.load_state_dict(published.state_dict())  # strict: same keys
    assert identity.head_loss.functions.to_dict() == PAPFunctions.identity().to_dict()
