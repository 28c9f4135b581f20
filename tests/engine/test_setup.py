"""load_config's rules: dataset paths relative to the config, its own output folder, LR steps."""

import os

import pytest
from detectron2.data import MetadataCatalog

from paploss.engine import default_output_dir, load_config, setup_cfg, steps_from_fractions
from tests.data.coco_files import write_coco_set

BASE = os.path.abspath("configs/synthetic/retinanet_stock.yaml")


def _entries(name):
    return (
        f'[["{name}_train", "data/annotations/instances_train.json", "data/train"], '
        f'["{name}_val", "data/annotations/instances_val.json", "data/val"]]'
    )


def test_relative_dataset_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    write_coco_set(str(folder / "data"), "train", classes=("a", "b", "c", "d"))
    write_coco_set(str(folder / "data"), "val", classes=("a", "b", "c", "d"))
    name = f"relative_{tmp_path.name}"
    config = folder / "own.yaml"
    config.write_text(
        f'_BASE_: "{BASE}"\nMODEL:\n  PAPLOSS:\n    DATASETS: {_entries(name)}\n'
        f'DATASETS:\n  TRAIN: ("{name}_train",)\n  TEST: ("{name}_val",)\n'
    )
    monkeypatch.chdir(tmp_path)  # elsewhere than the config's folder
    cfg = setup_cfg("project/own.yaml")
    train_json = str(folder / "data" / "annotations" / "instances_train.json")
    assert cfg.MODEL.PAPLOSS.DATASETS[0] == [
        f"{name}_train",
        train_json,
        str(folder / "data/train"),
    ]
    assert MetadataCatalog.get(f"{name}_train").json_file == train_json
    assert MetadataCatalog.get(f"{name}_val").image_root == str(folder / "data" / "val")


def test_dataset_paths_of_a_base_resolve_against_the_base_folder(tmp_path):
    base = tmp_path / "bases" / "data_base.yaml"
    base.parent.mkdir()
    base.write_text(
        f'_BASE_: "{BASE}"\nMODEL:\n  PAPLOSS:\n    DATASETS: [["x", "d/a.json", "/abs/images"]]\n'
    )
    leaf = tmp_path / "runs" / "leaf.yaml"
    leaf.parent.mkdir()
    leaf.write_text('_BASE_: "../bases/data_base.yaml"\n')
    cfg = load_config(str(leaf))
    assert cfg.MODEL.PAPLOSS.DATASETS == [
        ["x", str(tmp_path / "bases" / "d" / "a.json"), "/abs/images"]
    ]
    # on the command line, relative paths stay relative to the working directory
    cfg = load_config(str(leaf), ["MODEL.PAPLOSS.DATASETS", "[['x', 'd/a.json', 'img']]"])
    assert cfg.MODEL.PAPLOSS.DATASETS == [["x", "d/a.json", "img"]]


def test_output_dir_is_the_configs_own(tmp_path):
    config = tmp_path / "own_data" / "trees.yaml"
    config.parent.mkdir()
    # the base sets output/synthetic/pap_retinanet_identity: a run of this config must not use it
    config.write_text(
        f'_BASE_: "{os.path.abspath("configs/synthetic/pap_retinanet_identity.yaml")}"\n'
    )
    assert load_config(str(config)).OUTPUT_DIR == os.path.join("output", "own_data", "trees")
    assert default_output_dir("configs/own_data/template.yaml") == "output/own_data/template"
    assert load_config(str(config), ["OUTPUT_DIR", "elsewhere"]).OUTPUT_DIR == "elsewhere"
    config.write_text(config.read_text() + 'OUTPUT_DIR: "mine"\n')
    assert load_config(str(config)).OUTPUT_DIR == "mine"
    # the shipped configs keep the folders they name
    shipped = "configs/synthetic/pap_retinanet_identity.yaml"
    assert load_config(shipped).OUTPUT_DIR == "output/synthetic/pap_retinanet_identity"


def test_lr_steps_follow_max_iter(tmp_path):
    config = tmp_path / "steps.yaml"
    config.write_text(
        f'_BASE_: "{BASE}"\nMODEL:\n  PAPLOSS:\n    LR_STEP_FRACTIONS: [0.75, 0.925]\n'
        "SOLVER:\n  MAX_ITER: 2000\n  STEPS: (10, 20)\n"
    )
    assert load_config(str(config)).SOLVER.STEPS == (1500, 1850)
    assert load_config(str(config), ["SOLVER.MAX_ITER", 400]).SOLVER.STEPS == (300, 370)
    assert load_config(str(config), ["SOLVER.STEPS", (5,)]).SOLVER.STEPS == (5,)
    assert load_config(BASE).SOLVER.STEPS == (300, 370)  # no fractions: STEPS as written
    assert steps_from_fractions([0.75, 0.925], 4) == (3,)  # steps at MAX_ITER are dropped
    with pytest.raises(ValueError) as info:
        load_config(str(config), ["MODEL.PAPLOSS.LR_STEP_FRACTIONS", [0.9, 0.5]])
    assert str(info.value) == (
        "MODEL.PAPLOSS.LR_STEP_FRACTIONS must be increasing fractions in (0, 1), got [0.9, 0.5]"
    )
