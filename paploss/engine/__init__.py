"""Training and evaluation on top of Detectron2's ``DefaultTrainer``, config set-up and the
start-up checks of a config against its datasets."""

from .setup import default_output_dir, load_config, setup_cfg, steps_from_fractions
from .trainer import Trainer, fast_coco_eval_available, train_and_evaluate
from .validation import ConfigDataError, heads_used, validate_config_data

__all__ = [
    "ConfigDataError",
    "Trainer",
    "default_output_dir",
    "fast_coco_eval_available",
    "heads_used",
    "load_config",
    "setup_cfg",
    "steps_from_fractions",
    "train_and_evaluate",
    "validate_config_data",
]
