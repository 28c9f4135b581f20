"""Registration with Detectron2's catalogs, and clear errors for bad datasets."""

import json

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from paploss.data import DatasetError, check_dataset_names, register_coco_dataset
from paploss.data.synthetic import CLASS_NAMES, SyntheticSplitSpec, generate_split
from paploss.engine import setup_cfg
from tests.data.coco_files import write_coco_set


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


def _register(name, json_file, image_root):
    register_coco_dataset(name, json_file, image_root)
    return name


def test_unknown_category_id_names_the_file(tmp_path):
    json_file, image_root = write_coco_set(str(tmp_path), "train", classes=("tree",))
    with open(json_file) as f:
        content = json.load(f)
    content["annotations"][2]["category_id"] = 7
    with open(json_file, "w") as f:
        json.dump(content, f)
    name = _register(f"my_set_category_{tmp_path.name}", json_file, image_root)
    with pytest.raises(DatasetError) as info:
        DatasetCatalog.get(name)
    assert str(info.value) == (
        f"dataset '{name}': annotation 3 (image {content['annotations'][2]['image_id']}) in "
        f"'{json_file}' has category_id 7, which is not an id in its 'categories' [1]; "
        "add that category or fix the id"
    )


def test_image_root_that_is_not_a_folder_is_named(tmp_path):
    json_file, _ = write_coco_set(str(tmp_path), "train")
    wrong_root = str(tmp_path / "no_such_folder")
    name = _register(f"my_set_root_{tmp_path.name}", json_file, wrong_root)
    with pytest.raises(DatasetError) as info:
        DatasetCatalog.get(name)
    assert str(info.value) == (
        f"dataset '{name}': image root '{wrong_root}' is not a folder; set the image_root "
        f"(3rd entry) of '{name}' in MODEL.PAPLOSS.DATASETS to the folder that the file_name "
        f"entries of '{json_file}' are relative to"
    )


def test_missing_images_are_counted(tmp_path):
    json_file, image_root = write_coco_set(str(tmp_path), "train", num_images=3)
    other_root = tmp_path / "other"
    other_root.mkdir()
    name = _register(f"my_set_other_root_{tmp_path.name}", json_file, str(other_root))
    with pytest.raises(DatasetError, match=r"\(3 of 3 images missing\); check the image_root"):
        DatasetCatalog.get(name)


@pytest.mark.parametrize(
    "change, problem",
    [(lambda c: c.update(categories=[]), "lists no 'categories'; add one entry"),
     (lambda c: c["categories"][0].pop("name"), "category 1 in '.*' has no 'name'"),
     (lambda c: c["images"][0].pop("height"), "image entry without 'id', 'file_name', 'height'")],
)  # fmt: skip
def test_incomplete_entries_are_named(tmp_path, change, problem):
    json_file, image_root = write_coco_set(str(tmp_path), "train")
    with open(json_file) as f:
        content = json.load(f)
    change(content)
    with open(json_file, "w") as f:
        json.dump(content, f)
    name = _register(f"my_set_incomplete_{tmp_path.name}", json_file, image_root)
    with pytest.raises(DatasetError, match=problem) as info:
        DatasetCatalog.get(name)
    assert json_file in str(info.value)
