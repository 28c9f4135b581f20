#!/usr/bin/env python
"""Train and evaluate a detector with paploss's heads, in Detectron2's style.

``--resume`` continues from the last checkpoint exactly: weights, optimizer, schedule, the random
states and the position in the stream of training images (see ``paploss.engine.sampler``), so a
resumed run ends with the weights of one that was never interrupted.

Before any training process starts, the config is checked against its data: every dataset of
``DATASETS.TRAIN`` and ``DATASETS.TEST`` is loaded and validated, and the class counts of the
model's heads are compared with the datasets' categories. Problems are printed one per line
(``error: ...``, exit status 2).

Examples::

    python tools/train_net.py --config-file configs/synthetic/retinanet_stock.yaml
    python tools/train_net.py --config-file configs/synthetic/retinanet_stock.yaml --resume
    python tools/train_net.py --config-file configs/synthetic/retinanet_stock.yaml --eval-only \\
        MODEL.WEIGHTS output/synthetic/retinanet_stock/model_final.pth
    python tools/train_net.py --num-threads 1 --config-file configs/own_data/template.yaml
    python tools/train_net.py --num-gpus 8 --config-file configs/coco/pap_retinanet_R50_FPN_512.yaml
"""

import logging
import os
import sys

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from paploss.engine import Trainer, setup_cfg, validate_config_data  # noqa: E402

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def argument_parser():
    """Detectron2's training arguments plus ``--num-threads``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--num-threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads of each training process (torch.set_num_threads; also exported "
        "as OMP_NUM_THREADS/MKL_NUM_THREADS to processes started from here). Data loader "
        "workers (DATALOADER.NUM_WORKERS) run one thread each. Default: torch's choice",
    )
    return parser


def set_num_threads(num_threads):
    """Use ``num_threads`` torch CPU threads here and in processes started from here (None: keep)."""
    if num_threads is None:
        return
    torch.set_num_threads(num_threads)
    for name in _THREAD_VARIABLES:
        os.environ[name] = str(num_threads)


def check_config(args):
    """Load the config and validate it against every dataset it names (in the launching process,
    so that a problem stops the run before any training process starts).

    Returns:
        The :class:`~paploss.engine.validation.DataReport` that :func:`setup` logs.

    Raises:
        FileNotFoundError, ValueError: one line per problem (see ``paploss.engine.validation``).
    """
    cfg = setup_cfg(args.config_file, args.opts, validate=False)
    return validate_config_data(cfg)


def setup(args, data_report=None):
    """Create the config (paploss keys added, datasets registered) and set up logging; log the
    findings of :func:`check_config` (``data_report``)."""
    cfg = setup_cfg(args.config_file, args.opts, validate=False)  # validated in check_config
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="paploss")
    logger = logging.getLogger("paploss")
    if data_report is not None:
        data_report.log(logger)
    logger.info("torch CPU threads: %d", torch.get_num_threads())
    return cfg


def main(args, data_report=None):
    set_num_threads(args.num_threads)
    cfg = setup(args, data_report)
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
    parser = argument_parser()
    args = parser.parse_args()
    if args.num_threads is not None and args.num_threads < 1:
        parser.error(f"--num-threads must be at least 1, got {args.num_threads}")
    set_num_threads(args.num_threads)
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
