"""Registration with Detectron2's catalogs, and clear errors for bad datasets."""

import json

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from paploss.data import DatasetError, check_dataset_names, register_coco_dataset
from paploss.data.synthetic import CLASS_NAMES, SyntheticSplitSpec, generate_split
from paploss.engine import setup_cfg


def test_synthetic_splits_are_registered():
    for split in ("train", "search_train", "search_val", "val"):
        name = f"synthetic_shapes_{split}"
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == list(CLASS_NAMES)
        assert meta.evaluator_type == "coco"


def test_registered_synthetic_split_loads():
    dicts = DatasetCatalog.get("synthetic_shapes_search_val")
    assert len(dicts) == 100
    assert all(d["annotations"] for d in dicts[:10])
    assert dicts[0]["width"] == dicts[0]["height"] == 128
    # Detectron2 maps COCO category ids to contiguous ids 0..3
    assert {a["category_id"] for d in dicts for a in d["annotations"]} <= {0, 1, 2, 3}


def test_unknown_dataset_name_is_named():
    with pytest.raises(DatasetError, match="DATASETS.TRAIN names unknown dataset 'no_such_set'"):
        check_dataset_names(["no_such_set"], "DATASETS.TRAIN")
    with pytest.raises(DatasetError, match="no_such_set"):
        setup_cfg("configs/synthetic/retinanet_stock.yaml", ["DATASETS.TEST", "('no_such_set',)"])


@pytest.fixture
def coco_copy(tmp_path):
    spec = SyntheticSplitSpec(split="val", num_images=3, seed=3, first_image_id=1)
    json_path = generate_split(spec, str(tmp_path))
    return json_path, str(tmp_path / "val")


def test_user_dataset_from_config(coco_copy, tmp_path):
    json_path, image_root = coco_copy
    cfg = setup_cfg(
        "configs/synthetic/retinanet_stock.yaml",
        ["MODEL.PAPLOSS.DATASETS", f"[['my_set_ok', '{json_path}', '{image_root}']]",
         "DATASETS.TEST", "('my_set_ok',)"],
    )  # fmt: skip
    assert cfg.DATASETS.TEST == ("my_set_ok",)
    assert len(DatasetCatalog.get("my_set_ok")) == 3


def test_missing_image_file_is_named(coco_copy, tmp_path):
    json_path, image_root = coco_copy
    with open(json_path) as f:
        content = json.load(f)
    content["images"][1]["file_name"] = "missing.png"
    bad_json = tmp_path / "missing_image.json"
    bad_json.write_text(json.dumps(content))
    register_coco_dataset("my_set_missing_image", str(bad_json), image_root)
    with pytest.raises(DatasetError, match=r"image file '.*missing\.png'.*does not exist"):
        DatasetCatalog.get("my_set_missing_image")


@pytest.mark.parametrize(
    "text, problem",
    [("{not json", "is not valid JSON"), ('{"images": []}', "missing keys"),
     ('{"images": [], "categories": [], "annotations": [{"bbox": [1, 2]}]}', "malformed annotation")],
)  # fmt: skip
def test_malformed_annotation_file_is_named(tmp_path, text, problem):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(text)
    name = f"my_set_bad_{abs(hash(text))}"
    register_coco_dataset(name, str(bad_json), str(tmp_path))
    with pytest.raises(DatasetError, match=problem) as info:
        DatasetCatalog.get(name)
    assert str(bad_json) in str(info.value)
