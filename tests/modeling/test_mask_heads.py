"""Mask R-CNN with ranking losses: RS Mask R-CNN, the PAP loss with a mask-aware quality.

The models are real (tiny) Mask R-CNNs on a real batch of the synthetic set (with its instance
masks); the expected values are computed by hand from the same predictions, RoI by RoI, with
independent box and mask code (torchvision) and the pure losses of :mod:`paploss.losses`.
"""

import itertools

import pytest
import torch
from detectron2.data import build_detection_train_loader
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage
from torchvision.ops import box_iou, generalized_box_iou, roi_align

from paploss.engine import load_config, setup_cfg, train_and_evaluate
from paploss.losses import PAPFunctions, pap_loss_dense, rank_sort_loss
from paploss.modeling import HeadRanking, PAPHeadLoss, RSHeadLoss
from paploss.modeling.head_loss import MASK_LOSS_KEY

from .test_heads import _without_annotations
from .utils import build_train_model, losses_with_storage, make_cfg

STOCK = "configs/synthetic/mask_rcnn_stock.yaml"
RS = "configs/synthetic/rs_mask_rcnn.yaml"
PAP = "configs/synthetic/pap_mask_rcnn.yaml"
PAP_MASK_IOU = "configs/synthetic/pap_mask_rcnn_mask_iou.yaml"
ALL_ROIS = ["MODEL.PAPLOSS.ROI_HEADS.SAMPLE_PROPOSALS", "False"]
MASK_PREDICTOR = "roi_heads.mask_head.predictor.weight"
BOX_PREDICTOR = "roi_heads.box_predictor.bbox_pred.weight"
CLS_SCORE = "roi_heads.box_predictor.cls_score.weight"


@pytest.fixture(scope="module")
def mask_batch():
    """Four training images with their boxes and instance masks, as the loader yields them."""
    torch.manual_seed(0)
    loader = build_detection_train_loader(make_cfg(RS))
    batch = next(itertools.islice(iter(loader), 1))
    assert all(x["instances"].has("gt_masks") for x in batch)
    return batch


def _latest(storage, name):
    return storage.history(name).latest()


def _roi_head_by_hand(model, batch):
    """The ROI head's (RoI, class) entries flattened by hand, RoI by RoI.

    Returns:
        ``logits [M]``, ``targets [M]``, the positives' entry ``index [P]``, predicted boxes,
        ground-truth boxes, best class scores (sigmoid), mask logits at their class
        ``[P, 28, 28]`` (each RoI through the mask head alone) and ground-truth masks on their
        RoI grid.
    """
    heads = model.roi_heads
    num_classes = heads.num_classes
    with torch.no_grad(), EventStorage(0):
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        targets = [x["instances"] for x in batch]
        proposals, _ = model.proposal_generator(images, features, targets)
        proposals = heads.label_and_sample_proposals(proposals, targets)
        box_features = heads.box_pooler(
            [features[f] for f in heads.box_in_features], [p.proposal_boxes for p in proposals]
        )
        scores, deltas = heads.box_predictor(heads.box_head(box_features))
        mask_features = [features[f] for f in heads.mask_in_features]
        flat_targets, index, pred, gt, best, mask_logits, gt_masks = [], [], [], [], [], [], []
        row = 0
        for n, p in enumerate(proposals):
            image_features = [f[n : n + 1] for f in mask_features]
            for r in range(len(p)):
                c = int(p.gt_classes[r])
                entry = torch.zeros(num_classes)
                if c == -1:
                    entry[:] = -1
                elif c < num_classes:
                    entry[c] = 1
                    index.append((row + r) * num_classes + c)
                    box = p.proposal_boxes.tensor[r : r + 1]
                    pred.append(
                        heads.box_predictor.box2box_transform.apply_deltas(
                            deltas[row + r, 4 * c : 4 * c + 4][None], box
                        )
                    )
                    gt.append(p.gt_boxes.tensor[r : r + 1])
                    best.append(torch.sigmoid(scores[row + r]).max())
                    one = heads.mask_pooler(image_features, [Boxes(box)])
                    mask_logits.append(heads.mask_head.layers(one)[0, c])
                    bitmap = p.gt_masks.tensor[r].float()[None, None]
                    cropped = roi_align(bitmap, [box], 28, 1.0, 0, aligned=True)
                    gt_masks.append((cropped[0, 0] >= 0.5).float())
                flat_targets.append(entry)
            row += len(p)
    return (
        scores.reshape(-1).double(),
        torch.cat(flat_targets).long(),
        torch.tensor(index),
        torch.cat(pred).double(),
        torch.cat(gt).double(),
        torch.stack(best).double(),
        torch.stack(mask_logits).double(),
        torch.stack(gt_masks).double(),
    )


def _per_entry(like, index, values):
    out = torch.zeros_like(like)
    out[index] = values.to(like.dtype)
    return out


def _dice_by_hand(probs, targets):
    return torch.stack(
        [
            1 - 2 * (p * t).sum() / ((p**2).sum() + (t**2).sum() + 1e-5)
            for p, t in zip(probs, targets)
        ]
    )


def test_rs_mask_rcnn_equals_the_hand_flattened_losses(mask_batch):
    model = build_train_model(RS)
    losses, storage = losses_with_storage(model, mask_batch)
    assert set(losses) == {"loss_rpn_rs", "loss_roi_rs", MASK_LOSS_KEY}
    logits, targets, index, pred, gt, best, mask_logits, gt_masks = _roi_head_by_hand(
        model, mask_batch
    )
    assert len(index) == _latest(storage, "roi_heads/num_positives") > 0
    iou = box_iou(pred, gt).diagonal()
    expected_rs = rank_sort_loss(logits, targets, _per_entry(logits, index, iou), delta=0.5)
    expected_mask = (best * _dice_by_hand(mask_logits.sigmoid(), gt_masks)).sum() / best.sum()
    assert _latest(storage, "roi_heads/rs_cls") == pytest.approx(expected_rs.item(), rel=1e-5)
    assert _latest(storage, "roi_heads/mask_dice") == pytest.approx(expected_mask.item(), rel=1e-4)
    assert _latest(storage, "roi_heads/mask_weight") == pytest.approx(
        (expected_rs / expected_mask).item(), rel=1e-4
    )
    # balanced by value: the mask term equals the RS loss (the box term too, so the head is 2x)
    assert losses[MASK_LOSS_KEY].item() == pytest.approx(expected_rs.item(), rel=1e-5)
    assert losses["loss_roi_rs"].item() == pytest.approx(2 * expected_rs.item(), rel=1e-5)


def test_pap_mask_iou_quality_equals_the_hand_flattened_pap_loss(mask_batch):
    model = build_train_model(PAP_MASK_IOU, *ALL_ROIS)
    losses, storage = losses_with_storage(model, mask_batch)
    assert set(losses) == {"loss_rpn_pap", "loss_roi_pap", MASK_LOSS_KEY}
    logits, targets, index, pred, gt, _, mask_logits, gt_masks = _roi_head_by_hand(
        model, mask_batch
    )
    probs = mask_logits.sigmoid()
    soft_iou = (probs * gt_masks).sum((1, 2)) / (
        probs.sum((1, 2)) + gt_masks.sum((1, 2)) - (probs * gt_masks).sum((1, 2))
    )
    box_quality = (generalized_box_iou(pred, gt).diagonal() + 1) / 2
    quality = _per_entry(logits, index, (soft_iou * box_quality).clamp(0, 1))
    expected = pap_loss_dense(logits, targets, quality, PAPFunctions.identity().double())
    assert losses["loss_roi_pap"].item() == pytest.approx(expected.item(), rel=1e-4)
    # the mask loss is balanced to the PAP loss's value
    assert losses[MASK_LOSS_KEY].item() == pytest.approx(expected.item(), rel=1e-4)
    assert _latest(storage, "roi_heads/mask_iou") == pytest.approx(soft_iou.mean().item(), rel=1e-4)


def test_pap_box_quality_ignores_the_masks(mask_batch):
    """QUALITY "giou" with a mask branch: the PAP loss of the box head is the detection one."""
    model = build_train_model(PAP, *ALL_ROIS)
    losses, _ = losses_with_storage(model, mask_batch)
    logits, targets, index, pred, gt, *_ = _roi_head_by_hand(model, mask_batch)
    quality = (generalized_box_iou(pred, gt).diagonal() + 1) / 2
    expected = pap_loss_dense(
        logits, targets, _per_entry(logits, index, quality), PAPFunctions.identity().double()
    )
    assert losses["loss_roi_pap"].item() == pytest.approx(expected.item(), rel=1e-4)


def _grads(model, loss):
    model.zero_grad()
    loss.backward(retain_graph=True)
    params = dict(model.named_parameters())
    return {
        name: (0.0 if params[name].grad is None else params[name].grad.abs().sum().item())
        for name in (MASK_PREDICTOR, BOX_PREDICTOR, CLS_SCORE)
    }


@pytest.mark.parametrize("config_file", [RS, PAP, PAP_MASK_IOU])
def test_gradients_reach_the_mask_branch(mask_batch, config_file):
    model = build_train_model(config_file)
    losses, _ = losses_with_storage(model, mask_batch)
    mask = _grads(model, losses[MASK_LOSS_KEY])
    # the Dice term trains the mask branch only (its score weights and balance are detached)
    assert mask[MASK_PREDICTOR] > 0 and mask[BOX_PREDICTOR] == mask[CLS_SCORE] == 0
    (roi_key,) = [key for key in losses if key.startswith("loss_roi_")]
    roi = _grads(model, losses[roi_key])
    assert roi[BOX_PREDICTOR] > 0 and roi[CLS_SCORE] > 0
    # only the mask-aware quality sends the box head's ranking loss to the mask branch
    assert (roi[MASK_PREDICTOR] > 0) == (config_file == PAP_MASK_IOU)


def test_stock_mask_rcnn_keeps_detectron2s_losses(mask_batch):
    for config_file, opts in [(STOCK, []), (PAP, ["MODEL.PAPLOSS.LOSS", "stock"])]:
        losses, _ = losses_with_storage(build_train_model(config_file, *opts), mask_batch)
        assert set(losses) == {
            "loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"
        }  # fmt: skip


@pytest.mark.parametrize("config_file", [RS, PAP_MASK_IOU])
def test_batch_without_positives_gives_zero_losses_and_finite_gradients(mask_batch, config_file):
    model = build_train_model(config_file)
    empty = _without_annotations(mask_batch[:2])
    losses, storage = losses_with_storage(model, empty)
    total = sum(losses.values())
    assert MASK_LOSS_KEY in losses and torch.isfinite(total) and total.item() == 0.0
    total.backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
    assert _latest(storage, "roi_heads/num_positives") == 0
    # an empty image in a normal batch
    losses, _ = losses_with_storage(model, empty[:1] + list(mask_batch[1:]))
    assert all(torch.isfinite(v) and v.item() > 0 for v in losses.values())


def test_inference_predicts_masks(mask_batch):
    model = build_train_model(RS)
    model.eval()
    with torch.no_grad():
        (output,) = model([{"image": mask_batch[0]["image"]}])
    instances = output["instances"]
    assert len(instances) > 0 and instances.pred_masks.shape[1:] == (128, 128)


@pytest.mark.parametrize(
    "config, opts, message",
    [
        ("pap_retinanet_identity", ["MODEL.PAPLOSS.QUALITY", "mask_iou"],
         r"^MODEL.PAPLOSS.QUALITY: 'mask_iou' needs the ROI heads' mask branch .* RETINANET"),
        ("pap_faster_rcnn_identity", ["MODEL.PAPLOSS.QUALITY", "mask_iou"],
         r"^MODEL.PAPLOSS.QUALITY: 'mask_iou' needs the ROI heads' mask branch .* ROI_HEADS"),
        ("pap_mask_rcnn", ["MODEL.PAPLOSS.QUALITY", "mask_dice"], r"^MODEL.PAPLOSS.QUALITY must be"),
        ("rs_mask_rcnn", ["MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES", "True"],
         r"^MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES must be False"),
    ],
)  # fmt: skip
def test_bad_mask_config_fails_at_build_time_naming_the_key(config, opts, message):
    with pytest.raises(ValueError, match=message):
        build_model(make_cfg(f"configs/synthetic/{config}.yaml", *opts))


def _ranking_with_masks(seed=0, num_rows=30, num_classes=3, num_positives=5, side=6):
    g = torch.Generator().manual_seed(seed)
    labels = torch.full((num_rows,), num_classes)
    labels[:num_positives] = torch.randint(num_classes, (num_positives,), generator=g)
    gt = torch.rand(num_positives, 2, generator=g, dtype=torch.float64) * 50
    gt = torch.cat([gt, gt + 10 + 20 * torch.rand(num_positives, 2, generator=g)], dim=1)
    return HeadRanking(
        logits=torch.randn(num_rows, num_classes, generator=g, dtype=torch.float64),
        labels=labels,
        pred_boxes=(gt + torch.randn(num_positives, 4, generator=g, dtype=torch.float64)),
        gt_boxes=gt,
        mask_logits=torch.randn(num_positives, side, side, generator=g, dtype=torch.float64),
        gt_masks=(torch.rand(num_positives, side, side, generator=g) > 0.5).double(),
    )


def test_mask_loss_is_the_head_losss_own_term_and_the_screen_never_sees_it():
    """``compute`` (what the screening scores) is the ranking loss alone; ``forward`` adds the
    mask term, and a ranking without masks has none."""
    ranking = _ranking_with_masks()
    head_loss = RSHeadLoss(head_name="test")
    with EventStorage(0):
        losses = head_loss(ranking)
        plain = head_loss(
            HeadRanking(**{**_fields(ranking), "mask_logits": None, "gt_masks": None})
        )
    computed, scalars = head_loss.compute(ranking)
    assert losses["loss_rs"].item() == computed.item()
    assert losses[MASK_LOSS_KEY].item() == pytest.approx(float(scalars["rs_cls"]), rel=1e-12)
    assert set(plain) == {"loss_rs"}


def _fields(ranking):
    return {
        name: getattr(ranking, name)
        for name in ("logits", "labels", "pred_boxes", "gt_boxes", "mask_logits", "gt_masks")
    }


def test_mask_iou_quality_falls_back_to_the_box_quality_without_masks():
    ranking = _ranking_with_masks()
    plain = HeadRanking(**{**_fields(ranking), "mask_logits": None, "gt_masks": None})
    mask_iou = PAPHeadLoss(functions=PAPFunctions.identity().double(), quality_type="mask_iou")
    giou = PAPHeadLoss(functions=PAPFunctions.identity().double(), quality_type="giou")
    torch.testing.assert_close(mask_iou.quality(plain), giou.quality(plain))
    assert (mask_iou.quality(ranking) < giou.quality(ranking)).all()


def test_ranking_rejects_masks_of_the_wrong_shape():
    fields = _fields(_ranking_with_masks())
    with pytest.raises(ValueError, match="mask_logits and gt_masks must be"):
        HeadRanking(**{**fields, "mask_logits": fields["mask_logits"][1:]})
    with pytest.raises(ValueError, match="given together"):
        HeadRanking(**{**fields, "gt_masks": None})


def test_search_space_of_a_pap_mask_rcnn_is_its_pap_heads():
    from paploss.search.spaces import SearchSpace

    space = SearchSpace.from_config(load_config(PAP_MASK_IOU))
    assert space.heads == ("RPN", "ROI_HEADS") and space.dim == 82
    assert SearchSpace.from_config(load_config(PAP)) == space


def test_screening_scores_the_ranking_heads_of_a_pap_mask_rcnn():
    """The screening records and scores the ranking heads of the Mask R-CNN (RPN, box head);
    its masks enter as fixed predictions, and the mask loss is not part of the score."""
    from paploss.search.screening import (
        RejectionProtocol,
        build_screening_batches,
        candidate_head_losses,
    )
    from paploss.search.settings import RejectionSettings
    from paploss.search.spaces import SearchSpace

    cfg = load_config(PAP_MASK_IOU)
    space = SearchSpace.from_config(cfg)
    batches = build_screening_batches(
        cfg, dataset="synthetic_shapes_search_train", num_images=2, seed=0
    )
    assert set(batches) == {"RPN", "ROI_HEADS"} and not batches["RPN"].ranking.has_masks
    roi = batches["ROI_HEADS"].ranking
    assert roi.has_masks and not roi.mask_logits.requires_grad
    assert len(roi.gt_masks) == roi.num_positives > 0
    overrides = space.to_overrides(space.identity_theta())
    head_losses = candidate_head_losses(cfg, overrides, ["ROI_HEADS"])
    assert head_losses["ROI_HEADS"].quality_type == "mask_iou"
    settings = RejectionSettings(steps=3, num_images=2)
    result = RejectionProtocol(batches["ROI_HEADS"], settings).run(head_losses["ROI_HEADS"])
    assert torch.isfinite(
        torch.tensor([result.loss_first, result.loss_last, result.ap_after])
    ).all()
    # the first step's loss is the ranking loss alone (what compute returns), no mask term
    ranking_loss, _ = head_losses["ROI_HEADS"].compute(roi)
    with EventStorage(0):
        with_mask = head_losses["ROI_HEADS"](roi)
    assert result.loss_first == pytest.approx(ranking_loss.item(), rel=1e-6)
    assert MASK_LOSS_KEY in with_mask and with_mask[MASK_LOSS_KEY].item() > 0


@pytest.mark.slow
@pytest.mark.parametrize("config_file", [RS, PAP_MASK_IOU])
def test_short_training_reaches_a_non_zero_mask_ap(tmp_path, config_file):
    """120 iterations at batch 4 (a few minutes on one CPU thread), evaluated on held-out
    images with COCO box and mask AP."""
    cfg = setup_cfg(
        config_file,
        [
            "SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", 120, "SOLVER.WARMUP_ITERS", 20,
            "SOLVER.STEPS", (), "SOLVER.CHECKPOINT_PERIOD", 1000, "SEED", 0,
            "DATASETS.TEST", ("synthetic_shapes_search_val",), "OUTPUT_DIR", str(tmp_path),
            # the loss table's optimiser: the configs leave gradient clipping to the table
            "SOLVER.CLIP_GRADIENTS.ENABLED", True,
        ],
    )  # fmt: skip
    results = train_and_evaluate(cfg)
    assert set(results) == {"bbox", "segm"}
    assert results["segm"]["AP"] > 1.0 and results["segm"]["AP50"] > 5.0, results
    assert results["bbox"]["AP"] > 0, results
