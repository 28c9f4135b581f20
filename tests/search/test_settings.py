"""Search settings: the keys and defaults journals store, one-line errors naming the key for every
section, the search method."""

import json
import sys
from pathlib import Path

import pytest

from paploss.search.settings import (
    PPOConfig,
    ProxySettings,
    SearchSettings,
    SettingsError,
    SigmaSchedule,
)
from paploss.search.settings_loading import load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_CONFIG = str(REPO_ROOT / "configs" / "synthetic" / "pap_retinanet_identity.yaml")

#: What a journal stores for the default settings (``model.config`` aside). Journals written by
#: earlier versions hold exactly this: a key renamed, added to it or a default changed would
#: refuse their resume ("created with other search settings").
DEFAULT_JOURNAL_SETTINGS = {
    "model": {"heads": [], "fixed": {}},
    "proxy": {
        "iterations": 300, "ims_per_batch": 8, "train_dataset": "synthetic_shapes_search_train",
        "val_dataset": "synthetic_shapes_search_val", "lr_step_fractions": [0.75, 0.925],
        "checkpoint_period": 100, "opts": {}, "num_threads": 1, "num_gpus": 1,
        "diverged_reward": 0.0, "keep_checkpoints": False,
    },
    "search": {
        "rounds": 5, "candidates": 8, "score_mean": True, "baseline": "round_mean", "seed": 0,
        "max_attempts": 2,
    },
    "policy": {
        "sigma": {"initial": 0.2, "final": 0.02, "num_rounds": 5, "kind": "exponential"},
        "ppo": {
            "clip_epsilon": 0.1, "num_steps": 100, "lr": 0.02, "warmup_steps": 10,
            "betas": [0.9, 0.999], "adam_eps": 1e-08, "normalize_advantages": True,
        },
    },
    "screening": {
        "rejection": {
            "enabled": True, "min_ap_gain": 5.0, "steps": 100, "optimizer": "adam",
            "logit_lr": 0.1, "box_lr": 0.02, "num_images": 8, "seed": 0, "dataset": None,
            "eval_every": 0, "candidates_per_image": 1000, "nms_threshold": 0.5,
            "detections_per_image": 100, "rejected_reward": 0.0,
        },
        "equivalence": {
            "enabled": True, "significant_digits": 2, "probe_samples": 16, "probe_entries": 64,
            "probe_positives": 8, "seed": 0,
        },
        "early_stop": {"enabled": True, "window": 50, "tolerance": 1e-06, "check_predictions": True},
    },
}  # fmt: skip


def _load(*overrides: str) -> SearchSettings:
    return load_settings(None, [f"model.config={MODEL_CONFIG}", *overrides])


def test_journal_settings_keep_the_keys_and_defaults_of_existing_journals() -> None:
    stored = _load().journal_settings()
    assert stored["model"].pop("config") == MODEL_CONFIG
    assert json.dumps(stored, sort_keys=True) == json.dumps(
        DEFAULT_JOURNAL_SETTINGS, sort_keys=True
    )
    # Values keep their types through a load (an int stays an int: "1" and "1.0" differ in JSON).
    settings = _load("policy.sigma.initial=1", "policy.sigma.final=1")
    assert json.dumps(settings.journal_settings()["policy"]["sigma"]["initial"]) == "1"


def test_the_search_method_is_stored_only_when_it_is_not_the_default() -> None:
    assert _load().search.method == "ppo"
    other = _load("search.method=evolution")
    assert other.journal_settings()["search"]["method"] == "evolution"
    assert other.to_dict()["search"]["method"] == "evolution"
    assert _load().to_dict()["search"]["method"] == "ppo"  # the readable copy names it


def test_the_reward_task_is_stored_only_when_it_is_not_the_default() -> None:
    """Journals and trial digests from before the key existed keep theirs (box AP)."""
    default = _load()
    assert default.proxy.reward_task == "bbox"
    assert "reward_task" not in default.journal_settings()["proxy"]
    segm = _load("proxy.reward_task=segm")
    assert segm.journal_settings()["proxy"]["reward_task"] == "segm"
    assert ProxySettings.from_dict(segm.proxy.to_dict()) == segm.proxy
    assert _load().to_dict()["proxy"]["reward_task"] == "bbox"  # the readable copy names it
    assert SearchSettings.from_dict(segm.to_dict()) == segm.replace_launcher()


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "search.roundz=3",
            "unknown search setting(s): search.roundz (did you mean search.rounds?)",
        ),
        ("modle={}", "unknown search setting(s): modle (did you mean model?)"),
        ("policy.sigma.kinds=linear", "unknown policy.sigma setting(s): policy.sigma.kinds"),
        ("search.method=", "search.method must be the name of a search method, got None"),
        ("search.rounds=true", "search.rounds must be an integer >= 1, got True"),
        (
            "search.baseline=median",
            "search.baseline must be one of ('round_mean', 'policy_mean', 'rank')",
        ),
        ("proxy.iterations=0", "proxy.iterations must be an integer >= 1, got 0"),
        ("proxy.opts={SEED: 3}", "proxy.opts must not set SEED: the proxy settings own them"),
        ("proxy.lr_step_fractions=[0.9, 0.5]", "proxy.lr_step_fractions must be increasing"),
        ("proxy.reward_task=mask", "proxy.reward_task must be one of ('bbox', 'segm'), got 'mask'"),
        ("policy.sigma.kind=step", "policy.sigma.kind must be one of ('exponential', 'linear'"),
        ("policy.sigma.final=1.5", "policy.sigma.final must be in (0, initial=0.2], got 1.5"),
        ("policy.ppo.betas=[0.9, x]", "policy.ppo.betas must be two values in [0, 1)"),
        ("policy.ppo.lr=-1", "policy.ppo.lr must be positive, got -1"),
        ("policy=5", "policy must be a mapping, got 5"),
        ("screening.equivalence.probe_entries=4", "screening.equivalence.probe_entries must be"),
        (
            "screening.rejection.nms_threshold=0",
            "screening.rejection.nms_threshold must be a number",
        ),
        ("screening.early_stop.enabled=1", "screening.early_stop.enabled must be true or false"),
        ("launcher.kind=cloud", "launcher.kind must be one of debug, local, slurm, got 'cloud'"),
        ("launcher.parallel=0", "launcher.parallel must be an integer >= 1, got 0"),
        ("launcher.additional_parameters=3", "launcher.additional_parameters must be a mapping"),
        ("model.config=", "model.config: the searched model's config file is required"),
        (
            "model.imports=[no_such_module_xyz]",
            "model.imports: no module named 'no_such_module_xyz' (looked in sys.path)",
        ),
        ("model.imports=['not a name']", "model.imports: 'not a name' is not a Python module name"),
        ("model.python_path=[/no/such/folder]", "model.python_path: '/no/such/folder' is not a"),
    ],
)
def test_every_error_is_one_line_naming_its_key(override: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        _load(override)
    text = str(info.value)
    assert message in text and "\n" not in text, text


def test_sections_validate_themselves_when_created() -> None:
    with pytest.raises(ValueError, match=r"^policy.ppo.clip_epsilon must be in \(0, 1\), got 0.0$"):
        PPOConfig(clip_epsilon=0.0)
    with pytest.raises(SettingsError, match="policy.sigma.num_rounds must be an integer >= 1"):
        SigmaSchedule(num_rounds=0)
    with pytest.raises(SettingsError, match="proxy.ims_per_batch .3. must be divisible"):
        ProxySettings(ims_per_batch=3, num_gpus=2)
    assert PPOConfig(betas=[0, 0.5]).betas == (0.0, 0.5)
    assert ProxySettings.from_dict(ProxySettings().to_dict()) == ProxySettings()
    settings = _load("search.rounds=3")
    assert settings.policy.sigma.num_rounds == 3  # defaults to search.rounds
    assert SearchSettings.from_dict(settings.to_dict()) == settings.replace_launcher()


def test_model_imports_are_found_without_being_imported(tmp_path: Path) -> None:
    """``model.python_path`` is relative to the file that sets it; the settings only find the
    modules of ``model.imports`` (the controller and every trial import them)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "settings_only_module.py").write_text("raise RuntimeError('imported')\n")
    path = tmp_path / "search.yaml"
    path.write_text(
        f"model: {{config: {MODEL_CONFIG}, python_path: [project], "
        "imports: [settings_only_module]}\n"
    )
    settings = load_settings(str(path))
    assert settings.model.python_path == (str(project),)
    assert settings.model.imports == ("settings_only_module",)
    assert "settings_only_module" not in sys.modules
    stored = settings.journal_settings()["model"]
    assert stored["imports"] == ["settings_only_module"] and stored["python_path"] == [str(project)]
    assert SearchSettings.from_dict(settings.to_dict()).model == settings.model
    with pytest.raises(
        SettingsError, match="^model.imports: no module named 'settings_only_modul'"
    ):
        load_settings(str(path), ["model.imports=[settings_only_modul]"])
