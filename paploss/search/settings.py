"""Search settings: what a loss search trains, how it samples and where its trials run.

A search is described by a YAML file (``configs/search/*.yaml``) with six sections::

    model:     the searched detector (a Detectron2 config file) and which loss groups to search
    proxy:     the short proxy training that scores a candidate
    search:    rounds, candidates per round, seeds, retries
    policy:    σ schedule and PPO hyper-parameters (see :mod:`paploss.search.policy`)
    screening: loss rejection, gradient-equivalence check and early stop of invalid trainings
               (see :mod:`paploss.search.screening`)
    launcher:  where trials run: in-process, local processes or Slurm job arrays

Every key has a default (see the dataclasses below); a file only names what it changes. A file may
start from another one with ``_BASE_: other.yaml`` (merged key by key, like Detectron2 configs), and
``model.config`` is resolved relative to the file that sets it, again like Detectron2's
``_BASE_``. Command-line overrides are ``dotted.key=value`` strings whose values are parsed as YAML
(``search.rounds=3``, ``proxy.opts={SOLVER.BASE_LR: 0.01}``); a relative ``model.config`` given
there is relative to the working directory.

The journal of a search stores :meth:`SearchSettings.journal_settings`: everything that changes
the result (model, proxy, search, policy, screening) but not the launcher, so a search started on
one kind of launcher can be resumed on another.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from paploss.search.launcher import LAUNCHER_KINDS
from paploss.search.policy import PPOConfig, SigmaSchedule
from paploss.search.screening_settings import ScreeningSettings
from paploss.search.trial import ProxySettings
from paploss.utils.validation import check_int

__all__ = [
    "SettingsError",
    "ModelSettings",
    "SearchLoopSettings",
    "PolicySettings",
    "LauncherSettings",
    "SearchSettings",
    "load_settings",
    "parse_overrides",
    "settings_summary",
    "screening_summary",
    "BASELINES",
]

#: Advantage baselines: the mean reward of the round's samples, or the reward of the policy mean.
BASELINES = ("round_mean", "policy_mean")
_BASE_KEY = "_BASE_"
_MAX_BASE_DEPTH = 16
_SECTIONS = ("model", "proxy", "search", "policy", "screening", "launcher")


class SettingsError(ValueError):
    """Search settings are malformed: unknown keys, wrong types, missing files, bad values."""


@dataclass(frozen=True)
class ModelSettings:
    """The searched detector.

    Attributes:
        config: Detectron2 config file of the model (absolute once loaded). Its PAP-loss heads
            define the search space; the exported config inherits from it.
        heads: PAP-loss heads to search (``RETINANET``, ``RPN``, ``ROI_HEADS``); empty: every
            PAP-loss head of the model.
        fixed: groups kept out of the search and their values (``"RETINANET.lambda": 1.0`` or
            ``"RETINANET.H1": [[x, y], ...]``), see :class:`paploss.search.SearchSpace`.
    """

    config: str = ""
    heads: Tuple[str, ...] = ()
    fixed: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchLoopSettings:
    """Rounds and candidates.

    Attributes:
        rounds: number of rounds (each ends with one PPO update).
        candidates: policy samples per round.
        score_mean: also train the policy mean μ as one extra candidate per round; its reward is
            reported (and is the advantage baseline with ``baseline: policy_mean``), it is not
            part of the PPO update.
        baseline: ``round_mean`` (mean reward of the round's samples) or ``policy_mean``
            (reward of μ; needs ``score_mean``).
        seed: seed of the policy's sampling and of the per-round training seeds.
        max_attempts: a trial that fails (raises or crashes) is launched at most this often;
            then it is marked ``failed`` and left out of the update.
    """

    rounds: int = 5
    candidates: int = 8
    score_mean: bool = True
    baseline: str = "round_mean"
    seed: int = 0
    max_attempts: int = 2


@dataclass(frozen=True)
class PolicySettings:
    """Sampling distribution and its update (see :mod:`paploss.search.policy`).

    Attributes:
        sigma: σ schedule; ``num_rounds`` defaults to ``search.rounds``.
        ppo: PPO hyper-parameters.
    """

    sigma: SigmaSchedule = SigmaSchedule()
    ppo: PPOConfig = PPOConfig()


@dataclass(frozen=True)
class LauncherSettings:
    """Where trials run (see :class:`paploss.search.launcher.TrialLauncher`).

    Attributes:
        kind: ``debug`` (in this process), ``local`` (processes on this machine) or ``slurm``.
        parallel: local launcher: trials running at once.
        timeout_min: time limit per trial job in minutes (Slurm ``--time``); None: launcher default.
        partition, account, qos: Slurm ``--partition``, ``--account``, ``--qos``.
        cpus_per_task: Slurm ``--cpus-per-task``.
        gpus_per_node: GPUs per trial job.
        mem_gb: Slurm ``--mem`` in GB.
        array_parallelism: at most this many array tasks of a round run at once.
        additional_parameters: extra sbatch flags (``{constraint: volta32gb}``).
        setup: shell lines run before each trial job (``module load cuda``).
        max_num_timeout: how often a trial job may be requeued after hitting its time limit.
        poll_interval_s: pause between checks for finished trials.
    """

    kind: str = "local"
    parallel: int = 1
    timeout_min: Optional[float] = None
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    cpus_per_task: Optional[int] = None
    gpus_per_node: int = 0
    mem_gb: Optional[float] = None
    array_parallelism: Optional[int] = None
    additional_parameters: Dict[str, Any] = field(default_factory=dict)
    setup: Tuple[str, ...] = ()
    max_num_timeout: int = 3
    poll_interval_s: float = 1.0

    def launcher_options(self) -> Dict[str, Any]:
        """Keyword arguments of :class:`~paploss.search.launcher.TrialLauncher` but kind, folder."""
        options: Dict[str, Any] = {
            "parallel": self.parallel,
            "poll_interval_s": self.poll_interval_s,
            "timeout_min": self.timeout_min,
            "gpus_per_node": self.gpus_per_node,
            "max_num_timeout": self.max_num_timeout,
            "setup": list(self.setup) or None,
        }
        if self.kind == "slurm":
            options.update(
                partition=self.partition,
                account=self.account,
                qos=self.qos,
                cpus_per_task=self.cpus_per_task,
                mem_gb=self.mem_gb,
                array_parallelism=self.array_parallelism,
                additional_parameters=dict(self.additional_parameters) or None,
                scheduler_poll_s=min(10.0, max(self.poll_interval_s, 1.0)),
            )
        return options


@dataclass(frozen=True)
class SearchSettings:
    """All settings of a search (see the module docstring for the file format)."""

    model: ModelSettings
    proxy: ProxySettings = ProxySettings()
    search: SearchLoopSettings = SearchLoopSettings()
    policy: PolicySettings = PolicySettings()
    screening: ScreeningSettings = ScreeningSettings()
    launcher: LauncherSettings = LauncherSettings()
    source: Optional[str] = None  # the file the settings came from (not part of the journal)

    def journal_settings(self) -> Dict[str, Any]:
        """JSON-able settings that determine the search's result (stored in its journal)."""
        return {
            "model": _plain(dataclasses.asdict(self.model)),
            "proxy": self.proxy.to_dict(),
            "search": _plain(dataclasses.asdict(self.search)),
            "policy": {
                "sigma": _plain(dataclasses.asdict(self.policy.sigma)),
                "ppo": _plain(dataclasses.asdict(self.policy.ppo)),
            },
            "screening": _plain(self.screening.to_dict()),
        }

    def to_dict(self) -> Dict[str, Any]:
        """Everything, launcher included, as plain data (e.g. to save a copy next to a search)."""
        data = self.journal_settings()
        data["launcher"] = _plain(dataclasses.asdict(self.launcher))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Optional[str] = None) -> "SearchSettings":
        """Build and validate settings from nested plain data (paths must already be resolved).

        Raises:
            SettingsError: naming the offending key.
        """
        data = dict(data)
        unknown = sorted(set(data) - set(_SECTIONS))
        if unknown:
            _raise_unknown("", unknown, _SECTIONS)
        search = _build(SearchLoopSettings, data.get("search") or {}, "search")
        _validate_loop(search)  # before search.rounds becomes policy.sigma.num_rounds
        policy_data = dict(data.get("policy") or {})
        unknown = sorted(set(policy_data) - {"sigma", "ppo"})
        if unknown:
            _raise_unknown("policy.", unknown, ("sigma", "ppo"))
        sigma_data = dict(policy_data.get("sigma") or {})
        sigma_data.setdefault("num_rounds", search.rounds)
        policy = PolicySettings(
            sigma=_build(SigmaSchedule, sigma_data, "policy.sigma"),
            ppo=_build(PPOConfig, policy_data.get("ppo") or {}, "policy.ppo"),
        )
        settings = cls(
            model=_build(ModelSettings, data.get("model") or {}, "model"),
            proxy=_build(ProxySettings, data.get("proxy") or {}, "proxy"),
            search=search,
            policy=policy,
            screening=_build_screening(data.get("screening")),
            launcher=_build(LauncherSettings, data.get("launcher") or {}, "launcher"),
            source=source,
        )
        settings.validate()
        return settings

    def replace_launcher(self, **changes: Any) -> "SearchSettings":
        """A copy with launcher fields changed (None values are ignored)."""
        changes = {key: value for key, value in changes.items() if value is not None}
        if not changes:
            return self
        launcher = _build(
            LauncherSettings, {**dataclasses.asdict(self.launcher), **changes}, "launcher"
        )
        updated = dataclasses.replace(self, launcher=launcher)
        updated.validate()
        return updated

    def validate(self) -> None:
        """Check values that the dataclasses do not check themselves.

        Raises:
            SettingsError: naming the offending key.
        """
        if not self.model.config:
            raise SettingsError("model.config: the searched model's config file is required")
        if not os.path.isfile(self.model.config):
            raise SettingsError(f"model.config: config file '{self.model.config}' does not exist")
        _validate_loop(self.search)
        launcher = self.launcher
        if launcher.kind not in LAUNCHER_KINDS:
            raise SettingsError(
                f"launcher.kind must be one of {', '.join(LAUNCHER_KINDS)}, got {launcher.kind!r}"
            )
        _check_int(launcher.parallel, "launcher.parallel", minimum=1)
        _check_int(launcher.gpus_per_node, "launcher.gpus_per_node", minimum=0)
        try:
            self.proxy.validate()
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        if not isinstance(self.screening, ScreeningSettings):
            raise SettingsError("screening must be ScreeningSettings")
        try:
            self.screening.validate()
        except ValueError as exc:
            raise SettingsError(str(exc)) from None


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """``["a.b=1", "c=[2, 3]"]`` → ``{"a": {"b": 1}, "c": [2, 3]}`` (values parsed as YAML).

    Raises:
        SettingsError: for an item without ``=`` or a value that is not valid YAML.
    """
    nested: Dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SettingsError(f"override {item!r} must look like section.key=value")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise SettingsError(
                f"override {item!r}: the value is not valid YAML: {_yaml_problem(exc)}"
            ) from None
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SettingsError(f"override {item!r} conflicts with an earlier override")
            node = child
        # proxy.opts / model.fixed take dotted keys themselves: "proxy.opts.SOLVER.BASE_LR=0.01".
        node[parts[-1]] = value
    return _regroup_dotted_maps(nested)


def load_settings(
    path: Optional[str] = None,
    overrides: Sequence[str] = (),
    base: Optional[Mapping[str, Any]] = None,
) -> SearchSettings:
    """Load search settings from a YAML file and/or command-line overrides.

    Args:
        path: a ``configs/search/*.yaml`` file (``_BASE_`` chains are followed).
        overrides: ``dotted.key=value`` strings applied on top.
        base: plain settings to start from instead of a file (e.g. those stored in a journal);
            ignored when ``path`` is given.

    Returns:
        Validated settings, with ``model.config`` made absolute.

    Raises:
        SettingsError: for a missing or malformed file, unknown keys or invalid values.
    """
    if path is not None:
        data = _read_with_bases(os.path.abspath(path), depth=0)
    else:
        data = _deep_copy(dict(base or {}))
    extra = parse_overrides(overrides)
    model_override = (extra.get("model") or {}).get("config")
    if isinstance(model_override, str) and model_override:
        extra["model"]["config"] = os.path.abspath(model_override)
    data = _merge(data, extra)
    return SearchSettings.from_dict(data, source=None if path is None else os.path.abspath(path))


# ------------------------------------------------------------------------------------ internals


def _read_with_bases(path: str, depth: int) -> Dict[str, Any]:
    if depth > _MAX_BASE_DEPTH:
        raise SettingsError(f"{path}: _BASE_ chain is deeper than {_MAX_BASE_DEPTH} (a cycle?)")
    if not os.path.isfile(path):
        raise SettingsError(f"search config file '{path}' does not exist")
    try:
        with open(path, "r") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        raise SettingsError(
            f"{path}{_yaml_where(exc)}: invalid YAML: {_yaml_problem(exc)}"
        ) from None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read search settings: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: search settings must be a YAML mapping at the top level")
    directory = os.path.dirname(path)
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("config"), str) and model["config"]:
        model["config"] = os.path.normpath(os.path.join(directory, model["config"]))
    base_path = data.pop(_BASE_KEY, None)
    if base_path is None:
        return _regroup_dotted_maps(data)
    if not isinstance(base_path, str):
        raise SettingsError(f"{path}: _BASE_ must be a file name, got {base_path!r}")
    base = _read_with_bases(os.path.normpath(os.path.join(directory, base_path)), depth + 1)
    return _merge(base, _regroup_dotted_maps(data))


# Mappings whose keys are dotted names themselves: never merged key by key, replaced as a whole.
_OPAQUE_MAPS = (("proxy", "opts"), ("model", "fixed"), ("launcher", "additional_parameters"))


def _regroup_dotted_maps(data: Dict[str, Any]) -> Dict[str, Any]:
    """Turn ``{"proxy": {"opts": {"SOLVER": {"BASE_LR": x}}}}`` back into dotted keys."""
    for section, key in _OPAQUE_MAPS:
        node = data.get(section)
        if isinstance(node, dict) and isinstance(node.get(key), dict):
            node[key] = _flatten_keys(node[key])
    return data


def _flatten_keys(mapping: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(_flatten_keys(value, name))
        else:
            flat[name] = value
    return flat


def _merge(base: Dict[str, Any], update: Mapping[str, Any], path: Tuple[str, ...] = ()) -> Dict:
    merged = dict(base)
    for key, value in update.items():
        here = (*path, key)
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            if here in _OPAQUE_MAPS:
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = _merge(merged[key], value, here)
        else:
            merged[key] = value
    return merged


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _deep_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_deep_copy(item) for item in value]
    return value


def _raise_unknown(prefix: str, unknown: Sequence[str], known: Sequence[str]) -> None:
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"{prefix}{key}" + (f" (did you mean {prefix}{close[0]}?)" if close else ""))
    raise SettingsError(
        f"unknown search setting(s): {', '.join(hints)}; known keys here: "
        f"{', '.join(prefix + k for k in known)}"
    )


_TUPLE_FIELDS = {"heads", "setup", "lr_step_fractions", "betas"}
_DICT_FIELDS = {"fixed", "opts", "additional_parameters"}


def _build(cls: Any, data: Any, section: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, with clear errors for unknown/bad keys."""
    if not isinstance(data, Mapping):
        raise SettingsError(f"{section} must be a mapping, got {data!r}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        _raise_unknown(f"{section}.", unknown, known)
    values: Dict[str, Any] = {}
    for name, value in data.items():
        if name in _TUPLE_FIELDS and value is not None:
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                value = [value]
            value = tuple(value)
        if name in _DICT_FIELDS:
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise SettingsError(f"{section}.{name} must be a mapping, got {value!r}")
            value = dict(value)
        values[name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        # Messages of the classes themselves name the field as "SigmaSchedule.num_rounds":
        # name it by its key in the settings instead.
        prefix = f"{cls.__name__}."
        if message.startswith(prefix):
            raise SettingsError(f"{section}.{message[len(prefix):]}") from None
        raise SettingsError(f"{section}: {message}") from None


def _build_screening(data: Any) -> ScreeningSettings:
    """The ``screening`` section (missing keys keep their defaults)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SettingsError(f"screening must be a mapping, got {data!r}")
    try:
        return ScreeningSettings.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise SettingsError(str(exc)) from None


def _check_int(value: Any, name: str, minimum: int) -> None:
    check_int(value, name, minimum=minimum, error=SettingsError)


def _validate_loop(loop: SearchLoopSettings) -> None:
    _check_int(loop.rounds, "search.rounds", minimum=1)
    _check_int(loop.candidates, "search.candidates", minimum=1)
    _check_int(loop.max_attempts, "search.max_attempts", minimum=1)
    _check_int(loop.seed, "search.seed", minimum=0)
    if loop.baseline not in BASELINES:
        raise SettingsError(f"search.baseline must be one of {BASELINES}, got {loop.baseline!r}")
    if loop.baseline == "policy_mean" and not loop.score_mean:
        raise SettingsError("search.baseline 'policy_mean' needs search.score_mean: true")


def _yaml_where(exc: yaml.YAMLError) -> str:
    """``", line 3, column 7"`` for a YAML error that knows where it happened, else ``""``."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is None:
        return ""
    return f", line {mark.line + 1}, column {mark.column + 1}"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong, in one line (PyYAML's own text spans several, with a source excerpt)."""
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    if problem:
        text = f"{problem} ({context})" if context else str(problem)
    else:
        text = str(exc)
    return " ".join(text.split())


def _plain(value: Any) -> Any:
    """Tuples → lists, recursively (JSON-able, equal after a JSON round trip)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def settings_summary(settings: SearchSettings) -> List[str]:
    """A few human-readable lines describing the search (for logs)."""
    loop, proxy = settings.search, settings.proxy
    per_round = loop.candidates + (1 if loop.score_mean else 0)
    return [
        f"model: {settings.model.config}",
        f"rounds: {loop.rounds} x {per_round} trials ({loop.candidates} samples"
        + (" + the policy mean)" if loop.score_mean else ")"),
        f"proxy: {proxy.iterations} iterations x {proxy.ims_per_batch} images on "
        f"{proxy.train_dataset}, reward = bbox AP on {proxy.val_dataset}",
        f"screening: {screening_summary(settings.screening)}",
        f"launcher: {settings.launcher.kind}"
        + (
            f" ({settings.launcher.parallel} at a time)"
            if settings.launcher.kind == "local"
            else ""
        ),
    ]


def screening_summary(screening: ScreeningSettings) -> str:
    """One line saying which screening techniques are on, e.g. for :func:`settings_summary`."""
    parts = []
    rejection, equivalence, early_stop = (
        screening.rejection,
        screening.equivalence,
        screening.early_stop,
    )
    if rejection.enabled:
        parts.append(
            f"rejection below an AP gain of {rejection.min_ap_gain:g} after {rejection.steps} "
            f"steps on {rejection.num_images} images (reward {rejection.rejected_reward:g})"
        )
    if equivalence.enabled:
        parts.append(f"duplicates by gradients to {equivalence.significant_digits} digits")
    if early_stop.enabled:
        stop = "early stop on NaN/inf"
        if early_stop.window:
            stop += f" or a loss constant over {early_stop.window} iterations"
        parts.append(stop)
    return "; ".join(parts) if parts else "off"
