"""``Trainer``: Detectron2's ``DefaultTrainer`` with COCO evaluation and complete checkpoints."""

import logging
import os
from typing import Dict

from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator

from paploss.data import ensure_dataset_files
from paploss.data.mapper import build_train_mapper

__all__ = ["Trainer", "fast_coco_eval_available", "train_and_evaluate"]

logger = logging.getLogger(__name__)


def fast_coco_eval_available() -> bool:
    """Whether Detectron2's compiled COCOeval (``use_fast_impl=True``) is built."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return hasattr(_C, "COCOevalAccumulate")


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` that evaluates with COCO AP and checkpoints the full training state.

    Checkpoints always hold the model, the optimizer (incl. momentum buffers), the LR scheduler
    and the iteration, so ``--resume`` continues exactly. Older Detectron2 releases leave the
    optimizer out of ``DefaultTrainer``'s state; this is detected at run time and added.
    """

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        ensure_dataset_files(dataset_name)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(
            dataset_name,
            tasks=("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",),  # box, mask AP
            distributed=True,
            output_dir=output_folder,
            use_fast_impl=fast_coco_eval_available(),
        )

    @classmethod
    def build_train_loader(cls, cfg):
        for name in cfg.DATASETS.TRAIN:
            ensure_dataset_files(name)
        return build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))

    def state_dict(self) -> dict:
        state = super().state_dict()
        if "_trainer" not in state:  # the inner trainer holds the optimizer state
            state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict and "_trainer" not in super().state_dict():
            self._trainer.load_state_dict(state_dict["_trainer"])


def train_and_evaluate(cfg, resume: bool = False) -> Dict[str, Dict[str, float]]:
    """Train ``cfg`` (single process) and evaluate on ``cfg.DATASETS.TEST``.

    Returns:
        Detectron2's results dict, e.g. ``{"bbox": {"AP": ..., "AP50": ..., "AP75": ...}}``
        (one level deeper, keyed by dataset, when several test sets are given).
    """
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    results = trainer.train()  # the evaluation hook runs at the last iteration
    if not results:  # resumed after the last iteration: nothing was trained or evaluated
        results = Trainer.test(cfg, trainer.model)
    return dict(results)
