"""Datasets: the built-in synthetic detection set and COCO-format registration.

Importing this package registers the synthetic splits ``synthetic_shapes_{train, search_train,
search_val, val}`` (files are generated on first use).
"""

from .datasets import (
    SYNTHETIC_PREFIX,
    DatasetError,
    check_dataset_names,
    datasets_root,
    display_path,
    ensure_dataset_files,
    register_coco_dataset,
    register_datasets_from_config,
    register_synthetic_datasets,
)
from .synthetic import CLASS_NAMES, SPLITS

register_synthetic_datasets()
