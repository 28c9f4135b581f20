"""The loss search on PAPDeformableDETR: its 41-dimensional space, search settings that import the
project, the project's keys and optimizer where paploss loads configs and trains proxies, the
screening of its head, and a tiny real search with trials in their own processes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from deformable_detr import META_ARCHITECTURE, load_config
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from paploss.engine import (
    ConfigDataError,
    Trainer,
    class_count_keys,
    heads_used,
    register_class_count_keys,
    setup_cfg,
)
from paploss.heads import architecture_heads, pap_heads, register_pap_heads
from paploss.losses import FUNCTION_NAMES, PAPFunctions, lambda_from_theta
from paploss.modeling import record_rankings
from paploss.search.journal import SearchJournal
from paploss.search.reports.export import train_command
from paploss.search.screening import RejectionProtocol, candidate_head_losses
from paploss.search.screening.batch import (
    build_screening_batches,
    load_images,
    screening_model_config,
)
from paploss.search.settings import RejectionSettings, SettingsError
from paploss.search.settings_loading import load_settings
from paploss.search.spaces import SearchSpace, heads_from_config

from .conftest import PROJECT

REPO_ROOT = Path(PROJECT).parents[1]
PAP_CONFIG = os.path.join(PROJECT, "configs", "deformable_detr_tiny_pap.yaml")
SEARCH_CONFIG = os.path.join(PROJECT, "configs", "search", "pap_detr_tiny.yaml")
RETINANET_CONFIG = str(REPO_ROOT / "configs" / "synthetic" / "pap_retinanet_identity.yaml")
SEARCH_TRAIN = "synthetic_shapes_search_train"
NUM_IMAGES, SEED = 2, 3


def _candidate():
    """Overrides far from the identity: RetinaNet's published functions and λ = 2.5."""
    functions = PAPFunctions.published("retinanet").to_dict()
    overrides = {f"MODEL.PAPLOSS.DETR.FUNCTIONS.{k}": v for k, v in functions.items()}
    overrides["MODEL.PAPLOSS.DETR.GRAD_SCALE"] = 2.5
    return overrides


def test_the_search_space_of_the_detr_config_is_its_shared_function_set():
    cfg = load_config(PAP_CONFIG)
    assert architecture_heads(META_ARCHITECTURE) == ("DETR",) and "DETR" in pap_heads()
    assert heads_from_config(cfg) == ("DETR",)
    space = SearchSpace.from_config(cfg)
    assert space.dim == 41 and space.heads == ("DETR",)
    assert (
        space.names[0] == f"DETR.{FUNCTION_NAMES[0]}.theta1x" and space.names[-1] == "DETR.lambda"
    )
    assert SearchSpace.from_dict(space.to_dict()) == space

    # A θ's overrides set the functions and λ every decoder layer trains with.
    theta = np.random.default_rng(0).uniform(0.05, 0.95, space.dim)
    overrides = space.to_overrides(theta)
    assert set(overrides) == {f"MODEL.PAPLOSS.DETR.FUNCTIONS.{n}" for n in FUNCTION_NAMES} | {
        "MODEL.PAPLOSS.DETR.GRAD_SCALE"
    }
    cfg.merge_from_list(space.to_opts_list(theta))
    criterion = build_model(cfg).criterion
    assert criterion.grad_scale == pytest.approx(lambda_from_theta(theta[-1]))
    assert criterion.pap_loss.functions is criterion.functions
    np.testing.assert_allclose(criterion.functions.to_theta().flatten(), theta[:-1], atol=1e-9)
    assert space.from_overrides(overrides) == pytest.approx(theta)


def test_head_registration_checks_its_arguments():
    register_pap_heads(META_ARCHITECTURE, ["DETR"])  # again, the same: a no-op
    with pytest.raises(ValueError, match="registered with heads"):
        register_pap_heads(META_ARCHITECTURE, ["DETR", "ENCODER"])
    with pytest.raises(ValueError, match="upper-case"):
        register_pap_heads("OtherDETR", ["detr"])
    with pytest.raises(ValueError, match="paploss's own"):
        register_pap_heads("PAPRetinaNet", ["RETINANET"])
    with pytest.raises(ValueError, match="model.imports"):
        heads_from_config({"MODEL": {"META_ARCHITECTURE": "UnknownDETR"}})


def _train_classes(cfg):
    from detectron2.data import MetadataCatalog

    return list(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_classes)


def test_the_start_up_data_check_compares_the_detr_class_count():
    """MODEL.DEFORMABLE_DETR.NUM_CLASSES is checked against the datasets like Detectron2's own
    class counts, in paploss's setup and in the project's train_net.py (one line naming the key,
    before anything trains)."""
    cfg = setup_cfg(PAP_CONFIG)  # 4 classes, as the synthetic set
    assert heads_used(cfg).class_keys == ("MODEL.DEFORMABLE_DETR.NUM_CLASSES",)
    assert heads_used(cfg).anchor_head is None
    with pytest.raises(ConfigDataError) as error:
        setup_cfg(PAP_CONFIG, ["MODEL.DEFORMABLE_DETR.NUM_CLASSES", 80])
    (problem,) = error.value.problems
    assert problem.startswith(
        "MODEL.DEFORMABLE_DETR.NUM_CLASSES is 80 but dataset 'synthetic_shapes_train' "
    )
    assert problem.endswith("has 4 classes " + str(_train_classes(cfg)) + "; set "
                            "MODEL.DEFORMABLE_DETR.NUM_CLASSES 4")  # fmt: skip
    result = subprocess.run(
        [sys.executable, os.path.join(PROJECT, "train_net.py"), "--config-file", PAP_CONFIG,
         "MODEL.DEFORMABLE_DETR.NUM_CLASSES", "3"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: MODEL.DEFORMABLE_DETR.NUM_CLASSES is 3 but dataset"
    ), result.stderr
    assert "set MODEL.DEFORMABLE_DETR.NUM_CLASSES 4" in errors[0]


def test_class_count_registration_checks_its_arguments():
    register_class_count_keys(META_ARCHITECTURE, ["MODEL.DEFORMABLE_DETR.NUM_CLASSES"])  # no-op
    assert class_count_keys(META_ARCHITECTURE) == ("MODEL.DEFORMABLE_DETR.NUM_CLASSES",)
    with pytest.raises(ValueError, match="already has the class-count keys"):
        register_class_count_keys(META_ARCHITECTURE, ["MODEL.DEFORMABLE_DETR.NUM_QUERIES"])
    with pytest.raises(ValueError, match="keys must be a list of config keys"):
        register_class_count_keys("OtherDETR", "MODEL.DEFORMABLE_DETR.NUM_CLASSES")
    assert class_count_keys("OtherDETR") is None


def test_the_project_keys_are_added_to_its_configs_only():
    detr = load_config(PAP_CONFIG)
    assert "DEFORMABLE_DETR" in detr.MODEL and "DETR" in detr.MODEL.PAPLOSS
    retinanet = load_config(RETINANET_CONFIG)
    assert "DEFORMABLE_DETR" not in retinanet.MODEL and "DETR" not in retinanet.MODEL.PAPLOSS
    # The meta-architecture may also come from the overrides.
    cfg = load_config(None, ["MODEL.META_ARCHITECTURE", META_ARCHITECTURE,
                             "MODEL.DEFORMABLE_DETR.NUM_QUERIES", 7])  # fmt: skip
    assert cfg.MODEL.DEFORMABLE_DETR.NUM_QUERIES == 7


def test_paploss_trainers_build_the_project_optimizer():
    cfg = setup_cfg(PAP_CONFIG, ["SOLVER.BASE_LR", 2e-4], validate=False)
    model = build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)  # what every proxy training builds
    assert isinstance(optimizer, torch.optim.AdamW)
    assert type(optimizer).__name__ == "AdamWWithFullModelClipping"
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    # the tiny config trains its backbone from scratch at the full LR; offsets at 0.1x
    assert lrs == pytest.approx({"backbone": 2e-4, "linear_proj": 2e-5, "other": 2e-4})
    retinanet = setup_cfg(RETINANET_CONFIG, validate=False)
    assert isinstance(Trainer.build_optimizer(retinanet, build_model(retinanet)), torch.optim.SGD)


def test_search_settings_name_the_projects_training_script(tmp_path):
    """model.train_script: relative to the settings file, absolute once loaded, stored in the
    journal settings (left out while empty), and a missing file is a one-line error."""
    settings = load_settings(SEARCH_CONFIG)
    script = os.path.join(PROJECT, "train_net.py")
    assert settings.model.train_script == script
    assert settings.journal_settings()["model"]["train_script"] == script
    assert train_command(settings.journal_settings(), str(tmp_path / "best.yaml")) == (
        f"python {os.path.relpath(script)} --config-file {tmp_path / 'best.yaml'}"
    )  # paths below the working directory (the repository root) are shown relative
    default = load_settings(SEARCH_CONFIG, ['model.train_script=""'])
    assert "train_script" not in default.journal_settings()["model"]
    assert train_command(default.journal_settings(), "best.yaml") == (
        "python tools/train_net.py --config-file best.yaml"
    )
    with pytest.raises(SettingsError, match=r"^model.train_script: '.*nowhere.py' is not a file$"):
        load_settings(SEARCH_CONFIG, ["model.train_script=nowhere.py"])


def test_search_settings_import_the_project_and_name_a_bad_module():
    settings = load_settings(SEARCH_CONFIG)
    assert settings.model.imports == ("deformable_detr",)
    assert settings.model.python_path == (PROJECT,)  # relative to the settings file
    stored = settings.journal_settings()["model"]
    assert stored["imports"] == ["deformable_detr"] and stored["python_path"] == [PROJECT]
    with pytest.raises(SettingsError) as info:
        load_settings(SEARCH_CONFIG, ["model.imports=[deformable_detrr]"])
    text = str(info.value)
    assert text.startswith("model.imports: no module named 'deformable_detrr'"), text
    assert "\n" not in text


def _training_forward(overrides):
    """What the model of the candidate's config ranks and its losses, in one training forward
    with the screening's seed and images (the order the screening draws them in)."""
    cfg = screening_model_config(setup_cfg(PAP_CONFIG, validate=False))
    cfg.merge_from_list([x for item in overrides.items() for x in item])
    torch.manual_seed(SEED)
    model = build_model(cfg)
    inputs = load_images(cfg, SEARCH_TRAIN, NUM_IMAGES, SEED)
    model.train()
    with record_rankings(model) as rankings, EventStorage():
        losses = model(inputs)
    return rankings, losses, inputs


def test_the_screen_ranks_and_scores_what_the_last_decoder_layer_trains_on():
    torch.set_num_threads(1)
    cfg = setup_cfg(PAP_CONFIG, validate=False)
    batch = build_screening_batches(cfg, dataset=SEARCH_TRAIN, num_images=NUM_IMAGES, seed=SEED)
    assert set(batch) == {"DETR"}
    screened = batch["DETR"].ranking
    rankings, losses, inputs = _training_forward(_candidate())
    trained = rankings["DETR"]

    # every (query, class) entry of the batch; each ground-truth box matched to one query
    assert screened.logits.shape == (NUM_IMAGES * 50, 4)
    assert screened.num_positives == sum(len(x["instances"]) for x in inputs) > 0
    assert torch.equal(trained.labels, screened.labels)
    for name in ("logits", "reference_boxes", "gt_boxes", "image_index"):
        torch.testing.assert_close(getattr(trained, name).detach(), getattr(screened, name))
    # the boxes are in the input frame of the screening's ground truth
    assert (screened.gt_boxes[:, 2:] <= 128).all() and screened.gt_boxes.max() > 1

    # the screen's loss of the candidate is the last layer's training PAP loss
    head_loss = candidate_head_losses(cfg, _candidate(), ["DETR"])["DETR"]
    assert head_loss.grad_scale == 2.5
    protocol = RejectionProtocol(batch["DETR"], RejectionSettings())
    logits = screened.logits.clone().requires_grad_(True)
    deltas = screened.pred_deltas.clone().requires_grad_(True)
    screen_loss = protocol.loss(logits, deltas, head_loss)
    train_loss = losses["loss_pap"]
    torch.testing.assert_close(screen_loss, train_loss.detach(), rtol=1e-6, atol=1e-7)
    screen_grad = torch.autograd.grad(screen_loss, logits)[0]
    train_grad = torch.autograd.grad(train_loss, trained.logits)[0]
    torch.testing.assert_close(screen_grad, train_grad, rtol=1e-5, atol=1e-9)

    # and a candidate can pass: the identity functions teach the random detector
    identity = SearchSpace(["DETR"])
    result = protocol.run(
        candidate_head_losses(cfg, identity.to_overrides(identity.identity_theta()), ["DETR"])[
            "DETR"
        ]
    )
    assert result.ap_after > result.ap_before + RejectionSettings().min_ap_gain, result


def test_a_tiny_search_of_the_detr_config_trains_its_candidates(tmp_path):
    """1 round, 2 candidates + the policy mean, 4 proxy iterations each, screened, trained as
    local processes that import the project themselves."""
    output = tmp_path / "search"
    overrides = [
        "search.rounds=1",
        "search.candidates=2",
        "proxy.iterations=4",
        "proxy.checkpoint_period=4",
        "screening.rejection.num_images=4",
        "launcher.kind=local",
        "launcher.parallel=2",
        "launcher.poll_interval_s=0.2",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    command = [sys.executable, "-m", "paploss.search.cli", "run", "--config", SEARCH_CONFIG]
    command += ["--output", str(output), "--no-report", *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "search space: 41 dimensions (DETR)" in log

    with SearchJournal.open(str(output / "journal.sqlite"), read_only=True) as journal:
        trials = journal.trials()
        assert journal.settings["space"]["heads"] == ["DETR"]
    assert [t.role for t in trials] == ["sample", "sample", "mean"]
    assert [t.status for t in trials] == ["done"] * 3, [(t.status, t.metrics) for t in trials]
    assert all(t.reward is not None and t.reward >= 0 for t in trials)
    for trial in trials[:2]:  # the samples were screened on the DETR head
        rejection = trial.metrics["screening"]["rejection"]["DETR"]
        assert rejection["gain"] >= 5.0 and trial.metrics["screening"]["fingerprint"]
    spec = (output / trials[0].folder / "spec.json").read_text()
    assert '"imports": [' in spec and "deformable_detr" in spec

    # The export names the project's train_net.py (model.train_script) as what trains it.
    exported = tmp_path / "best.yaml"
    command = [sys.executable, "-m", "paploss.search.cli", "export", "--output", str(output)]
    result = subprocess.run(
        command + ["--to", str(exported)], capture_output=True, text=True, timeout=300, env=env,
        cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    script = os.path.relpath(os.path.join(PROJECT, "train_net.py"), REPO_ROOT)
    hint = f"python {script} --config-file {exported}"
    assert f"train it: {hint}" in result.stdout.splitlines(), result.stdout
    assert f"# Train it: {hint}\n" in exported.read_text()
