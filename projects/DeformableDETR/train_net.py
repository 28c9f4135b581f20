#!/usr/bin/env python
"""Train and evaluate Deformable DETR with paploss's losses, in Detectron2's style.

Run from the repository root (or anywhere, with paploss importable)::

    python projects/DeformableDETR/train_net.py \\
        --config-file projects/DeformableDETR/configs/deformable_detr_tiny_pap.yaml
    python projects/DeformableDETR/train_net.py --num-gpus 8 \\
        --config-file projects/DeformableDETR/configs/coco/deformable_detr_R50_pap.yaml
    python projects/DeformableDETR/train_net.py --eval-only --config-file ... MODEL.WEIGHTS ...
"""

import os
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, default_setup, launch

# The project folder holds the `deformable_detr` package (as in Detectron2's projects); the
# repository root holds the `paploss` it belongs with.
_PROJECT = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_PROJECT, os.path.join(_PROJECT, "..", "..")]

from deformable_detr import DeformableDETRTrainer, setup_cfg  # noqa: E402


def setup(args):
    """Create the config (paploss's and the project's keys, datasets) and set up logging."""
    cfg = setup_cfg(args.config_file, args.opts)
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = DeformableDETRTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return DeformableDETRTrainer.test(cfg, model)
    trainer = DeformableDETRTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
