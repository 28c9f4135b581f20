"""docs/own_data.md, "Training on your own data", step by step, on a tiny COCO set written here.

The repository's configs are copied into a scratch folder that stands for the checkout; the data go
to ``datasets/my_data`` there, the template is copied and edited as the page says, the anchor tool
runs, its suggestion is used, and ``tools/train_net.py`` trains a few iterations and evaluates.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import yaml

from tests.data.coco_files import write_coco_set

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _run(tool, args, cwd, expect=0):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", tool), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == expect, (result.stdout + result.stderr)[-3000:]
    return result.stdout, result.stderr


def test_readme_walkthrough_on_a_tiny_coco_set(tmp_path):
    checkout = tmp_path / "checkout"
    shutil.copytree(os.path.join(REPO, "configs"), checkout / "configs")
    # 1. the data where the template looks: datasets/my_data/{annotations,train,val}
    data = str(checkout / "datasets" / "my_data")
    classes = ("tree", "bush")
    write_coco_set(data, "train", classes=classes, num_images=6, seed=1)
    write_coco_set(data, "val", classes=classes, num_images=3, seed=2)

    # 2. copy the template; before it is edited, the start-up check names what to change
    config = checkout / "configs" / "own_data" / "trees.yaml"
    shutil.copy(checkout / "configs" / "own_data" / "template.yaml", config)
    _, err = _run("train_net.py", ["--config-file", "configs/own_data/trees.yaml"], checkout, 2)
    train_json = os.path.join("datasets", "my_data", "annotations", "instances_train.json")
    assert [line for line in err.splitlines() if "error" in line] == [
        f"error: MODEL.ROI_HEADS.NUM_CLASSES is 1 but dataset 'my_train' ('{train_json}') has 2 "
        "classes ['tree', 'bush']; set MODEL.ROI_HEADS.NUM_CLASSES 2"
    ]
    assert "Starting training" not in err
    text = config.read_text()
    text = text.replace("NUM_CLASSES: 1", "NUM_CLASSES: 2")  # (2) classes, both heads
    text = text.replace("(512,)", "(96,)").replace(": 512", ": 96").replace(": 853", ": 96")
    config.write_text(text)  # (3) the images' own size

    # 3. anchors and input size
    out, _ = _run("analyze_anchors.py", ["--config-file", "configs/own_data/trees.yaml"], checkout)
    assert "dataset: my_train: 6 of 6 images" in out
    assert "| suggested |" in out
    suggestion = shlex.split(out.split("suggested (")[1].splitlines()[1])
    assert suggestion[0] == "INPUT.MIN_SIZE_TRAIN" and "MODEL.ANCHOR_GENERATOR.SIZES" in suggestion

    # 4. a short run with the suggestion pasted on the command line
    short = [
        "SOLVER.MAX_ITER",
        "4",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
        "32",
    ]
    out, err = _run(
        "train_net.py",
        ["--num-threads", "2", "--config-file", "configs/own_data/trees.yaml", *short, *suggestion],
        checkout,
    )
    log = out + err
    assert "dataset 'my_train' (DATASETS.TRAIN): 6 images," in log
    assert "2 classes, from 'datasets/my_data/annotations/instances_train.json'" in log
    assert "torch CPU threads: 2" in log
    ap = re.findall(r"copypaste: ([\d.nan]+),([\d.nan]+),([\d.nan]+)", log)[-1]
    assert all(v == "nan" or 0.0 <= float(v) <= 100.0 for v in ap)

    output = checkout / "output" / "own_data" / "trees"  # the config's own folder
    assert (output / "model_final.pth").is_file()
    assert (output / "inference" / "my_val" / "coco_instances_results.json").is_file()
    with open(output / "metrics.json") as f:
        iterations = [json.loads(line)["iteration"] for line in f if '"total_loss"' in line]
    assert iterations[-1] == 3
    saved = yaml.safe_load((output / "config.yaml").read_text())
    assert saved["SOLVER"]["STEPS"] == [3]  # LR_STEP_FRACTIONS of MAX_ITER 4: 3 (and 4, dropped)
    assert saved["MODEL"]["PAPLOSS"]["DATASETS"][0][1] == os.path.join(
        data, "annotations", "instances_train.json"
    )
    assert not (checkout / "output" / "synthetic").exists()
