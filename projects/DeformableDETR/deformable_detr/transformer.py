"""The deformable transformer: encoder, decoder with prediction heads, queries, two-stage.

Shape shorthand (see :mod:`.attention`): ``N`` images, ``C`` channels, ``L`` levels, ``S`` pixels
of all levels, ``Q`` queries, ``K`` classes, ``D`` decoder layers. Reference points and boxes are
normalised to the unpadded image; ``valid_ratios [N, L, 2]`` (``(w, h)`` fraction of each level
that is not padding) turn them into the padded feature maps' frame for sampling.
"""

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiScaleDeformableAttention
from .box_ops import inverse_sigmoid
from .position_encoding import box_sine_embedding

__all__ = [
    "MLP",
    "DeformableDecoder",
    "DeformableDecoderLayer",
    "DeformableEncoder",
    "DeformableEncoderLayer",
    "DeformableTransformer",
    "encoder_reference_points",
    "valid_ratios",
]

SpatialShapes = Sequence[Tuple[int, int]]
#: Prior probability of a class at initialisation (focal-loss initialisation of the biases).
PRIOR_PROB = 0.01


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x) if index == len(self.layers) - 1 else F.relu(layer(x))
        return x


class _FeedForward(nn.Module):
    """Residual two-layer feed-forward block with post-LayerNorm."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear2(self.dropout1(F.relu(self.linear1(x))))
        return self.norm(x + self.dropout2(y))


def valid_ratios(mask: torch.Tensor) -> torch.Tensor:
    """``[N, 2]`` fraction ``(w, h)`` of a padded ``[N, H, W]`` map that is image (>= 1 pixel)."""
    height, width = mask.shape[-2:]
    valid_h = (~mask[:, :, 0]).sum(1).clamp(min=1)
    valid_w = (~mask[:, 0, :]).sum(1).clamp(min=1)
    return torch.stack([valid_w / width, valid_h / height], dim=-1).float()


def encoder_reference_points(spatial_shapes: SpatialShapes, ratios: torch.Tensor) -> torch.Tensor:
    """Reference point of every encoder pixel, for sampling on every level.

    Args:
        spatial_shapes: ``L`` pairs ``(H_l, W_l)``.
        ratios: ``[N, L, 2]`` valid ratios.

    Returns:
        ``[N, S, L, 2]``: the pixel centre normalised to the unpadded image, scaled by each
        level's valid ratio.
    """
    points = []
    for level, (height, width) in enumerate(spatial_shapes):
        ys, xs = torch.meshgrid(
            torch.arange(height, device=ratios.device, dtype=ratios.dtype) + 0.5,
            torch.arange(width, device=ratios.device, dtype=ratios.dtype) + 0.5,
            indexing="ij",
        )
        x = xs.reshape(1, -1) / (ratios[:, None, level, 0] * width)
        y = ys.reshape(1, -1) / (ratios[:, None, level, 1] * height)
        points.append(torch.stack([x, y], dim=-1))
    return torch.cat(points, dim=1)[:, :, None] * ratios[:, None]


def _level_references(reference: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
    """``[N, Q, 2|4]`` references → ``[N, Q, L, 2|4]`` in each level's padded frame."""
    if reference.shape[-1] == 4:
        ratios = torch.cat([ratios, ratios], dim=-1)
    return reference[:, :, None] * ratios[:, None]


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then a feed-forward block."""

    def __init__(
        self,
        *,
        d_model: int,
        d_ffn: int,
        dropout: float,
        num_levels: int,
        num_heads: int,
        num_points: int,
    ):
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(
            embed_dim=d_model, num_heads=num_heads, num_levels=num_levels, num_points=num_points
        )
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.ffn = _FeedForward(d_model, d_ffn, dropout)

    def forward(self, src, pos, reference_points, spatial_shapes, padding_mask):
        """``src``, ``pos``: ``[N, S, C]``; ``reference_points`` ``[N, S, L, 2]``; returns
        ``[N, S, C]``."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask)
        return self.ffn(self.norm(src + self.dropout(attended)))


class DeformableEncoder(nn.Module):
    def __init__(self, num_layers: int, **layer_args):
        super().__init__()
        self.layers = nn.ModuleList(DeformableEncoderLayer(**layer_args) for _ in range(num_layers))

    def forward(self, src, pos, spatial_shapes, ratios, padding_mask) -> torch.Tensor:
        """``src``, ``pos``: ``[N, S, C]``; ``ratios`` ``[N, L, 2]``; returns memory ``[N, S, C]``."""
        reference_points = encoder_reference_points(spatial_shapes, ratios)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, padding_mask)
        return src


class DeformableDecoderLayer(nn.Module):
    """Self-attention among queries, deformable cross-attention to the memory, feed-forward."""

    def __init__(
        self,
        *,
        d_model: int,
        d_ffn: int,
        dropout: float,
        num_levels: int,
        num_heads: int,
        num_points: int,
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(
            d_model, num_heads, dropout=dropout, batch_first=True
        )
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MultiScaleDeformableAttention(
            embed_dim=d_model, num_heads=num_heads, num_levels=num_levels, num_points=num_points
        )
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = _FeedForward(d_model, d_ffn, dropout)

    def forward(self, tgt, query_pos, reference_points, memory, spatial_shapes, padding_mask):
        """``tgt``, ``query_pos``: ``[N, Q, C]``; ``reference_points`` ``[N, Q, L, 2|4]``;
        ``memory`` ``[N, S, C]``; returns ``[N, Q, C]``."""
        q = k = tgt + query_pos
        attended = self.self_attn(q, k, tgt, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attended))
        attended = self.cross_attn(
            tgt + query_pos, reference_points, memory, spatial_shapes, padding_mask
        )
        tgt = self.norm2(tgt + self.dropout2(attended))
        return self.ffn(tgt)


class DeformableDecoder(nn.Module):
    """Decoder layers with the class and box heads applied after every layer.

    Boxes are predicted relative to each layer's reference: ``sigmoid(delta + logit(reference))``
    (only the centre for 2-d reference points). With iterative box refinement every layer has its
    own heads and the (detached) boxes of a layer are the next layer's reference boxes; otherwise
    the heads are shared and every layer uses the initial references.
    """

    def __init__(
        self,
        num_layers: int,
        *,
        num_classes: int,
        with_box_refine: bool,
        sized_references: bool,
        **layer_args,
    ):
        """
        Args:
            num_layers: decoder layers.
            num_classes: ``K``.
            with_box_refine: iterative box refinement (one head pair per layer).
            sized_references: whether the initial references are boxes (two-stage) rather than
                points; sets the initial width/height bias.
            layer_args: the arguments of :class:`DeformableDecoderLayer`.
        """
        super().__init__()
        d_model = layer_args["d_model"]
        self.layers = nn.ModuleList(DeformableDecoderLayer(**layer_args) for _ in range(num_layers))
        self.with_box_refine = with_box_refine
        self.sized_references = sized_references
        num_heads = num_layers if with_box_refine else 1
        self.class_embed = nn.ModuleList(nn.Linear(d_model, num_classes) for _ in range(num_heads))
        self.bbox_embed = nn.ModuleList(MLP(d_model, d_model, 4, 3) for _ in range(num_heads))

    def reset_heads(self) -> None:
        """Class biases at the prior ``PRIOR_PROB``; box deltas 0, except that boxes predicted
        from reference *points* start at width and height ``sigmoid(-2)``."""
        bias = -math.log((1 - PRIOR_PROB) / PRIOR_PROB)
        for index, (class_embed, bbox_embed) in enumerate(zip(self.class_embed, self.bbox_embed)):
            nn.init.constant_(class_embed.bias, bias)
            last = bbox_embed.layers[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            # Refined layers after the first start from the previous layer's box size.
            if not self.sized_references and index == 0:
                nn.init.constant_(last.bias[2:], -2.0)

    def _heads(self, layer: int):
        index = layer if self.with_box_refine else 0
        return self.class_embed[index], self.bbox_embed[index]

    def forward(
        self, tgt, reference, memory, spatial_shapes, ratios, query_pos, padding_mask
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            tgt: ``[N, Q, C]`` query content.
            reference: ``[N, Q, 2]`` reference points or ``[N, Q, 4]`` reference boxes.
            memory: ``[N, S, C]`` encoder output.
            spatial_shapes: ``L`` pairs ``(H_l, W_l)``.
            ratios: ``[N, L, 2]`` valid ratios.
            query_pos: ``[N, Q, C]`` query position embedding.
            padding_mask: ``[N, S]`` bool.

        Returns:
            ``logits [D, N, Q, K]`` and ``boxes [D, N, Q, 4]`` (normalised ``(cx, cy, w, h)``).
        """
        all_logits, all_boxes = [], []
        for index, layer in enumerate(self.layers):
            tgt = layer(
                tgt,
                query_pos,
                _level_references(reference, ratios),
                memory,
                spatial_shapes,
                padding_mask,
            )
            class_embed, bbox_embed = self._heads(index)
            delta = bbox_embed(tgt)
            if reference.shape[-1] == 4:
                boxes = (delta + inverse_sigmoid(reference)).sigmoid()
            else:
                centre = delta[..., :2] + inverse_sigmoid(reference)
                boxes = torch.cat([centre, delta[..., 2:]], dim=-1).sigmoid()
            all_logits.append(class_embed(tgt))
            all_boxes.append(boxes)
            if self.with_box_refine:
                reference = boxes.detach()
        return torch.stack(all_logits), torch.stack(all_boxes)


class DeformableTransformer(nn.Module):
    """Flattens the feature levels, encodes them, forms the queries, decodes them.

    Queries are learned embeddings (content and position) with reference points predicted from
    the position part, or, in the two-stage variant, the encoder's top-scoring pixel proposals.
    """

    def __init__(
        self,
        *,
        d_model: int = 256,
        num_heads: int = 8,
        enc_layers: int = 6,
        dec_layers: int = 6,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        num_levels: int = 4,
        enc_points: int = 4,
        dec_points: int = 4,
        num_queries: int = 300,
        num_classes: int = 80,
        with_box_refine: bool = False,
        two_stage: bool = False,
    ):
        super().__init__()
        common = dict(d_model=d_model, d_ffn=d_ffn, dropout=dropout, num_levels=num_levels)
        common["num_heads"] = num_heads
        self.d_model = d_model
        self.num_levels = num_levels
        self.num_queries = num_queries
        self.two_stage = two_stage
        self.level_embed = nn.Parameter(torch.empty(num_levels, d_model))
        self.encoder = DeformableEncoder(enc_layers, num_points=enc_points, **common)
        self.decoder = DeformableDecoder(
            dec_layers,
            num_classes=num_classes,
            with_box_refine=with_box_refine,
            sized_references=two_stage,
            num_points=dec_points,
            **common,
        )
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            # Class-agnostic proposal score and box of every encoder pixel.
            self.enc_class_embed = nn.Linear(d_model, 1)
            self.enc_bbox_embed = MLP(d_model, d_model, 4, 3)
            self.pos_trans = nn.Linear(2 * d_model, 2 * d_model)
            self.pos_trans_norm = nn.LayerNorm(2 * d_model)
        else:
            self.query_embed = nn.Embedding(num_queries, 2 * d_model)
            self.reference_points = nn.Linear(d_model, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        for module in self.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)
        if self.two_stage:
            nn.init.constant_(self.enc_class_embed.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
            nn.init.zeros_(self.enc_bbox_embed.layers[-1].weight)
            nn.init.zeros_(self.enc_bbox_embed.layers[-1].bias)
        else:
            nn.init.zeros_(self.reference_points.bias)
        self.decoder.reset_heads()

    def encoder_proposals(
        self, memory: torch.Tensor, padding_mask: torch.Tensor, spatial_shapes: SpatialShapes
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Score and box every encoder pixel (two-stage).

        Each pixel proposes a box centred on it with side ``0.05 * 2^level``; the encoder heads
        predict a score and a correction. Proposals on padding or near the border (any
        coordinate outside (0.01, 0.99)) are invalid: zero features, infinite box logits.

        Returns:
            ``logits [N, S, 1]``, box logits ``[N, S, 4]`` (``sigmoid`` gives boxes) and
            ``invalid [N, S]`` bool.
        """
        n = memory.shape[0]
        proposals, start = [], 0
        for level, (height, width) in enumerate(spatial_shapes):
            level_mask = padding_mask[:, start : start + height * width].view(n, height, width)
            start += height * width
            size = torch.tensor([width, height], dtype=memory.dtype, device=memory.device)
            valid = valid_ratios(level_mask).to(memory.dtype) * size  # valid (w, h) in pixels
            ys, xs = torch.meshgrid(
                torch.arange(height, device=memory.device, dtype=memory.dtype),
                torch.arange(width, device=memory.device, dtype=memory.dtype),
                indexing="ij",
            )
            centres = (torch.stack([xs, ys], dim=-1)[None] + 0.5) / valid[:, None, None, :]
            sizes = torch.full_like(centres, 0.05 * 2.0**level)
            proposals.append(torch.cat([centres, sizes], dim=-1).view(n, -1, 4))
        proposals = torch.cat(proposals, dim=1)
        inside = ((proposals > 0.01) & (proposals < 0.99)).all(dim=-1)
        invalid = padding_mask | ~inside
        proposal_logits = inverse_sigmoid(proposals).masked_fill(invalid[..., None], float("inf"))
        features = self.enc_output_norm(self.enc_output(memory.masked_fill(invalid[..., None], 0)))
        logits = self.enc_class_embed(features)
        box_logits = self.enc_bbox_embed(features) + proposal_logits
        return logits, box_logits, invalid

    def forward(
        self,
        features: List[torch.Tensor],
        masks: List[torch.Tensor],
        pos_embeds: List[torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            features: ``L`` maps ``[N, C, H_l, W_l]``.
            masks: ``L`` masks ``[N, H_l, W_l]``, True at padding.
            pos_embeds: ``L`` position embeddings ``[N, C, H_l, W_l]``.

        Returns:
            ``{"logits": [D, N, Q, K], "boxes": [D, N, Q, 4]}``, plus ``"enc_logits"``
            ``[N, S, 1]`` and ``"enc_boxes"`` ``[N, S, 4]`` in the two-stage variant.
        """
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature levels, got {len(features)}")
        spatial_shapes = [tuple(int(v) for v in f.shape[-2:]) for f in features]
        src = torch.cat([f.flatten(2).transpose(1, 2) for f in features], dim=1)
        padding_mask = torch.cat([m.flatten(1) for m in masks], dim=1)
        pos = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[i] for i, p in enumerate(pos_embeds)],
            dim=1,
        )
        ratios = torch.stack([valid_ratios(m) for m in masks], dim=1)  # [N, L, 2]
        memory = self.encoder(src, pos, spatial_shapes, ratios, padding_mask)

        n = memory.shape[0]
        outputs: Dict[str, torch.Tensor] = {}
        if self.two_stage:
            enc_logits, enc_box_logits, invalid = self.encoder_proposals(
                memory, padding_mask, spatial_shapes
            )
            outputs["enc_logits"] = enc_logits
            outputs["enc_boxes"] = enc_box_logits.sigmoid()
            scores = enc_logits[..., 0].detach().masked_fill(invalid, float("-inf"))
            num_queries = min(self.num_queries, scores.shape[1])
            top = scores.topk(num_queries, dim=1).indices
            top_box_logits = torch.gather(enc_box_logits, 1, top[..., None].expand(-1, -1, 4))
            reference = top_box_logits.detach().sigmoid()
            embedding = box_sine_embedding(reference, self.d_model // 2)
            query_pos, tgt = self.pos_trans_norm(self.pos_trans(embedding)).split(
                self.d_model, dim=-1
            )
        else:
            query_pos, tgt = self.query_embed.weight.split(self.d_model, dim=1)
            query_pos = query_pos[None].expand(n, -1, -1)
            tgt = tgt[None].expand(n, -1, -1)
            reference = self.reference_points(query_pos).sigmoid()
        logits, boxes = self.decoder(
            tgt, reference, memory, spatial_shapes, ratios, query_pos, padding_mask
        )
        outputs["logits"] = logits
        outputs["boxes"] = boxes
        return outputs
