#!/usr/bin/env python
"""Train a detector whose heads use this project's registered loss (``focal_giou``).

Only Detectron2's API and paploss's public names: importing ``focal_giou_loss`` registers the
loss in ``paploss.modeling.HEAD_LOSS_REGISTRY``; the config names it in ``MODEL.PAPLOSS.LOSS``.
It is ``projects/PAPByConfig/train.py`` plus ``add_focal_giou_config(cfg)``, kept self-contained
for the same reason: a project's script written against Detectron2's API is what it shows.
"""

from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator
from focal_giou_loss import add_focal_giou_config  # registers the "focal_giou" head loss

import paploss.data  # noqa: F401  (registers the synthetic set used by the example config)
from paploss.modeling import add_paploss_config  # (importing it registers paploss's heads)


class ProjectTrainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name):
        return COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=cfg.OUTPUT_DIR,
                             use_fast_impl=False)  # fmt: skip


def setup(args):
    cfg = get_cfg()
    add_paploss_config(cfg)
    add_focal_giou_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    trainer = ProjectTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, args=(args,))
