#!/usr/bin/env python
"""Train and evaluate Deformable DETR with paploss's losses, in Detectron2's style.

Run from the repository root (or anywhere, with paploss importable)::

    python projects/DeformableDETR/train_net.py \\
        --config-file projects/DeformableDETR/configs/deformable_detr_tiny_pap.yaml
    python projects/DeformableDETR/train_net.py --num-gpus 8 \\
        --config-file projects/DeformableDETR/configs/coco/deformable_detr_R50_pap.yaml
    python projects/DeformableDETR/train_net.py --eval-only --config-file ... MODEL.WEIGHTS ...
"""

import logging
import os
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

# The project folder holds the `deformable_detr` package (as in Detectron2's projects); the
# repository root holds the `paploss` it belongs with.
_PROJECT = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_PROJECT, os.path.join(_PROJECT, "..", "..")]

from deformable_detr import DeformableDETRTrainer, setup_cfg  # noqa: E402

from paploss.engine import validate_config_data  # noqa: E402


def check_config(args):
    """Load the config and check it against every dataset it names, as ``tools/train_net.py``
    does (in the launching process, so that a problem stops the run before any training process
    starts): class counts (``MODEL.DEFORMABLE_DETR.NUM_CLASSES``), images, category ids.

    Returns:
        The :class:`~paploss.engine.validation.DataReport` that :func:`setup` logs.

    Raises:
        FileNotFoundError, ValueError: one line per problem (see ``paploss.engine.validation``).
    """
    return validate_config_data(setup_cfg(args.config_file, args.opts))


def setup(args, data_report=None):
    """Create the config (paploss's and the project's keys, datasets) and set up logging; log the
    findings of :func:`check_config` (``data_report``)."""
    cfg = setup_cfg(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="paploss")
    logger = logging.getLogger("paploss")
    if data_report is not None:
        data_report.log(logger)
    return cfg


def main(args, data_report=None):
    cfg = setup(args, data_report)
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
    try:
        data_report = check_config(args)
    except (FileNotFoundError, ValueError) as e:
        print("\n".join(f"error: {line}" for line in str(e).splitlines()), file=sys.stderr)
        sys.exit(2)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args, data_report),
    )
