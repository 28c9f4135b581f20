"""Loss values and gradients of every loss and head on fixed inputs, to compare two versions.

``python -m tests.utils.loss_snapshot record FILE`` saves them (under the ignored ``output/``, e.g.
on an older commit with ``PYTHONPATH`` pointing to its tree); ``compare FILE`` recomputes them and
reports the largest difference of each entry. The losses run in float64 on a fixed ranking problem;
the heads run their synthetic configs in float32 on a fixed training batch.
"""

import argparse
import itertools
import random
import sys
from typing import Callable, Dict

import numpy as np
import torch

Snapshot = Dict[str, torch.Tensor]

#: Synthetic configs whose heads' losses are recorded.
HEAD_CONFIGS = (
    "pap_retinanet_identity",
    "pap_retinanet_published",
    "ap_retinanet",
    "alrp_retinanet",
    "rs_retinanet",
    "pap_faster_rcnn_identity",
    "pap_faster_rcnn_published",
    "ap_faster_rcnn",
    "alrp_faster_rcnn",
    "rs_faster_rcnn",
    "graph_faster_rcnn",
    "pap_mask_rcnn",
    "pap_mask_rcnn_mask_iou",
    "rs_mask_rcnn",
)


def ranking_problem(num_entries: int = 4000, num_positives: int = 60, seed: int = 0):
    """``(logits, targets, quality)``: float64 logits with ties, int8 targets, float64 qualities."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_entries, generator=generator, dtype=torch.float64)
    logits[:200] = torch.round(logits[:200] * 4) / 4  # ties, some exactly on knots
    order = torch.randperm(num_entries, generator=generator)
    targets = torch.zeros(num_entries, dtype=torch.int8)
    targets[order[:num_positives]] = 1
    targets[order[num_positives : num_positives + num_positives // 2]] = -1
    quality = torch.rand(num_entries, generator=generator, dtype=torch.float64)
    return logits, targets, quality * (targets == 1)


def loss_cases() -> Dict[str, Callable]:
    """Name -> ``f(logits, targets, quality) -> scalar`` for every loss."""
    from paploss.losses import (
        PAPFunctions,
        alrp_loss,
        ap_loss,
        dice_loss,
        pap_loss,
        pap_loss_dense,
        rank_sort_loss,
    )
    from paploss.losses.graph import BOX, CLS, box_loss, cls_loss, parse_branch
    from paploss.losses.graph.branches import CE_EXPRESSION, GIOU_EXPRESSION

    published = PAPFunctions.published("retinanet")
    identity = PAPFunctions.identity()
    ce = parse_branch(CE_EXPRESSION, CLS)
    giou = parse_branch(GIOU_EXPRESSION, BOX)

    def boxes(values):  # [M] -> [M // 4, 4] XYXY boxes with positive sides
        xy = values.reshape(-1, 4)
        return torch.cat([xy[:, :2], xy[:, :2] + xy[:, 2:].abs() + 0.1], dim=1)

    return {
        "pap_identity": lambda s, t, q: pap_loss(s, t, q, identity),
        "pap_published": lambda s, t, q: pap_loss(s, t, q, published),
        "pap_topk": lambda s, t, q: pap_loss(s, t, q, published, topk=500),
        "pap_topk_all": lambda s, t, q: pap_loss(s, t, q, identity, topk=10**6),
        "pap_dense": lambda s, t, q: pap_loss_dense(s, t, q, published),
        "pap_dense_topk": lambda s, t, q: pap_loss_dense(s, t, q, published, topk=500),
        "ap": lambda s, t, q: ap_loss(s, t),
        "alrp": lambda s, t, q: sum(alrp_loss(s, t, q * 2)),
        "rs": lambda s, t, q: rank_sort_loss(s, t, q),
        "rs_exact_step": lambda s, t, q: rank_sort_loss(s, t, q, delta=0.0),
        "dice": lambda s, t, q: dice_loss(s.sigmoid().reshape(-1, 4, 4), q.reshape(-1, 4, 4)).sum(),
        "graph_cls": lambda s, t, q: cls_loss(ce, s.reshape(-1, 4), (q > 0.5).reshape(-1, 4)),
        "graph_box": lambda s, t, q: box_loss(giou, boxes(s), boxes(q)),
    }


def record_losses() -> Snapshot:
    """Every loss's value and gradients (logits, quality) on :func:`ranking_problem` and on a
    problem without positives."""
    snapshot = {}
    problems = {"": ranking_problem(), "_no_positives": ranking_problem(num_positives=0)}
    for suffix, (logits, targets, quality) in problems.items():
        for name, fn in loss_cases().items():
            s = logits.clone().requires_grad_(True)
            q = quality.clone().requires_grad_(True)
            loss = fn(s, targets, q)
            grads = torch.autograd.grad(loss, (s, q), allow_unused=True)
            snapshot[f"{name}{suffix}/value"] = loss.detach()
            for part, grad in zip(("logits", "quality"), grads):
                if grad is not None:
                    snapshot[f"{name}{suffix}/grad_{part}"] = grad
    return snapshot


def record_heads() -> Snapshot:
    """Every head config's loss dict and parameter gradients on a fixed synthetic batch (the
    config's first, with every generator seeded)."""
    from detectron2.data import build_detection_train_loader
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from paploss.engine import setup_cfg

    snapshot = {}
    for config in HEAD_CONFIGS:
        cfg = setup_cfg(f"configs/synthetic/{config}.yaml", ["SOLVER.IMS_PER_BATCH", "4"])
        random.seed(0)
        np.random.seed(0)
        torch.manual_seed(0)
        batch = next(itertools.islice(iter(build_detection_train_loader(cfg)), 1))
        torch.manual_seed(0)
        model = build_model(cfg)
        model.train()
        with EventStorage(0):
            losses = model(batch)
        sum(losses.values()).backward()
        for key, value in losses.items():
            snapshot[f"{config}/{key}"] = value.detach()
        for name, parameter in model.named_parameters():
            if parameter.grad is not None:
                snapshot[f"{config}/grad/{name}"] = parameter.grad
    return snapshot


def compare(recorded: Snapshot, current: Snapshot) -> float:
    """Print the entries that differ; return the largest absolute difference."""
    worst = 0.0
    for key in sorted(set(recorded) | set(current)):
        if key not in recorded or key not in current:
            print(f"{key}: only in the {'recorded' if key in recorded else 'current'} snapshot")
            worst = float("inf")
            continue
        a, b = recorded[key], current[key]
        if a.shape != b.shape:
            print(f"{key}: shape {list(a.shape)} != {list(b.shape)}")
            worst = float("inf")
            continue
        diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
        if diff > 0 or torch.isnan(a).any() != torch.isnan(b).any():
            scale = a.double().abs().max().item() if a.numel() else 0.0
            print(f"{key}: max |diff| {diff:.3g} (max |value| {scale:.3g}, dtype {a.dtype})")
        worst = max(worst, diff)
    return worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("record", "compare"))
    parser.add_argument("file")
    parser.add_argument("--losses-only", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    current = record_losses()
    if not args.losses_only:
        current.update(record_heads())
    if args.action == "record":
        torch.save(current, args.file)
        print(f"{len(current)} entries saved")
        return 0
    recorded = torch.load(args.file)
    if args.losses_only:
        recorded = {k: v for k, v in recorded.items() if k in current}
    print(f"{len(current)} entries, largest difference {compare(recorded, current):.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
