"""The searched loss as a ready-to-train Detectron2 config (``paploss-search export``).

:func:`export_config` writes the best trial's (or the final policy mean's) config values as a
config file that inherits from the searched model's config (``_BASE_``), so
``tools/train_net.py --config-file <file>`` (or the search's ``model.train_script``, e.g. a
Detectron2 project's ``train_net.py``) trains it directly: PAP-loss parameters (knots and λ,
rounded) or, for a search of loss graphs, ``MODEL.PAPLOSS.LOSS: "graph"`` and the two
expressions. It reads the journal only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from paploss.search.journal import SearchJournal, TrialRecord
from paploss.search.recheck import declared_best
from paploss.search.reports.status import result_file_problem, search_method
from paploss.search.spaces import round_overrides, space_from_dict
from paploss.utils.io import atomic_write

__all__ = [
    "EXPORT_CHOICES",
    "ExportResult",
    "export_config",
    "round_overrides",
    "space_from_journal",
    "train_command",
]

#: What :func:`export_config` can export: the best scored trial, or the final policy mean.
EXPORT_CHOICES = ("best", "mean")
#: The script that trains an exported config when the search names none (``model.train_script``).
DEFAULT_TRAIN_SCRIPT = os.path.join("tools", "train_net.py")


@dataclass(frozen=True)
class ExportResult:
    """An exported config.

    Attributes:
        path: the written file.
        which: ``best`` or ``mean``.
        overrides: the (rounded) config values written.
        trial: the exported trial (``best``), else None.
        round: the round after which the exported parameters were current.
        warnings: problems the user should know of, e.g. that the exported trial's own
            ``result.json`` is missing (see :func:`result_file_problem`).
        train_command: the command that trains the exported config (:func:`train_command`).
    """

    path: str
    which: str
    overrides: Dict[str, Any]
    trial: Optional[TrialRecord]
    round: int
    warnings: Tuple[str, ...] = ()
    train_command: str = ""


def train_command(settings: Mapping[str, Any], config_path: str) -> str:
    """``python <script> --config-file <config_path>``: the command that trains a config of the
    searched model, with the search's ``model.train_script`` (journal settings ``settings``), or
    ``tools/train_net.py`` when it names none; paths relative to the working directory when they
    lie below it."""
    script = (settings.get("model") or {}).get("train_script") or DEFAULT_TRAIN_SCRIPT
    if os.path.isabs(script):
        script = _relative_or_absolute(script, os.getcwd())
    return f"python {script} --config-file {_relative_or_absolute(config_path, os.getcwd())}"


def space_from_journal(journal: SearchJournal) -> Any:
    """The search space stored in a journal's settings (a
    :class:`~paploss.search.spaces.SearchSpace` or a
    :class:`~paploss.search.spaces.GraphLossSpace`)."""
    description = journal.settings.get("space")
    if not description:
        raise ValueError(f"{journal.path}: the journal's settings do not describe a search space")
    return space_from_dict(description)


def export_config(
    journal: SearchJournal,
    path: os.PathLike,
    which: str = "best",
    output_dir: Optional[str] = None,
) -> ExportResult:
    """Write the searched loss as a ready-to-train Detectron2 config.

    The file sets ``_BASE_`` to the searched model's config (relative to the file when both are
    on one drive, else absolute), the ``MODEL.PAPLOSS`` values (the space's
    ``export_overrides``: PAP-loss parameters rounded, see :func:`round_overrides`; loss graphs
    as they trained) and ``OUTPUT_DIR``.

    Args:
        journal: the search.
        path: file to write (its folder is created).
        which: ``best``: the best ``done`` trial; ``mean``: the policy mean after the last closed
            round.
        output_dir: ``OUTPUT_DIR`` of the exported config; default ``train_<which>`` next to
            ``path``, written relative to the working directory when it lies below it.

    The exported values come from the journal. When the best trial's own ``result.json`` no
    longer backs them, the file is still written, and its header and
    :attr:`ExportResult.warnings` say so.

    Raises:
        ValueError: for an unknown ``which``, or nothing to export yet.
    """
    if which not in EXPORT_CHOICES:
        raise ValueError(f"which must be one of {EXPORT_CHOICES}, got {which!r}")
    space = space_from_journal(journal)
    settings = journal.settings
    trial: Optional[TrialRecord] = None
    warnings: List[str] = []
    if which == "best":
        declared = declared_best(journal)
        if declared is None:
            raise ValueError(f"{journal.path}: no trial has finished yet: nothing to export")
        trial = declared.trial
        rounded = space.export_overrides(trial.theta, trial.overrides)
        after_round = trial.round
        provenance = declared.describe()
        problem = result_file_problem(journal, trial)
        if problem:
            warnings.append(f"the exported trial's {problem}")
    else:
        closed = [r for r in journal.rounds() if r.status == "closed"]
        if not closed:
            raise ValueError(f"{journal.path}: no round is closed yet: no updated mean to export")
        method = search_method(journal)
        mean = (
            None if method is None else method.point_from_state(closed[-1].policy_state_end or {})
        )
        if mean is None:
            raise ValueError(f"{journal.path}: the search method has no mean to export")
        rounded = space.export_overrides(mean, space.to_overrides(mean))
        after_round = closed[-1].round
        provenance = f"policy mean after round {after_round}"

    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    model_config = settings["model"]["config"]
    base = _relative_or_absolute(model_config, folder)
    if output_dir is None:
        output_dir = _relative_or_absolute(os.path.join(folder, f"train_{which}"), os.getcwd())
    reward_on = settings.get("proxy", {}).get("val_dataset", "the proxy validation set")
    search_dir = os.path.dirname(os.path.abspath(journal.path))
    header = [
        f"Searched {space.WHAT}, exported from the loss search in",
        f"  {_relative_or_absolute(search_dir, os.getcwd())}",
        f"{provenance} (bbox AP on {reward_on}).",
        f"Train it: {train_command(settings, path)}",
    ]
    header += [f"Warning: {warning}." for warning in warnings]
    body: Dict[str, Any] = {"_BASE_": base}
    body.update(_nest(rounded))
    body["OUTPUT_DIR"] = output_dir
    text = "".join(f"# {line}\n" for line in header)
    text += yaml.dump(body, Dumper=_ExportDumper, sort_keys=False, width=120)
    atomic_write(path, text)
    return ExportResult(
        path, which, rounded, trial, after_round, tuple(warnings), train_command(settings, path)
    )


def _nest(overrides: Mapping[str, Any]) -> Dict[str, Any]:
    nested: Dict[str, Any] = {}
    for key, value in overrides.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def _relative_or_absolute(target: str, start: str) -> str:
    """``target`` relative to ``start`` when both lie below the working directory, else absolute.

    Inside a project (a search run from the repository root writing to ``output/...``) the
    exported file then keeps working when the project moves; elsewhere absolute paths are safer.
    """
    target, start = os.path.abspath(target), os.path.abspath(start)
    cwd = os.getcwd()
    try:
        inside = all(os.path.commonpath([cwd, p]) == cwd for p in (target, start))
    except ValueError:  # different drives
        return target
    return os.path.relpath(target, start) if inside else target


class _ExportDumper(yaml.SafeDumper):
    """YAML dumper that writes lists of lists (knots) on one line: ``[[x, y], [x, y], ...]``."""


def _represent_list(dumper: yaml.SafeDumper, value: list) -> Any:
    flow = all(isinstance(item, (list, tuple)) for item in value) or not any(
        isinstance(item, (list, tuple, dict)) for item in value
    )
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


_ExportDumper.add_representer(list, _represent_list)
