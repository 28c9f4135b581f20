#!/usr/bin/env python
"""A plain Detectron2 training script that uses paploss's heads only through its config.

Self-contained on purpose, like the ``train_net.py`` of each Detectron2 project: it is the script
a project of your own writes against Detectron2's API, which is what this project shows, so it
shares no helper with ``projects/CustomHeadLoss/train.py`` (the same script plus that project's
config keys); a helper in paploss would hide the very code it demonstrates.
"""

from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator

import paploss.data  # noqa: F401  (registers the synthetic set used by the example config)
import paploss.modeling  # noqa: F401  (registers PAPRetinaNet, PAPRPN, PAPROIHeads)
from paploss.modeling import add_paploss_config


class ProjectTrainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name):
        return COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=cfg.OUTPUT_DIR,
                             use_fast_impl=False)  # fmt: skip


def setup(args):
    cfg = get_cfg()
    add_paploss_config(cfg)
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
