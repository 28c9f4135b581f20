"""Start-up validation: every dataset loaded, class counts compared, one line per problem."""

import glob
import os

import pytest

from paploss.data import display_path
from paploss.engine import ConfigDataError, heads_used, load_config, setup_cfg
from paploss.engine.validation import imagenet_pixel_stats, pixel_order_warning
from tests.data.coco_files import write_coco_set

FASTER_RCNN = os.path.abspath("configs/synthetic/faster_rcnn_stock.yaml")
RETINANET = os.path.abspath("configs/synthetic/pap_retinanet_identity.yaml")


def _config(tmp_path, base, names, extra=""):
    """A config next to the data: datasets ``names`` (train, val) with paths relative to it."""
    train, val = names
    path = tmp_path / "own.yaml"
    path.write_text(
        f'_BASE_: "{base}"\n'
        "MODEL:\n  PAPLOSS:\n    DATASETS: ["
        f'["{train}", "data/annotations/instances_train.json", "data/train"], '
        f'["{val}", "data/annotations/instances_val.json", "data/val"]]\n'
        f'DATASETS:\n  TRAIN: ("{train}",)\n  TEST: ("{val}",)\n{extra}'
    )
    return str(path)


@pytest.fixture
def two_class_data(tmp_path):
    root = str(tmp_path / "data")
    train = write_coco_set(root, "train", classes=("tree", "bush"), num_images=4, seed=1)
    val = write_coco_set(root, "val", classes=("tree", "bush"), num_images=2, seed=2)
    return train, val


def _names(tmp_path, what):
    return (f"{what}_train_{tmp_path.name}", f"{what}_val_{tmp_path.name}")


@pytest.mark.parametrize(
    "base, key",
    [(FASTER_RCNN, "MODEL.ROI_HEADS.NUM_CLASSES"), (RETINANET, "MODEL.RETINANET.NUM_CLASSES")],
)
def test_num_classes_mismatch_is_named_before_training(tmp_path, two_class_data, base, key):
    names = _names(tmp_path, "classes")
    config = _config(tmp_path, base, names)
    json_file = display_path(two_class_data[0][0])
    with pytest.raises(ConfigDataError) as info:
        setup_cfg(config)
    assert info.value.problems == [
        f"{key} is 4 but dataset '{names[0]}' ('{json_file}') has 2 classes ['tree', 'bush']; "
        f"set {key} 2"
    ]
    cfg = setup_cfg(config, [key, 2])
    assert cfg.DATASETS.TRAIN == (names[0],)


def test_the_other_heads_class_count_is_not_checked(tmp_path, two_class_data):
    # Faster R-CNN builds no RetinaNet head: its NUM_CLASSES may keep any value
    names = _names(tmp_path, "other_head")
    config = _config(tmp_path, FASTER_RCNN, names)
    cfg = setup_cfg(config, ["MODEL.ROI_HEADS.NUM_CLASSES", 2, "MODEL.RETINANET.NUM_CLASSES", 80])
    assert heads_used(cfg).class_keys == ("MODEL.ROI_HEADS.NUM_CLASSES",)
    assert heads_used(cfg).anchor_head == "RPN"
    assert heads_used(load_config(RETINANET)).anchor_head == "RETINANET"


def test_wrong_image_root_of_a_test_set_fails_at_start_up(tmp_path, two_class_data):
    names = _names(tmp_path, "root")
    config = _config(tmp_path, FASTER_RCNN, names)
    text = open(config).read().replace('"data/val"]', '"data/validation"]')
    open(config, "w").write(text)
    wrong = str(tmp_path / "data" / "validation")
    json_file = str(tmp_path / "data" / "annotations" / "instances_val.json")
    with pytest.raises(ConfigDataError) as info:
        setup_cfg(config)  # NUM_CLASSES is wrong as well: both are reported, one line each
    assert info.value.problems == [
        f"DATASETS.TEST: dataset '{names[1]}': image root '{wrong}' is not a folder; set the "
        f"image_root (3rd entry) of '{names[1]}' in MODEL.PAPLOSS.DATASETS to the folder that "
        f"the file_name entries of '{json_file}' are relative to",
        f"MODEL.ROI_HEADS.NUM_CLASSES is 4 but dataset '{names[0]}' "
        f"('{display_path(two_class_data[0][0])}') has 2 classes ['tree', 'bush']; "
        "set MODEL.ROI_HEADS.NUM_CLASSES 2",
    ]
    assert str(info.value) == "\n".join(info.value.problems)


def test_unknown_category_id_in_a_test_set_names_the_file(tmp_path, two_class_data):
    import json

    names = _names(tmp_path, "category")
    json_file = two_class_data[1][0]
    with open(json_file) as f:
        content = json.load(f)
    content["annotations"][0]["category_id"] = 3
    with open(json_file, "w") as f:
        json.dump(content, f)
    config = _config(tmp_path, FASTER_RCNN, names)
    with pytest.raises(ConfigDataError) as info:
        setup_cfg(config, ["MODEL.ROI_HEADS.NUM_CLASSES", 2])
    assert info.value.problems == [
        f"DATASETS.TEST: dataset '{names[1]}': annotation 1 (image 1) in '{json_file}' has "
        "category_id 3, which is not an id in its 'categories' [1, 2]; add that category or fix "
        "the id"
    ]


def test_test_set_with_other_categories_is_named(tmp_path):
    root = str(tmp_path / "data")
    train_json, _ = write_coco_set(root, "train", classes=("tree", "bush"))
    val_json, _ = write_coco_set(root, "val", classes=("tree",))
    names = _names(tmp_path, "categories")
    with pytest.raises(ConfigDataError) as info:
        setup_cfg(_config(tmp_path, FASTER_RCNN, names), ["MODEL.ROI_HEADS.NUM_CLASSES", 2])
    assert info.value.problems == [
        f"DATASETS.TEST: dataset '{names[1]}' ('{display_path(val_json)}') has classes "
        f"['tree'] but '{names[0]}' ('{display_path(train_json)}') has ['tree', 'bush']; every "
        "dataset in DATASETS.TRAIN and DATASETS.TEST must list the same categories"
    ]


def test_training_set_without_boxes_is_named(tmp_path, two_class_data):
    import json

    json_file = two_class_data[0][0]
    with open(json_file) as f:
        content = json.load(f)
    content["annotations"] = []
    with open(json_file, "w") as f:
        json.dump(content, f)
    names = _names(tmp_path, "no_boxes")
    with pytest.raises(ConfigDataError) as info:
        setup_cfg(_config(tmp_path, FASTER_RCNN, names), ["MODEL.ROI_HEADS.NUM_CLASSES", 2])
    assert info.value.problems == [
        f"DATASETS.TRAIN: dataset '{names[0]}' ('{display_path(json_file)}') has no boxes in "
        "its 4 images; there is nothing to train on"
    ]


def test_shrinking_resize_and_pixel_order_are_warned(tmp_path, caplog):
    root = str(tmp_path / "data")
    write_coco_set(root, "train", num_images=2, image_size=(400, 600))
    write_coco_set(root, "val", num_images=1, image_size=(400, 600))
    names = _names(tmp_path, "warnings")
    config = _config(tmp_path, FASTER_RCNN, names)
    with caplog.at_level("WARNING", logger="paploss"):
        setup_cfg(config, ["MODEL.ROI_HEADS.NUM_CLASSES", 1,
                           "MODEL.PIXEL_MEAN", [123.675, 116.28, 103.53]])  # fmt: skip
    assert [r.getMessage() for r in caplog.records] == [
        f"INPUT.MIN_SIZE_TRAIN (128,) / MAX_SIZE_TRAIN 128 shrink the images of '{names[0]}' "
        "(median 600x400 px) by x0.21, and the objects with them; check the input size and "
        "anchors with tools/analyze_anchors.py",
        "MODEL.PIXEL_MEAN [123.675, 116.28, 103.53] is ImageNet's mean in RGB order but "
        "INPUT.FORMAT is 'BGR'; set MODEL.PIXEL_MEAN [103.53, 116.28, 123.675] and "
        "MODEL.PIXEL_STD [57.375, 57.12, 58.395] (or INPUT.FORMAT 'RGB')",
    ]


@pytest.mark.parametrize(
    "path", sorted(p for p in glob.glob("configs/**/*.yaml", recursive=True) if "search" not in p)
)
def test_shipped_pixel_statistics_follow_the_input_format(path):
    cfg = load_config(path)
    assert pixel_order_warning(cfg) is None
    if path.startswith("configs/synthetic") or path.startswith("configs/own_data"):
        mean, std = imagenet_pixel_stats(cfg.INPUT.FORMAT)
        assert cfg.INPUT.FORMAT == "BGR"
        assert list(cfg.MODEL.PIXEL_MEAN) == list(mean)
        assert list(cfg.MODEL.PIXEL_STD) == list(std)
