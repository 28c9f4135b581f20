"""PAPDeformableDETR as a Detectron2 model: registration, losses, gradients, empty images,
two-stage shapes, inference, the optimizer and the config checks."""

import copy
import glob
import os

import pytest
import torch
from deformable_detr import PAPDeformableDETR, build_optimizer, load_config
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from paploss.losses import PAPFunctions, lambda_from_theta

from .conftest import PROJECT, TINY_CONFIG, seed_everything

PAP_PREFIX = "MODEL.PAPLOSS.DETR"


def _model(*opts):
    seed_everything(0)
    cfg = load_config(TINY_CONFIG, [str(o) for o in opts])
    return cfg, build_model(cfg)


def _detectron2_configs():
    """The project's Detectron2 configs (configs/search holds search settings)."""
    paths = glob.glob(os.path.join(PROJECT, "configs", "**", "*.yaml"), recursive=True)
    search = os.path.join(PROJECT, "configs", "search") + os.sep
    return sorted(p for p in paths if not p.startswith(search))


def _empty(batch, indices):
    batch = copy.deepcopy(batch)
    for index in indices:
        instances = batch[index]["instances"]
        batch[index]["instances"] = instances[torch.zeros(len(instances), dtype=torch.bool)]
    return batch


def test_importing_the_project_registers_the_meta_architecture():
    assert META_ARCH_REGISTRY.get("PAPDeformableDETR") is PAPDeformableDETR
    cfg, model = _model()
    assert isinstance(model, PAPDeformableDETR)
    assert cfg.MODEL.PAPLOSS.DETR.GRAD_SCALE == 1.0
    assert sorted(cfg.MODEL.PAPLOSS.DETR.FUNCTIONS) == ["H1", "H2", "I1", "I2", "I3"]


@pytest.mark.parametrize(
    "loss, keys",
    [
        ("stock", ("loss_ce", "loss_bbox", "loss_giou")),
        ("pap", ("loss_pap", "loss_bbox")),
        ("rs", ("loss_rs", "loss_bbox")),
    ],
)
def test_losses_are_finite_on_every_decoder_layer(detr_batch, loss, keys):
    _, model = _model("MODEL.PAPLOSS.LOSS", loss)
    with EventStorage(0):
        losses = model(detr_batch)
    expected = {f"{key}{suffix}" for key in keys for suffix in ("", "_0")}
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses


@pytest.mark.parametrize("loss", ["stock", "pap", "rs"])
def test_gradients_reach_the_class_and_box_branches(detr_batch, loss):
    # Without the L1 term kept beside the ranking losses, the box branch learns from them alone.
    _, model = _model(
        "MODEL.PAPLOSS.LOSS", loss, "MODEL.DEFORMABLE_DETR.LOSS.RANKING_BBOX_WEIGHT", 0.0
    )
    with EventStorage(0):
        sum(model(detr_batch).values()).backward()
    decoder = model.transformer.decoder
    for name, parameter in (
        ("class", decoder.class_embed[0].weight),
        ("box", decoder.bbox_embed[0].layers[-1].weight),
        ("backbone", next(model.backbone.parameters())),
    ):
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_pap_grad_scale_scales_only_the_box_branch(detr_batch):
    grads = {}
    for lam in (1.0, 4.0):
        _, model = _model(
            "MODEL.PAPLOSS.LOSS", "pap", "MODEL.PAPLOSS.DETR.GRAD_SCALE", lam,
            "MODEL.DEFORMABLE_DETR.LOSS.RANKING_BBOX_WEIGHT", 0.0,
        )  # fmt: skip
        with EventStorage(0):
            sum(model(detr_batch).values()).backward()
        decoder = model.transformer.decoder
        grads[lam] = (
            decoder.class_embed[0].weight.grad.clone(),
            decoder.bbox_embed[0].layers[-1].weight.grad.clone(),
        )
    torch.testing.assert_close(grads[4.0][0], grads[1.0][0])
    torch.testing.assert_close(grads[4.0][1], 4.0 * grads[1.0][1], rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("loss", ["stock", "pap", "rs"])
@pytest.mark.parametrize("empty", [[1], [0, 1, 2, 3]])
def test_images_without_ground_truth(detr_batch, loss, empty):
    _, model = _model("MODEL.PAPLOSS.LOSS", loss)
    with EventStorage(0):
        losses = model(_empty(detr_batch, empty))
        total = sum(losses.values())
        total.backward()
    assert torch.isfinite(total), losses
    class_grad = model.transformer.decoder.class_embed[0].weight.grad
    assert class_grad is not None and torch.isfinite(class_grad).all()
    if len(empty) == 4 and loss == "stock":  # only negatives: focal still pushes scores down
        assert class_grad.abs().sum() > 0


@pytest.mark.parametrize("loss", ["stock", "pap"])
def test_two_stage_with_box_refinement_shapes_and_losses(detr_batch, loss):
    cfg, model = _model(
        "MODEL.PAPLOSS.LOSS", loss, "MODEL.DEFORMABLE_DETR.TWO_STAGE", True,
        "MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE", True,
    )  # fmt: skip
    decoder = model.transformer.decoder
    assert len(decoder.class_embed) == len(decoder.bbox_embed) == 2  # one head pair per layer
    images = model.preprocess_image(detr_batch)
    outputs = model.predict(images)
    pixels = 16 * 16 + 8 * 8 + 4 * 4 + 2 * 2  # 128 px input, strides 8 .. 64
    assert outputs["logits"].shape == (2, 4, 50, 4)
    assert outputs["boxes"].shape == (2, 4, 50, 4)
    assert outputs["enc_logits"].shape == (4, pixels, 1)
    assert outputs["enc_boxes"].shape == (4, pixels, 4)
    # The queries start from valid encoder proposals, never from the masked border/padding ones.
    _, _, invalid = model.transformer.encoder_proposals(
        torch.zeros(1, pixels, 64),
        torch.zeros(1, pixels, dtype=torch.bool),
        [(16, 16), (8, 8), (4, 4), (2, 2)],
    )
    assert (~invalid).sum() >= 50
    assert (outputs["boxes"] < 0.999).all()
    with EventStorage(0):
        losses = model(detr_batch)
        sum(losses.values()).backward()
    name = "loss_ce" if loss == "stock" else "loss_pap"
    assert {name, f"{name}_0", f"{name}_enc"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.transformer.enc_class_embed.weight.grad.abs().sum() > 0


def test_inference_returns_top_scoring_boxes_in_the_output_resolution(detr_batch):
    cfg, model = _model()
    model.eval()
    inputs = [{"image": x["image"], "height": 256, "width": 192} for x in detr_batch[:2]]
    with torch.no_grad():
        outputs = model(inputs)
        raw = model.predict(model.preprocess_image(inputs))
    assert len(outputs) == 2
    instances = outputs[0]["instances"]
    assert isinstance(instances, Instances) and instances.image_size == (256, 192)
    assert len(instances) <= cfg.TEST.DETECTIONS_PER_IMAGE == 100
    scores = raw["logits"][-1, 0].sigmoid().flatten()
    expected = scores.topk(100).values
    kept = instances.scores
    assert (kept[:-1] >= kept[1:]).all()
    assert torch.isin(kept, expected).all()
    boxes = instances.pred_boxes.tensor
    assert (boxes[:, 0::2] <= 192).all() and (boxes[:, 1::2] <= 256).all() and (boxes >= 0).all()
    # Box of the best detection: the query's normalised box, scaled to 192 x 256.
    best = scores.argmax().item() // 4
    cx, cy, w, h = raw["boxes"][-1, 0, best].tolist()
    expected_box = torch.tensor(
        [(cx - w / 2) * 192, (cy - h / 2) * 256, (cx + w / 2) * 192, (cy + h / 2) * 256]
    )
    expected_box = Boxes(expected_box[None])
    expected_box.clip((256, 192))
    torch.testing.assert_close(boxes[0], expected_box.tensor[0], atol=1e-3, rtol=0)


def test_optimizer_groups_and_full_model_gradient_clipping(detr_batch):
    cfg, model = _model(
        "SOLVER.BASE_LR", 2e-4, "MODEL.DEFORMABLE_DETR.OPTIMIZER.BACKBONE_LR_FACTOR", 0.1,
    )  # fmt: skip
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == pytest.approx({"backbone": 2e-5, "linear_proj": 2e-5, "other": 2e-4})
    names = {id(p): n for n, p in model.named_parameters()}
    linear_proj = [
        names[id(p)]
        for g in optimizer.param_groups
        if g["name"] == "linear_proj"
        for p in g["params"]
    ]
    assert linear_proj and all(
        "sampling_offsets" in n or "reference_points" in n for n in linear_proj
    )
    assert any("reference_points" in n for n in linear_proj)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    assert all(g["weight_decay"] == 1e-4 for g in optimizer.param_groups)

    with EventStorage(0):
        sum(model(detr_batch).values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) > 0.1
    optimizer.step()  # clips in place before stepping
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) <= 0.1 + 1e-6


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.PAPLOSS.LOSS", "ap"], "MODEL.PAPLOSS.LOSS"),
        (["MODEL.PAPLOSS.QUALITY", "area"], "MODEL.PAPLOSS.QUALITY"),
        (["MODEL.PAPLOSS.DETR.GRAD_SCALE", "0.0"], "MODEL.PAPLOSS.DETR.GRAD_SCALE"),
        (
            ["MODEL.PAPLOSS.DETR.FUNCTIONS.H2", "[[0.5, 0.2], [0.4, 0.4], [0.6, 0.6], [0.8, 0.8]]"],
            "MODEL.PAPLOSS.DETR.FUNCTIONS",
        ),
        (["MODEL.DEFORMABLE_DETR.NUM_HEADS", "3"], "MODEL.DEFORMABLE_DETR.HIDDEN_DIM"),
        (["MODEL.DEFORMABLE_DETR.NUM_QUERIES", "0"], "MODEL.DEFORMABLE_DETR.NUM_QUERIES"),
        (["MODEL.DEFORMABLE_DETR.DEC_POINTS", "0"], "MODEL.DEFORMABLE_DETR.DEC_POINTS"),
        (["MODEL.DEFORMABLE_DETR.DROPOUT", "1.5"], "MODEL.DEFORMABLE_DETR.DROPOUT"),
        (["MODEL.DEFORMABLE_DETR.ENC_LAYERS", "-1"], "MODEL.DEFORMABLE_DETR.ENC_LAYERS"),
        (["MODEL.DEFORMABLE_DETR.IN_FEATURES", "['res3', 'p9']"], "MODEL.DEFORMABLE_DETR.IN_FEATURES"),
        (["MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS", "2"], "MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS"),
        (
            ["MODEL.DEFORMABLE_DETR.MATCHER.COST_CLASS", "0.0", "MODEL.DEFORMABLE_DETR.MATCHER.COST_BBOX",
             "0.0", "MODEL.DEFORMABLE_DETR.MATCHER.COST_GIOU", "0.0"],
            "MODEL.DEFORMABLE_DETR.MATCHER",
        ),
        (["MODEL.DEFORMABLE_DETR.LOSS.FOCAL_ALPHA", "2.0"], "MODEL.DEFORMABLE_DETR.LOSS.FOCAL_ALPHA"),
        (["MODEL.DEFORMABLE_DETR.LOSS.GIOU_WEIGHT", "-1.0"], "MODEL.DEFORMABLE_DETR.LOSS.GIOU_WEIGHT"),
    ],
)  # fmt: skip
def test_bad_model_config_values_name_the_key(opts, message):
    cfg = load_config(TINY_CONFIG, opts)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        build_model(cfg)


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.DEFORMABLE_DETR.OPTIMIZER.CLIP_MAX_NORM", "-1.0"], "CLIP_MAX_NORM"),
        (["MODEL.DEFORMABLE_DETR.OPTIMIZER.BACKBONE_LR_FACTOR", "-0.1"], "BACKBONE_LR_FACTOR"),
        (["SOLVER.CLIP_GRADIENTS.ENABLED", "True"], "SOLVER.CLIP_GRADIENTS.ENABLED"),
    ],
)
def test_bad_optimizer_config_values_name_the_key(opts, message):
    cfg = load_config(TINY_CONFIG, opts)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        build_optimizer(cfg, build_model(cfg))


def test_unknown_keys_and_wrong_types_name_the_key():
    with pytest.raises(ValueError, match="command-line overrides.*NUM_QUERY"):
        load_config(TINY_CONFIG, ["MODEL.DEFORMABLE_DETR.NUM_QUERY", "10"])
    with pytest.raises(ValueError, match=r"MODEL\.DEFORMABLE_DETR\.TWO_STAGE"):
        load_config(TINY_CONFIG, ["MODEL.DEFORMABLE_DETR.TWO_STAGE", "1"])


@pytest.mark.parametrize("path", _detectron2_configs())
def test_every_project_config_loads_and_builds(path):
    cfg = load_config(path, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    model = build_model(cfg)
    assert isinstance(model, PAPDeformableDETR)
    name = os.path.basename(path)
    for loss in ("stock", "pap", "rs"):
        if f"_{loss}" in name:
            assert cfg.MODEL.PAPLOSS.LOSS == loss
    build_optimizer(cfg, model)


def test_the_project_code_is_device_agnostic():
    sources = glob.glob(os.path.join(PROJECT, "**", "*.py"), recursive=True)
    assert len(sources) >= 10
    for source in sources:
        with open(source) as f:
            text = f.read()
        assert ".cuda(" not in text and '"cuda"' not in text, source


def test_search_overrides_in_the_head_layout_set_the_shared_functions_and_lambda():
    """MODEL.PAPLOSS.DETR has the layout of paploss's searched heads: 5 x 8 θ + λ = 41 values,
    written as ``MODEL.PAPLOSS.DETR.FUNCTIONS.<NAME>`` knots and ``MODEL.PAPLOSS.DETR.GRAD_SCALE``.
    """
    generator = torch.Generator().manual_seed(0)
    theta = torch.rand(5, 8, generator=generator, dtype=torch.float64)
    expected = PAPFunctions.from_theta(theta)
    opts = []
    for name, knots in expected.to_dict().items():
        opts += [f"{PAP_PREFIX}.FUNCTIONS.{name}", knots]
    opts += [f"{PAP_PREFIX}.GRAD_SCALE", lambda_from_theta(0.8)]
    assert len(theta.flatten()) + 1 == 41
    cfg = load_config(TINY_CONFIG, ["MODEL.PAPLOSS.LOSS", "pap"])
    cfg.merge_from_list(opts)
    criterion = build_model(cfg).criterion
    assert criterion.grad_scale == pytest.approx(10 ** (2 * 0.8 - 1))
    torch.testing.assert_close(criterion.functions.to_theta(), theta, atol=1e-9, rtol=0)


def test_published_training_augmentations_crop_half_of_the_images(detr_batch):
    # (detr_batch makes sure the synthetic training split exists.)
    from deformable_detr import build_train_augmentations
    from detectron2.data import DatasetMapper, get_detection_dataset_dicts
    from detectron2.data import transforms as T

    cfg = load_config(os.path.join(PROJECT, "configs", "coco", "deformable_detr_R50_pap.yaml"))
    augmentations = build_train_augmentations(cfg)
    assert [type(a) for a in augmentations] == [T.RandomFlip, T.RandomApply, T.ResizeShortestEdge]
    assert augmentations[1].prob == 0.5
    seed_everything(0)
    mapper = DatasetMapper(cfg, is_train=True, augmentations=augmentations)
    record = get_detection_dataset_dicts(["synthetic_shapes_train"])[0]
    sizes = set()
    for _ in range(8):
        mapped = mapper(copy.deepcopy(record))
        height, width = mapped["image"].shape[-2:]
        assert min(height, width) in cfg.INPUT.MIN_SIZE_TRAIN
        boxes = mapped["instances"].gt_boxes.tensor
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        sizes.add((height, width))
    assert any(h != w for h, w in sizes)  # a crop made a square image non-square


def _hand_rs_loss(logits, boxes, matched, delta):
    """Rank & Sort Loss over every (query, class) entry plus the GIoU loss weighted by each
    matched query's detached best class score and balanced by value, written out by hand on the
    normalised boxes."""
    from deformable_detr.box_ops import box_cxcywh_to_xyxy

    from paploss.losses import rank_sort_loss
    from paploss.losses.box_quality import paired_iou_giou

    image, query, gt_labels, gt_boxes = matched
    num_queries, num_classes = logits.shape[1:]
    index = (image * num_queries + query) * num_classes + gt_labels
    flat = logits.reshape(-1)
    targets = torch.zeros(flat.shape, dtype=torch.int8)
    targets[index] = 1
    iou, giou = paired_iou_giou(
        box_cxcywh_to_xyxy(boxes[image, query]), box_cxcywh_to_xyxy(gt_boxes)
    )
    labels = torch.zeros_like(flat)
    labels[index] = iou.detach().clamp(0, 1)
    rs = rank_sort_loss(flat, targets, labels, delta)
    scores = logits.detach()[image, query].sigmoid().max(dim=1).values
    box = (scores * (1 - giou)).sum() / scores.sum()
    return rs + (rs.detach() / box.detach()) * box


def test_rs_loss_is_paplosss_rank_sort_definition(detr_batch):
    """The criterion's ``rs`` loss of a layer equals Rank & Sort Loss with the score-weighted,
    value-balanced GIoU loss (as paploss's RS heads), value and gradients."""
    _, model = _model("MODEL.PAPLOSS.LOSS", "rs")
    criterion = model.criterion
    images = model.preprocess_image(detr_batch)
    targets = model.prepare_targets(detr_batch, images.image_sizes)
    torch.manual_seed(1)
    logits = torch.randn(4, 50, 4, requires_grad=True)
    boxes = torch.rand(4, 50, 4).mul(0.5).add(0.2).requires_grad_()
    num_boxes = criterion.num_boxes(targets, logits.device)
    losses = criterion.layer_losses(logits, boxes, targets, num_boxes)
    matched = criterion.matched(criterion.matcher(logits, boxes, targets), targets, logits.device)
    expected = criterion.ranking_weight * _hand_rs_loss(logits, boxes, matched, 0.5)
    torch.testing.assert_close(losses["loss_rs"], expected, rtol=1e-5, atol=1e-6)
    got = torch.autograd.grad(losses["loss_rs"], (logits, boxes))
    want = torch.autograd.grad(expected, (logits, boxes))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
