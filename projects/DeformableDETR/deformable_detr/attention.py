"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021, section 4.1).

Every query attends to ``P`` sampled points per head and per feature level around its reference
point; the sampling offsets and the attention weights (softmax over the ``L * P`` points of a head)
are linear functions of the query. Shape shorthand:

* ``N``: images; ``Lq``: queries; ``C``: channels; ``H``: heads; ``D = C / H``
* ``L``: feature levels of spatial shapes ``(H_l, W_l)``; ``S = sum_l H_l W_l`` flattened pixels
* ``P``: sampling points per head and level

Sampling locations are normalised ``(x, y)`` in [0, 1] over the (padded) feature map, pixel
centres at ``(i + 0.5) / W_l``; values outside the map are zero (bilinear interpolation with zero
padding, as ``grid_sample(..., align_corners=False, padding_mode="zeros")``).

:func:`ms_deform_attn_sample` is the pure-PyTorch path (``grid_sample``, device-agnostic);
:func:`ms_deform_attn_reference` computes the same thing with explicit loops over levels, heads
and points and hand-written bilinear interpolation, for tests and benchmarks.
"""

import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MultiScaleDeformableAttention",
    "ms_deform_attn_reference",
    "ms_deform_attn_sample",
]

SpatialShapes = Sequence[Tuple[int, int]]


def _check_sampling_inputs(value, spatial_shapes, sampling_locations, attention_weights) -> None:
    num_pixels = sum(int(h) * int(w) for h, w in spatial_shapes)
    if value.dim() != 4 or value.shape[1] != num_pixels:
        raise ValueError(
            f"value must be [N, S, H, D] with S = {num_pixels} (the spatial shapes' pixels), "
            f"got {list(value.shape)}"
        )
    n, _, heads, _ = value.shape
    expected = (n, sampling_locations.shape[1], heads, len(spatial_shapes))
    if sampling_locations.dim() != 6 or tuple(sampling_locations.shape[:4]) != expected:
        raise ValueError(
            f"sampling_locations must be [N, Lq, H, L, P, 2] with (N, H, L) = "
            f"({n}, {heads}, {len(spatial_shapes)}), got {list(sampling_locations.shape)}"
        )
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(
            f"attention_weights must be {list(sampling_locations.shape[:-1])}, "
            f"got {list(attention_weights.shape)}"
        )


def ms_deform_attn_sample(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Attention-weighted sum of bilinearly sampled values, with ``grid_sample``.

    Args:
        value: ``[N, S, H, D]`` per-head values of the flattened levels (level after level).
        spatial_shapes: ``L`` pairs ``(H_l, W_l)``.
        sampling_locations: ``[N, Lq, H, L, P, 2]`` normalised ``(x, y)``.
        attention_weights: ``[N, Lq, H, L, P]``.

    Returns:
        ``[N, Lq, H * D]``.
    """
    _check_sampling_inputs(value, spatial_shapes, sampling_locations, attention_weights)
    n, _, heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    per_level = value.split([int(h) * int(w) for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] frame
    sampled = []
    for level, (height, width) in enumerate(spatial_shapes):
        # [N, H_l W_l, H, D] -> [N H, D, H_l, W_l]
        level_value = per_level[level].flatten(2).transpose(1, 2)
        level_value = level_value.reshape(n * heads, head_dim, int(height), int(width))
        # [N, Lq, H, P, 2] -> [N H, Lq, P, 2]
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(
                level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        )  # [N H, D, Lq, P]
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # [N H, D, Lq, L P]
    weights = attention_weights.transpose(1, 2).reshape(
        n * heads, 1, num_queries, num_levels * num_points
    )
    output = (stacked * weights).sum(-1).view(n, heads * head_dim, num_queries)
    return output.transpose(1, 2).contiguous()


def _bilinear_sample(level_value: torch.Tensor, height: int, width: int, locations: torch.Tensor):
    """Sample ``level_value [N, H_l W_l, D]`` at normalised ``locations [N, Lq, 2]``."""
    x = locations[..., 0] * width - 0.5  # pixel coordinates, centres at integers
    y = locations[..., 1] * height - 0.5
    x0, y0 = torch.floor(x).detach(), torch.floor(y).detach()
    result = 0
    for corner_x in (x0, x0 + 1):
        for corner_y in (y0, y0 + 1):
            weight = (1 - (x - corner_x).abs()) * (1 - (y - corner_y).abs())
            inside = (corner_x >= 0) & (corner_x < width) & (corner_y >= 0) & (corner_y < height)
            index = corner_y.clamp(0, height - 1) * width + corner_x.clamp(0, width - 1)
            index = index.long().unsqueeze(-1).expand(-1, -1, level_value.shape[-1])
            corner = torch.gather(level_value, 1, index)  # [N, Lq, D]
            result = result + corner * (weight * inside).unsqueeze(-1)
    return result


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Readable reference of :func:`ms_deform_attn_sample`: loops over levels, heads and points.

    Same arguments and result; differentiable in ``value``, ``sampling_locations`` and
    ``attention_weights`` (plain autograd).
    """
    _check_sampling_inputs(value, spatial_shapes, sampling_locations, attention_weights)
    heads = value.shape[2]
    num_points = sampling_locations.shape[4]
    starts = [0]
    for height, width in spatial_shapes:
        starts.append(starts[-1] + int(height) * int(width))
    outputs: List[torch.Tensor] = []
    for head in range(heads):
        head_output = 0
        for level, (height, width) in enumerate(spatial_shapes):
            level_value = value[:, starts[level] : starts[level + 1], head]  # [N, H_l W_l, D]
            for point in range(num_points):
                locations = sampling_locations[:, :, head, level, point]  # [N, Lq, 2]
                sample = _bilinear_sample(level_value, int(height), int(width), locations)
                weight = attention_weights[:, :, head, level, point].unsqueeze(-1)
                head_output = head_output + weight * sample
        outputs.append(head_output)
    return torch.cat(outputs, dim=-1)  # [N, Lq, H D]


class MultiScaleDeformableAttention(nn.Module):
    """The multi-scale deformable attention module.

    Offsets are predicted in pixels of each level (2-d reference points) or as fractions of the
    reference box (4-d reference boxes ``(cx, cy, w, h)``: offsets / P * half the box size), as in
    the paper's iterative box refinement.
    """

    def __init__(
        self, *, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4
    ):
        """
        Args:
            embed_dim: ``C``, divisible by ``num_heads``.
            num_heads: ``H``.
            num_levels: ``L``.
            num_points: ``P``.
        """
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start on ``H`` directions at 1..P pixels; uniform attention weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float64) * (2 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # [H, 2]
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        distances = torch.arange(1, self.num_points + 1, dtype=torch.float64)
        bias = directions[:, None, None, :] * distances[None, None, :, None]  # [H, 1, P, 2]
        bias = bias.expand(-1, self.num_levels, -1, -1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1).to(self.sampling_offsets.bias))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for projection in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def sampling(
        self, query: torch.Tensor, reference_points: torch.Tensor, spatial_shapes: SpatialShapes
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sampling locations ``[N, Lq, H, L, P, 2]`` and attention weights ``[N, Lq, H, L, P]``.

        Args:
            query: ``[N, Lq, C]``.
            reference_points: ``[N, Lq, L, 2]`` normalised points or ``[N, Lq, L, 4]`` boxes,
                per level (already scaled by each level's valid ratio).
            spatial_shapes: ``L`` pairs ``(H_l, W_l)``.
        """
        n, num_queries, _ = query.shape
        shape = (n, num_queries, self.num_heads, self.num_levels, self.num_points)
        offsets = self.sampling_offsets(query).view(*shape, 2)
        weights = self.attention_weights(query).view(*shape[:3], -1).softmax(-1).view(shape)
        reference = reference_points[:, :, None, :, None, :]  # [N, Lq, 1, L, 1, 2|4]
        if reference_points.shape[-1] == 2:
            sizes = torch.tensor(
                [[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device
            )  # [L, 2] as (W_l, H_l)
            locations = reference + offsets / sizes[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = reference[..., :2] + offsets / self.num_points * reference[..., 2:] * 0.5
        else:
            raise ValueError(
                f"reference_points must end in 2 or 4 coordinates, got "
                f"{list(reference_points.shape)}"
            )
        return locations, weights

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value_input: torch.Tensor,
        spatial_shapes: SpatialShapes,
        padding_mask: torch.Tensor = None,
    ) -> torch.Tensor:
        """
        Args:
            query: ``[N, Lq, C]`` (content + position embedding).
            reference_points: ``[N, Lq, L, 2]`` or ``[N, Lq, L, 4]`` (see :meth:`sampling`).
            value_input: ``[N, S, C]`` flattened multi-level features.
            spatial_shapes: ``L`` pairs ``(H_l, W_l)``.
            padding_mask: ``[N, S]`` bool, True at padding pixels (their values are zeroed).

        Returns:
            ``[N, Lq, C]``.
        """
        if len(spatial_shapes) != self.num_levels:
            raise ValueError(
                f"expected {self.num_levels} feature levels, got {len(spatial_shapes)}"
            )
        n, num_pixels, _ = value_input.shape
        value = self.value_proj(value_input)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, num_pixels, self.num_heads, self.embed_dim // self.num_heads)
        locations, weights = self.sampling(query, reference_points, spatial_shapes)
        return self.output_proj(ms_deform_attn_sample(value, spatial_shapes, locations, weights))

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
            f"num_levels={self.num_levels}, num_points={self.num_points}"
        )
