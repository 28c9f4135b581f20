#!/usr/bin/env python
"""Train and evaluate a detector with paploss's heads, in Detectron2's style.

Examples::

    python tools/train_net.py --config-file configs/synthetic/retinanet_stock.yaml
    python tools/train_net.py --config-file configs/synthetic/retinanet_stock.yaml --resume
    python tools/train_net.py --config-file configs/synthetic/retinanet_stock.yaml --eval-only \\
        MODEL.WEIGHTS output/synthetic/retinanet_stock/model_final.pth
    python tools/train_net.py --num-gpus 8 --config-file configs/coco/pap_retinanet_R50_FPN_512.yaml
"""

import os
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, default_setup, launch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from paploss.engine import Trainer, setup_cfg  # noqa: E402


def setup(args):
    """Create the config (paploss keys added, datasets registered) and set up logging."""
    cfg = setup_cfg(args.config_file, args.opts)
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
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
