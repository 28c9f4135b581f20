"""``PAPDeformableDETR``: Deformable DETR as a Detectron2 meta-architecture."""

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone, detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn

from .box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from .config import config_bool, config_int, config_number, config_str_list
from .criterion import DeformableDETRCriterion
from .position_encoding import sine_position_embedding
from .transformer import DeformableTransformer

__all__ = ["PAPDeformableDETR"]

_KEY = "MODEL.DEFORMABLE_DETR."


def _projection(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Module:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2)
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.GroupNorm(math.gcd(32, out_channels), out_channels))


@META_ARCH_REGISTRY.register()
class PAPDeformableDETR(nn.Module):
    """Deformable DETR on any Detectron2 backbone, trained with ``MODEL.PAPLOSS.LOSS``.

    The backbone's ``IN_FEATURES`` are projected to ``HIDDEN_DIM`` channels (1x1 conv +
    GroupNorm); further levels up to ``NUM_FEATURE_LEVELS`` come from 3x3 stride-2 convolutions,
    the first of the last backbone feature. Padding (Detectron2 batches images of different sizes)
    is masked everywhere. Training returns the loss dict of :class:`DeformableDETRCriterion`;
    inference keeps the top ``TEST.DETECTIONS_PER_IMAGE`` (query, class) pairs of the last
    decoder layer by sigmoid score, as ``Instances`` in the original image resolution.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        in_features: Sequence[str],
        transformer: DeformableTransformer,
        criterion: DeformableDETRCriterion,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        detections_per_image: int = 100,
    ):
        """
        Args:
            backbone: any Detectron2 backbone.
            in_features: backbone outputs fed to the transformer, fine to coarse.
            transformer: its ``num_levels`` must be at least ``len(in_features)``.
            criterion: the training losses.
            pixel_mean, pixel_std: input normalisation.
            detections_per_image: detections kept per image at inference.
        """
        super().__init__()
        shapes = backbone.output_shape()
        missing = [name for name in in_features if name not in shapes]
        if missing:
            raise ValueError(
                f"{_KEY}IN_FEATURES: the backbone has no output {missing}; it has {sorted(shapes)}"
            )
        if transformer.num_levels < len(in_features):
            raise ValueError(
                f"{_KEY}NUM_FEATURE_LEVELS ({transformer.num_levels}) must be at least the "
                f"number of IN_FEATURES ({len(in_features)})"
            )
        self.backbone = backbone
        self.in_features = list(in_features)
        self.transformer = transformer
        self.criterion = criterion
        self.detections_per_image = detections_per_image
        hidden = transformer.d_model
        projections = [_projection(shapes[name].channels, hidden, 1, 1) for name in in_features]
        in_channels = shapes[in_features[-1]].channels
        for _ in range(transformer.num_levels - len(in_features)):
            projections.append(_projection(in_channels, hidden, 3, 2))
            in_channels = hidden
        self.input_proj = nn.ModuleList(projections)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg) -> dict:
        node = cfg.MODEL.DEFORMABLE_DETR
        hidden = config_int(node.HIDDEN_DIM, f"{_KEY}HIDDEN_DIM")
        heads = config_int(node.NUM_HEADS, f"{_KEY}NUM_HEADS")
        if hidden % heads != 0 or hidden % 4 != 0:
            raise ValueError(
                f"{_KEY}HIDDEN_DIM ({hidden}) must be divisible by 4 and by NUM_HEADS ({heads})"
            )
        two_stage = config_bool(node.TWO_STAGE, f"{_KEY}TWO_STAGE")
        transformer = DeformableTransformer(
            d_model=hidden,
            num_heads=heads,
            enc_layers=config_int(node.ENC_LAYERS, f"{_KEY}ENC_LAYERS", low=0),
            dec_layers=config_int(node.DEC_LAYERS, f"{_KEY}DEC_LAYERS"),
            d_ffn=config_int(node.DIM_FEEDFORWARD, f"{_KEY}DIM_FEEDFORWARD"),
            dropout=config_number(node.DROPOUT, f"{_KEY}DROPOUT", high=0.999),
            num_levels=config_int(node.NUM_FEATURE_LEVELS, f"{_KEY}NUM_FEATURE_LEVELS"),
            enc_points=config_int(node.ENC_POINTS, f"{_KEY}ENC_POINTS"),
            dec_points=config_int(node.DEC_POINTS, f"{_KEY}DEC_POINTS"),
            num_queries=config_int(node.NUM_QUERIES, f"{_KEY}NUM_QUERIES"),
            num_classes=config_int(node.NUM_CLASSES, f"{_KEY}NUM_CLASSES"),
            with_box_refine=config_bool(node.WITH_BOX_REFINE, f"{_KEY}WITH_BOX_REFINE"),
            two_stage=two_stage,
        )
        return {
            "backbone": build_backbone(cfg),
            "in_features": config_str_list(node.IN_FEATURES, f"{_KEY}IN_FEATURES"),
            "transformer": transformer,
            "criterion": DeformableDETRCriterion(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "detections_per_image": config_int(
                cfg.TEST.DETECTIONS_PER_IMAGE, "TEST.DETECTIONS_PER_IMAGE"
            ),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise and batch the images (padded to the backbone's size divisibility)."""
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def predict(self, images: ImageList) -> Dict[str, torch.Tensor]:
        """The transformer's outputs for a batch (see :meth:`DeformableTransformer.forward`)."""
        features = self.backbone(images.tensor)
        n, _, height, width = images.tensor.shape
        image_mask = torch.ones((n, height, width), dtype=torch.bool, device=self.device)
        for index, (h, w) in enumerate(images.image_sizes):
            image_mask[index, :h, :w] = False
        sources = [proj(features[name]) for proj, name in zip(self.input_proj, self.in_features)]
        previous = features[self.in_features[-1]]
        for proj in self.input_proj[len(self.in_features) :]:
            previous = proj(previous)
            sources.append(previous)
        masks = [
            F.interpolate(image_mask[None].float(), size=s.shape[-2:])[0].bool() for s in sources
        ]
        pos = [
            sine_position_embedding(m, self.transformer.d_model // 2).to(s.dtype)
            for m, s in zip(masks, sources)
        ]
        return self.transformer(sources, masks, pos)

    def prepare_targets(
        self, batched_inputs: List[Dict], image_sizes: Sequence[Tuple[int, int]]
    ) -> List[Dict[str, torch.Tensor]]:
        """Ground truth as ``labels [G]`` and normalised ``(cx, cy, w, h)`` ``boxes [G, 4]``, with
        the unpadded input ``image_size [2]`` ``(height, width)``."""
        targets = []
        for x, (h, w) in zip(batched_inputs, image_sizes):
            if "instances" not in x:
                raise ValueError("PAPDeformableDETR: training inputs need 'instances'")
            instances = x["instances"].to(self.device)
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            boxes = box_xyxy_to_cxcywh(instances.gt_boxes.tensor / scale)
            size = torch.tensor([h, w], dtype=torch.float32, device=self.device)
            targets.append(
                {"labels": instances.gt_classes.long(), "boxes": boxes, "image_size": size}
            )
        return targets

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: Detectron2 model inputs (``image`` ``[3, H, W]``; ``instances`` in
                training; optional ``height``/``width`` of the output resolution).

        Returns:
            Training: the loss dict. Inference: one ``{"instances": Instances}`` per image.
        """
        images = self.preprocess_image(batched_inputs)
        outputs = self.predict(images)
        if self.training:
            return self.criterion(outputs, self.prepare_targets(batched_inputs, images.image_sizes))
        results = self.inference(outputs["logits"][-1], outputs["boxes"][-1], images.image_sizes)
        processed = []
        for result, x, (h, w) in zip(results, batched_inputs, images.image_sizes):
            height, width = x.get("height", h), x.get("width", w)
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed

    def inference(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        image_sizes: Sequence[Tuple[int, int]],
    ) -> List[Instances]:
        """Top ``detections_per_image`` (query, class) pairs of each image by sigmoid score.

        Args:
            logits: ``[N, Q, K]``.
            boxes: ``[N, Q, 4]`` normalised ``(cx, cy, w, h)``.
            image_sizes: ``N`` network input sizes ``(h, w)`` (unpadded).

        Returns:
            ``N`` ``Instances`` in input-image pixels (``pred_boxes``, ``scores``,
            ``pred_classes``).
        """
        num_classes = logits.shape[-1]
        results = []
        for image_logits, image_boxes, (h, w) in zip(logits, boxes, image_sizes):
            scores = image_logits.sigmoid().flatten()
            scores, index = scores.topk(min(self.detections_per_image, scores.numel()))
            query = torch.div(index, num_classes, rounding_mode="floor")
            scale = torch.tensor([w, h, w, h], dtype=image_boxes.dtype, device=image_boxes.device)
            result = Instances((h, w))
            result.pred_boxes = Boxes(box_cxcywh_to_xyxy(image_boxes[query]) * scale)
            result.scores = scores
            result.pred_classes = index % num_classes
            results.append(result)
        return results
