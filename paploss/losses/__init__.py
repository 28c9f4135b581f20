"""Loss functions in pure PyTorch (no Detectron2): the PAP loss, its monotone functions, gradient
scaling, the exact sort + prefix-sum pairwise sums shared by the ranking losses, and the mask
qualities (Dice loss, soft mask IoU)."""

from .functions import (
    FUNCTION_NAMES,
    IDENTITY_THETA,
    MIN_KNOT_SPACING,
    PAPFunctions,
    PiecewiseLinear,
    knots_to_theta,
    theta_to_knots,
)
from .grad_scale import GradScale, lambda_from_theta, scale_grad, theta_from_lambda
from .mask_quality import DICE_EPS, dice_loss, soft_mask_iou
from .pairwise import (
    SortedScores,
    gap_sum,
    pairwise_gap_slope_sum,
    pairwise_gap_sum,
    pairwise_gap_sums,
    pairwise_gap_sums_per_score,
    piecewise_linear,
    sort_scores,
)
from .pap import (
    PAPLossComponents,
    pap_loss,
    pap_loss_components,
    pap_loss_dense,
    pap_loss_dense_components,
    topk_valid_mask,
)
from .published import published_grad_scale, published_knots, published_names

# isort: split
# Ranking-loss baselines with their error-driven gradients, and their loop references.
from .alrp_loss import alrp_loss
from .ap_loss import ap_loss
from .rank_sort_loss import rank_sort_loss
from .ranking_reference import alrp_loss_reference, ap_loss_reference, rank_sort_loss_reference

__all__ = [
    "FUNCTION_NAMES",
    "IDENTITY_THETA",
    "MIN_KNOT_SPACING",
    "PAPFunctions",
    "PiecewiseLinear",
    "knots_to_theta",
    "theta_to_knots",
    "GradScale",
    "lambda_from_theta",
    "scale_grad",
    "theta_from_lambda",
    "DICE_EPS",
    "dice_loss",
    "soft_mask_iou",
    "SortedScores",
    "gap_sum",
    "pairwise_gap_slope_sum",
    "pairwise_gap_sum",
    "pairwise_gap_sums",
    "pairwise_gap_sums_per_score",
    "piecewise_linear",
    "sort_scores",
    "PAPLossComponents",
    "pap_loss",
    "pap_loss_components",
    "pap_loss_dense",
    "pap_loss_dense_components",
    "topk_valid_mask",
    "published_grad_scale",
    "published_knots",
    "published_names",
    "alrp_loss",
    "alrp_loss_reference",
    "ap_loss",
    "ap_loss_reference",
    "rank_sort_loss",
    "rank_sort_loss_reference",
]
