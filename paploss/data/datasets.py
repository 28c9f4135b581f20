"""Dataset registration with Detectron2's catalogs.

Two kinds of datasets are registered by name:

* the built-in synthetic set, ``synthetic_shapes_{train,search_train,search_val,val}``, generated
  on first use into ``$PAPLOSS_DATASETS/synthetic_shapes_v<version>_<size>px`` (default
  ``$PAPLOSS_DATASETS`` is ``./datasets``) and reused after;
* any COCO-format dataset, by :func:`register_coco_dataset` or from a config's
  ``MODEL.PAPLOSS.DATASETS`` list of ``[name, json_file, image_root]`` entries.

Loading validates the annotation file (its keys, image entries, categories, and that every
annotation's ``category_id`` is one of its ``categories``), the image root and the presence of every
image, so a bad path or a malformed file fails with one line naming the file and what to change
instead of deep inside Detectron2 or a data loader worker.
"""

import json
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Set

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from paploss.utils.validation import is_int

from .synthetic import CLASS_NAMES, GENERATOR_VERSION, default_split_specs, generate_split

__all__ = [
    "SYNTHETIC_PREFIX",
    "DatasetError",
    "datasets_root",
    "display_path",
    "ensure_dataset_files",
    "register_coco_dataset",
    "register_datasets_from_config",
    "register_synthetic_datasets",
    "check_dataset_names",
]

SYNTHETIC_PREFIX = "synthetic_shapes"
_REGISTERED_HERE: Set[str] = set()
logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A dataset is unknown, missing files, or has a malformed annotation file."""


def display_path(path: str) -> str:
    """``path`` relative to the working directory when it lies inside it, else absolute."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def datasets_root() -> str:
    """The folder where generated datasets are cached (``$PAPLOSS_DATASETS`` or ``datasets``)."""
    return os.path.abspath(os.environ.get("PAPLOSS_DATASETS", "datasets"))


def _validate_coco_file(json_file: str, image_root: str, dataset_name: str) -> None:
    """Check a COCO instances file and its images; raise :class:`DatasetError` naming the file."""
    where = f"dataset '{dataset_name}'"
    json_file, image_root = display_path(json_file), display_path(image_root)
    if not os.path.isfile(json_file):
        raise DatasetError(
            f"{where}: annotation file '{json_file}' does not exist; fix the json_file (2nd entry) "
            f"of '{dataset_name}' in MODEL.PAPLOSS.DATASETS"
        )
    try:
        with open(json_file) as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{where}: annotation file '{json_file}' is not valid JSON ({e})") from e
    missing = [k for k in ("images", "annotations", "categories") if k not in content]
    if not isinstance(content, dict) or missing:
        raise DatasetError(
            f"{where}: annotation file '{json_file}' is not a COCO instances "
            f"file (missing keys: {missing or 'top level is not an object'})"
        )
    if not os.path.isdir(image_root):
        raise DatasetError(
            f"{where}: image root '{image_root}' is not a folder; set the image_root (3rd entry) "
            f"of '{dataset_name}' in MODEL.PAPLOSS.DATASETS to the folder that the file_name "
            f"entries of '{json_file}' are relative to"
        )
    _check_images(content["images"], json_file, image_root, where)
    for ann in content["annotations"]:
        bbox = ann.get("bbox") if isinstance(ann, dict) else None
        if not (isinstance(bbox, list) and len(bbox) == 4) or "image_id" not in ann:
            raise DatasetError(
                f"{where}: annotation file '{json_file}' has a malformed "
                f"annotation (needs 'image_id' and a 4-number 'bbox'): {str(ann)[:200]}"
            )
    category_ids = _check_categories(content["categories"], json_file, where)
    for ann in content["annotations"]:
        if ann.get("category_id") not in category_ids:
            raise DatasetError(
                f"{where}: annotation {ann.get('id', '?')} (image {ann['image_id']}) in "
                f"'{json_file}' has category_id {ann.get('category_id')!r}, which is not an id in "
                f"its 'categories' {sorted(category_ids)}; add that category or fix the id"
            )


def _check_images(images: list, json_file: str, image_root: str, where: str) -> None:
    missing: List[str] = []
    for image in images:
        if not isinstance(image, dict) or not {"id", "file_name", "height", "width"} <= set(image):
            raise DatasetError(
                f"{where}: annotation file '{json_file}' has an image entry without 'id', "
                f"'file_name', 'height' or 'width': {str(image)[:200]}"
            )
        path = os.path.join(image_root, image["file_name"])
        if not os.path.isfile(path):
            missing.append(path)
    if missing:
        raise DatasetError(
            f"{where}: image file '{missing[0]}' listed in '{json_file}' does not exist "
            f"({len(missing)} of {len(images)} images missing); check the image_root (3rd entry) "
            "in MODEL.PAPLOSS.DATASETS and the file_name entries"
        )


def _check_categories(categories: list, json_file: str, where: str) -> Set[int]:
    """The category ids of a COCO file's ``categories`` (each entry needs an int id and a name)."""
    ids: Set[int] = set()
    for category in categories:
        if not isinstance(category, dict) or not is_int(category.get("id")):
            raise DatasetError(
                f"{where}: annotation file '{json_file}' has a category without an integer 'id': "
                f"{str(category)[:200]}"
            )
        if "name" not in category:
            raise DatasetError(f"{where}: category {category['id']} in '{json_file}' has no 'name'")
        ids.add(category["id"])
    if not ids:
        raise DatasetError(
            f"{where}: annotation file '{json_file}' lists no 'categories'; add one entry "
            '{"id": ..., "name": ...} per class'
        )
    return ids


def register_coco_dataset(
    name: str, json_file: str, image_root: str, metadata: Optional[dict] = None
) -> None:
    """Register a COCO-format detection dataset under ``name`` (idempotent for the same files).

    Args:
        name: the dataset name used in ``cfg.DATASETS.TRAIN`` / ``TEST``.
        json_file: COCO instances annotation file.
        image_root: folder that the ``file_name`` entries are relative to.
        metadata: extra metadata for :class:`MetadataCatalog`.
    """
    json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
    if name in DatasetCatalog.list():
        existing = MetadataCatalog.get(name)
        if getattr(existing, "json_file", None) == json_file:
            return
        raise DatasetError(
            f"dataset '{name}' is already registered with annotation file "
            f"'{getattr(existing, 'json_file', '?')}'; refusing to re-register it with '{json_file}'"
        )

    def load() -> List[dict]:
        ensure_dataset_files(name)
        _validate_coco_file(json_file, image_root, name)
        return load_coco_json(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    _REGISTERED_HERE.add(name)
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **(metadata or {})
    )


_SYNTHETIC_MAKERS: Dict[str, Callable[[], str]] = {}


def register_synthetic_datasets(image_size: int = 128) -> List[str]:
    """Register the synthetic splits (files are generated lazily on first use).

    Returns:
        The registered dataset names.
    """
    root = os.path.join(datasets_root(), f"{SYNTHETIC_PREFIX}_v{GENERATOR_VERSION}_{image_size}px")
    names = []
    for split, spec in default_split_specs(image_size).items():
        name = f"{SYNTHETIC_PREFIX}_{split}" + ("" if image_size == 128 else f"_{image_size}px")
        _SYNTHETIC_MAKERS[name] = lambda spec=spec, root=root: generate_split(spec, root)
        register_coco_dataset(
            name,
            os.path.join(root, f"{split}.json"),
            os.path.join(root, split),
            metadata={"thing_classes": list(CLASS_NAMES)},
        )
        names.append(name)
    return names


def ensure_dataset_files(name: str) -> None:
    """Generate a synthetic dataset's files if they are not there yet (no-op for other sets)."""
    maker = _SYNTHETIC_MAKERS.get(name)
    if maker is not None:
        maker()


def register_datasets_from_config(entries: Sequence[Sequence[str]]) -> None:
    """Register ``[name, json_file, image_root]`` entries (``cfg.MODEL.PAPLOSS.DATASETS``)."""
    for entry in entries:
        if len(entry) != 3 or not all(isinstance(x, str) for x in entry):
            raise DatasetError(
                "MODEL.PAPLOSS.DATASETS entries must be [name, json_file, image_root] strings, "
                f"got {list(entry)}"
            )
        register_coco_dataset(*entry)


def check_dataset_names(names: Sequence[str], key: str) -> None:
    """Raise :class:`DatasetError` if a name in ``names`` (config ``key``) is not registered."""
    registered = DatasetCatalog.list()
    for name in names:
        if name not in registered:
            raise DatasetError(
                f"{key} names unknown dataset '{name}'. Datasets registered by paploss: "
                f"{', '.join(sorted(_REGISTERED_HERE)) or 'none'} (plus Detectron2's built-in "
                "names). Register your own COCO-format set with MODEL.PAPLOSS.DATASETS."
            )
