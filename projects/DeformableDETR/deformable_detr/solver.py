"""The published Deformable DETR optimizer: AdamW with per-group learning rates and clipping.

* the backbone at ``BASE_LR * BACKBONE_LR_FACTOR`` (0.1);
* the linear projections that predict the sampling offsets and the reference points at
  ``BASE_LR * LINEAR_PROJ_LR_FACTOR`` (0.1), as in the paper;
* everything else at ``BASE_LR`` (2e-4); weight decay ``SOLVER.WEIGHT_DECAY`` (1e-4) everywhere;
* before every step the gradient of the whole model is clipped to L2 norm ``CLIP_MAX_NORM``
  (0.1). Detectron2's own ``SOLVER.CLIP_GRADIENTS`` clips each parameter separately, which is
  not the published rule, so it must stay disabled.

Detectron2's LR scheduler multiplies each group's own initial learning rate, so the factors
persist through warm-up and decay.
"""

from typing import Dict, List, Type

import torch
from torch import nn

from .config import config_number

__all__ = ["LINEAR_PROJ_NAMES", "build_optimizer", "param_groups"]

#: Module names whose parameters get ``LINEAR_PROJ_LR_FACTOR``.
LINEAR_PROJ_NAMES = ("sampling_offsets", "reference_points")


def param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    backbone_lr_factor: float,
    linear_proj_lr_factor: float,
) -> List[Dict]:
    """Parameter groups ``backbone``, ``linear_proj`` and ``other`` (empty groups left out).

    Each group is a dict with ``params``, ``lr``, ``weight_decay`` and ``name``. Parameters that
    do not require a gradient (frozen backbone stages) are left out.
    """
    groups: Dict[str, List[nn.Parameter]] = {"backbone": [], "linear_proj": [], "other": []}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith("backbone."):
            groups["backbone"].append(parameter)
        elif any(part in LINEAR_PROJ_NAMES for part in name.split(".")):
            groups["linear_proj"].append(parameter)
        else:
            groups["other"].append(parameter)
    factors = {"backbone": backbone_lr_factor, "linear_proj": linear_proj_lr_factor, "other": 1.0}
    return [
        {
            "params": params,
            "lr": base_lr * factors[name],
            "weight_decay": weight_decay,
            "name": name,
        }
        for name, params in groups.items()
        if params
    ]


def _with_full_model_clipping(
    optimizer_class: Type[torch.optim.Optimizer], max_norm: float
) -> Type[torch.optim.Optimizer]:
    class FullModelClipping(optimizer_class):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            return super().step(closure)

    FullModelClipping.__name__ = f"{optimizer_class.__name__}WithFullModelClipping"
    return FullModelClipping


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`, clipping the whole model's gradient norm if set.

    Raises:
        ValueError: naming the key, for a bad factor or clip value, or when Detectron2's
            per-parameter ``SOLVER.CLIP_GRADIENTS`` is enabled as well.
    """
    key = "MODEL.DEFORMABLE_DETR.OPTIMIZER."
    node = cfg.MODEL.DEFORMABLE_DETR.OPTIMIZER
    if cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
        raise ValueError(
            "SOLVER.CLIP_GRADIENTS.ENABLED must be False: PAPDeformableDETR clips the whole "
            f"model's gradient norm by {key}CLIP_MAX_NORM"
        )
    base_lr = config_number(cfg.SOLVER.BASE_LR, "SOLVER.BASE_LR", low_inclusive=False)
    groups = param_groups(
        model,
        base_lr=base_lr,
        weight_decay=config_number(cfg.SOLVER.WEIGHT_DECAY, "SOLVER.WEIGHT_DECAY"),
        backbone_lr_factor=config_number(node.BACKBONE_LR_FACTOR, f"{key}BACKBONE_LR_FACTOR"),
        linear_proj_lr_factor=config_number(
            node.LINEAR_PROJ_LR_FACTOR, f"{key}LINEAR_PROJ_LR_FACTOR"
        ),
    )
    max_norm = config_number(node.CLIP_MAX_NORM, f"{key}CLIP_MAX_NORM")
    optimizer_class = torch.optim.AdamW
    if max_norm > 0:
        optimizer_class = _with_full_model_clipping(optimizer_class, max_norm)
    return optimizer_class(groups, lr=base_lr)
