"""``paploss-search`` end to end: run, status, export (trains with train_net), plot, bad input."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from search_testing import (
    MODEL_CONFIG,
    REPO_ROOT,
    cli_command,
    tiny_search_overrides,
    write_settings,
)

from paploss.search.cli import main
from paploss.search.controller import model_config_changed, model_config_digest
from paploss.search.journal import SearchJournal
from paploss.search.launchers import launcher_options
from paploss.search.settings import SettingsError
from paploss.search.settings_loading import load_settings
from paploss.search.spaces import SearchSpace
from paploss.search.trials.proxy_config import check_reward_task

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-round search (2 samples + the policy mean per round), run by the CLI."""
    folder = tmp_path_factory.mktemp("cli")
    config = write_settings(folder, tiny_search_overrides(folder, rounds=2, candidates=2))
    output = folder / "search"
    result = subprocess.run(
        cli_command("run", "--config", str(config), "--output", str(output)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Progress per round and a closing note saying where things are.
    assert "round 2/2: trials done 3/3" in result.stderr and "best so far" in result.stderr
    for line in ("exported config:", "train it:", "plots:"):
        assert line in result.stdout
    assert (output / "best.yaml").is_file()
    assert (output / "plots" / "rewards.png").is_file()
    return output


def _run(capsys: pytest.CaptureFixture, *args: str):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_status_lists_rounds_and_trials(search: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _run(capsys, "status", "--output", str(search), "--trials")
    assert code == 0, err
    assert "rounds:  2 closed of 2 planned" in out and "41 dimensions (RETINANET)" in out
    lines = out.splitlines()
    rounds_header = next(
        i for i, line in enumerate(lines) if line.split()[:2] == ["round", "status"]
    )
    assert lines[rounds_header + 2].split()[:2] == ["0", "closed"]
    assert lines[rounds_header + 3].split()[:2] == ["1", "closed"]
    trial_rows = [
        line for line in lines if line.split()[2:4] in (["sample", "done"], ["mean", "done"])
    ]
    assert len(trial_rows) == 6


def test_export_trains_with_train_net(
    search: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From "/" every path lies below the working directory: _BASE_ is written relative to the
    # exported file, and must still resolve from elsewhere.
    monkeypatch.chdir("/")
    exported = tmp_path / "exported" / "best.yaml"
    code, out, err = _run(capsys, "export", "--output", str(search), "--to", str(exported))
    assert code == 0, err
    assert "train it: python tools/train_net.py --config-file" in out
    content = yaml.safe_load(exported.read_text())
    assert not os.path.isabs(content["_BASE_"])
    assert os.path.normpath(exported.parent / content["_BASE_"]) == MODEL_CONFIG
    functions = content["MODEL"]["PAPLOSS"]["RETINANET"]["FUNCTIONS"]
    assert set(functions) == {"H1", "H2", "I1", "I2", "I3"}
    knots = [value for pair in functions["H2"] for value in pair]
    assert all(len(repr(value).split(".")[-1]) <= 4 for value in knots)  # rounded for reading

    with SearchJournal.open(str(search / "journal.sqlite"), read_only=True) as journal:
        best = journal.best_trial()
    flat = {f"MODEL.PAPLOSS.RETINANET.FUNCTIONS.{k}": v for k, v in functions.items()}
    flat["MODEL.PAPLOSS.RETINANET.GRAD_SCALE"] = content["MODEL"]["PAPLOSS"]["RETINANET"][
        "GRAD_SCALE"
    ]
    theta = SearchSpace(["RETINANET"]).from_overrides(flat)
    assert max(abs(a - b) for a, b in zip(theta, best.theta)) < 1e-3

    monkeypatch.chdir(REPO_ROOT)
    train_dir = tmp_path / "train"
    result = subprocess.run(
        [
            sys.executable,
            "tools/train_net.py",
            "--config-file",
            str(exported),
            "SOLVER.MAX_ITER", "3",
            "SOLVER.IMS_PER_BATCH", "2",
            "DATASETS.TEST", f"('{_tiny_val_entry(search)[0]}',)",
            "MODEL.PAPLOSS.DATASETS", repr([_tiny_val_entry(search)]),
            "OUTPUT_DIR", str(train_dir),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting training from iteration 0" in result.stderr + result.stdout
    assert (train_dir / "model_final.pth").is_file()
    dumped = yaml.safe_load((train_dir / "config.yaml").read_text())
    assert dumped["MODEL"]["META_ARCHITECTURE"] == "PAPRetinaNet"
    assert dumped["MODEL"]["PAPLOSS"]["RETINANET"]["FUNCTIONS"]["H2"] == functions["H2"]

    # The policy mean can be exported too; the default file name goes next to the journal.
    code, out, err = _run(capsys, "export", "--output", str(search), "--which", "mean")
    assert code == 0, err
    assert "policy mean after round 1" in out and (search / "mean.yaml").is_file()


def _tiny_val_entry(search: Path) -> list:
    settings = yaml.safe_load((search / "settings.yaml").read_text())
    return settings["proxy"]["opts"]["MODEL.PAPLOSS.DATASETS"][0]


def test_plot_writes_pngs(search: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _run(capsys, "plot", "--output", str(search), "--to", str(tmp_path))
    assert code == 0, err
    for name in ("rewards.png", "functions.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
        assert name in out


def test_bad_input_gives_one_clear_line(
    search: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = search.parent / "tiny.yaml"
    journal = search / "journal.sqlite"
    before = journal.read_bytes()

    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--launcher", "cloud"])
    assert exit_info.value.code == 2 and "invalid choice: 'cloud'" in capsys.readouterr().err

    cases = [
        (["run", "--config", str(tmp_path / "missing.yaml")], "missing.yaml' does not exist"),
        (["run", "--config", str(config), "search.roundz=3"], "did you mean search.rounds?"),
        (["run", "--config", str(config), "--output", str(search)], "already holds a search"),
        (
            ["run", "--config", str(config), "--output", str(search), "--resume",
             "search.candidates=3"],
            "other search settings; differing keys: search.candidates",
        ),
        (["status", "--output", str(tmp_path / "nowhere")], "no such search folder"),
        (["export", "--output", str(tmp_path)], "not a search folder"),
    ]  # fmt: skip
    for args, message in cases:
        code, out, err = _run(capsys, *args)
        assert code == 1 and message in err, (args, err)
        assert err.startswith("paploss-search: error:") and "Traceback" not in err
    assert journal.read_bytes() == before

    # A damaged journal is reported and left as it is.
    damaged = tmp_path / "damaged"
    shutil.copytree(search, damaged)
    (damaged / "journal.sqlite").write_bytes(b"\0garbage" * 64)
    for args in (
        ["status", "--output", str(damaged)],
        ["run", "--resume", "--output", str(damaged)],
    ):
        code, out, err = _run(capsys, *args)
        assert code == 1 and "not an SQLite database" in err and "Traceback" not in err
    assert (damaged / "journal.sqlite").read_bytes() == b"\0garbage" * 64


def test_misuse_gets_one_line_naming_the_cause_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "search.yaml"
    config.write_text(f"model: {{config: {MODEL_CONFIG}}}\nsearch:\n  rounds: 3\n proxy: [1\n")
    fine = tmp_path / "fine.yaml"
    fine.write_text(f"model: {{config: {MODEL_CONFIG}}}\nsearch: {{rounds: 1, candidates: 1}}\n")
    nowhere = tmp_path / "output" / "mistyped"
    cases = [
        # a YAML syntax error: the file, the line and the problem
        (["run", "--config", str(config)], f"{config}, line 4, column 2: invalid YAML: expected"),
        # a bad value is blamed on its own key, not on one derived from it
        (["run", "--config", str(fine), "search.rounds=-1"], "search.rounds must be an integer"),
        (["run", "--config", str(fine), "policy.sigma.num_rounds=0"], "policy.sigma.num_rounds"),
        # --resume of a folder without a journal never starts the default search there
        (["run", "--resume", "--output", str(nowhere)], "no search to resume (no such folder)"),
        (
            ["run", "--config", str(fine), "--resume", "--output", str(nowhere)],
            "no search to resume",
        ),
    ]
    for args, message in cases:
        code, out, err = _run(capsys, *args)
        assert code == 1 and message in err, (args, err)
        assert len(err.splitlines()) == 1 and err.startswith("paploss-search: error:"), err
        assert "policy.sigma: SigmaSchedule" not in err
    assert not nowhere.exists()

    # The Slurm launcher where Slurm is missing fails at once, before anything is written.
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    output = tmp_path / "output" / "slurm"
    start = time.monotonic()
    code, out, err = _run(capsys, "run", "--config", str(fine), "--output", str(output),
                          "--launcher", "slurm")  # fmt: skip
    assert code == 1 and "sbatch, srun, squeue, scontrol not found" in err, err
    assert len(err.splitlines()) == 1 and time.monotonic() - start < 10
    assert not output.exists()


def test_a_missing_result_of_the_best_trial_is_reported(
    search: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    damaged = tmp_path / "search"
    shutil.copytree(search, damaged)
    with SearchJournal.open(str(damaged / "journal.sqlite"), read_only=True) as journal:
        best = journal.best_trial()
    (damaged / best.folder / "result.json").unlink()
    missing = f"result file {best.folder}/result.json is missing"

    code, out, err = _run(capsys, "status", "--output", str(damaged))
    assert code == 0 and f"warning: the best trial's {missing}" in out, out
    exported = tmp_path / "best.yaml"
    code, out, err = _run(capsys, "export", "--output", str(damaged), "--to", str(exported))
    assert code == 0 and f"warning: the exported trial's {missing}" in err, err
    assert f"# Warning: the exported trial's {missing}" in exported.read_text()
    # Nothing to say about the intact search.
    code, out, err = _run(capsys, "export", "--output", str(search), "--to", str(exported))
    assert code == 0 and "warning" not in err.lower() and "Warning" not in exported.read_text()


def test_console_script_and_help() -> None:
    script = Path(sys.executable).parent / "paploss-search"
    command = [str(script)] if script.exists() else cli_command()
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for name in ("run", "status", "export", "plot"):
        assert name in result.stdout


def test_default_search_settings() -> None:
    settings = load_settings(str(REPO_ROOT / "configs" / "search" / "default.yaml"))
    assert settings.model.config == str(
        REPO_ROOT / "configs" / "synthetic" / "pap_retinanet_published_base_recipe.yaml"
    )
    assert (settings.search.method, settings.search.init) == ("cmaes", "published")
    assert settings.launcher.kind == "local" and settings.launcher.parallel == 2
    assert settings.proxy.train_dataset == "synthetic_shapes_search_train"
    assert settings.proxy.val_dataset == "synthetic_shapes_search_val"
    trials = settings.search.rounds * (settings.search.candidates + settings.search.score_mean)
    trials += settings.search.recheck.top * settings.search.recheck.seeds
    images = trials * settings.proxy.iterations * settings.proxy.ims_per_batch
    # The 20-minute budget on 2 CPU cores: a proxy training of 750 x 8 images took 212-222 s on
    # one core of the slower of two 2-core machines measured (93-105 s on the other;
    # docs/search.md), about 0.036 s per training image.
    assert images * 0.036 / settings.launcher.parallel <= 20 * 60
    # The bigger search differs only in its size.
    bigger = load_settings(str(REPO_ROOT / "configs" / "search" / "cmaes_retinanet.yaml"))
    assert bigger.proxy == settings.proxy and bigger.model == settings.model
    assert (bigger.search.rounds, bigger.search.candidates) == (4, 7)


def test_mask_rcnn_search_settings_and_space() -> None:
    """configs/search/pap_mask_rcnn.yaml: a PAP Mask R-CNN rewarded by mask AP, whose search
    space is its two PAP heads (no training)."""
    from paploss.engine import load_config

    settings = load_settings(str(REPO_ROOT / "configs" / "search" / "pap_mask_rcnn.yaml"))
    assert settings.model.config == str(
        REPO_ROOT / "configs" / "synthetic" / "pap_mask_rcnn_mask_iou.yaml"
    )
    assert settings.proxy.reward_task == "segm"
    assert settings.journal_settings()["proxy"]["reward_task"] == "segm"
    assert settings.screening.rejection.enabled and settings.launcher.kind == "local"
    cfg = load_config(settings.model.config)
    check_reward_task(settings.proxy, cfg, settings.model.config)  # it has a mask branch
    space = SearchSpace.from_config(cfg, fixed=settings.model.fixed or None)
    assert space.heads == ("RPN", "ROI_HEADS") and space.dim == 82
    assert cfg.MODEL.PAPLOSS.QUALITY == "mask_iou" and cfg.MODEL.PAPLOSS.LOSS == "pap"
    # the same settings on a model without masks are refused, naming the key
    boxes = load_config(MODEL_CONFIG)
    with pytest.raises(SettingsError, match=r"^proxy.reward_task: 'segm' \(mask AP\) needs"):
        check_reward_task(settings.proxy, boxes, MODEL_CONFIG)


def test_settings_inherit_resolve_paths_and_take_overrides(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    (configs / "search").mkdir(parents=True)
    shutil.copy(MODEL_CONFIG, configs / "model.yaml")
    (configs / "search" / "base.yaml").write_text(
        "model: {config: ../model.yaml}\nproxy: {iterations: 50, opts: {SOLVER.BASE_LR: 0.01}}\n"
    )
    (configs / "search" / "child.yaml").write_text(
        "_BASE_: base.yaml\nsearch: {rounds: 3}\nproxy: {opts: {SOLVER: {WARMUP_ITERS: 5}}}\n"
    )
    settings = load_settings(
        str(configs / "search" / "child.yaml"),
        ["proxy.opts.SOLVER.GAMMA=0.5", "launcher.kind=slurm", "launcher.partition=gpu"],
    )
    assert settings.model.config == str(configs / "model.yaml")  # relative to the file
    assert settings.proxy.iterations == 50 and settings.search.rounds == 3
    assert settings.proxy.opts == {
        "SOLVER.BASE_LR": 0.01,
        "SOLVER.WARMUP_ITERS": 5,
        "SOLVER.GAMMA": 0.5,
    }
    assert settings.policy.sigma.num_rounds == 3
    assert launcher_options(settings.launcher)["partition"] == "gpu"
    # The launcher is not part of what the journal compares on resume.
    assert "launcher" not in settings.journal_settings()


def test_edited_model_config_is_noticed(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    shutil.copytree(REPO_ROOT / "configs", configs)
    model = configs / "synthetic" / "pap_retinanet_identity.yaml"
    stored = {
        "model": {"config": str(model)},
        "model_config_sha256": model_config_digest(str(model)),
    }
    assert not model_config_changed(stored)
    (configs / "Base-RetinaNet-Tiny.yaml").write_text(
        (configs / "Base-RetinaNet-Tiny.yaml").read_text().replace("NUM_CONVS: 2", "NUM_CONVS: 3")
    )
    assert model_config_changed(stored)  # an edited _BASE_ file counts
