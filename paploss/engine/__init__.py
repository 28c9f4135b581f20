"""Training and evaluation on top of Detectron2's ``DefaultTrainer``."""

from .setup import load_config, setup_cfg
from .trainer import Trainer, fast_coco_eval_available, train_and_evaluate

__all__ = ["Trainer", "fast_coco_eval_available", "load_config", "setup_cfg", "train_and_evaluate"]
