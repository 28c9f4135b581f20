"""Training and evaluation on top of Detectron2's ``DefaultTrainer`` (exact resume, early stop of
invalid trainings), config set-up, the start-up checks of a config against its datasets, and the
config keys, optimizers and class-count keys that projects register (:mod:`paploss.engine.extensions`).
"""

from .extensions import (
    class_count_keys,
    config_extensions,
    optimizer_builder,
    register_class_count_keys,
    register_config_extension,
    register_optimizer,
)
from .hooks import (
    ConstantLossError,
    InvalidTrainingError,
    InvalidTrainingHook,
    NonFiniteTrainingError,
    RandomStateHook,
)
from .sampler import ResumableTrainingSampler, get_random_state, set_random_state
from .setup import default_output_dir, load_config, setup_cfg, steps_from_fractions
from .trainer import Trainer, fast_coco_eval_available, train_and_evaluate
from .validation import ConfigDataError, heads_used, validate_config_data

__all__ = [
    "ConfigDataError",
    "ConstantLossError",
    "InvalidTrainingError",
    "InvalidTrainingHook",
    "NonFiniteTrainingError",
    "RandomStateHook",
    "ResumableTrainingSampler",
    "Trainer",
    "class_count_keys",
    "config_extensions",
    "default_output_dir",
    "fast_coco_eval_available",
    "get_random_state",
    "heads_used",
    "load_config",
    "optimizer_builder",
    "register_class_count_keys",
    "register_config_extension",
    "register_optimizer",
    "set_random_state",
    "setup_cfg",
    "steps_from_fractions",
    "train_and_evaluate",
    "validate_config_data",
]
