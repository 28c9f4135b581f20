"""Reports on a search journal: status tables, the exported config, plots.

Everything here reads the journal only (opened read-only by the CLI) and needs neither Detectron2
nor a running search: the search space is rebuilt from the settings stored in the journal.

* :func:`format_status`: a table of rounds (and optionally of trials). Candidates that screening
  kept from training are counted per round (``rej``, ``dup``) and listed with status ``rejected``
  (with their AP gain) or ``duplicate`` (with the trial whose reward they reuse).
* :func:`export_config`: the best trial's (or the final policy mean's) parameters as a Detectron2
  config file that inherits from the searched model's config (``_BASE_``), so
  ``tools/train_net.py --config-file <file>`` trains it directly.
* :func:`plot_rewards` and :func:`plot_functions`: PNG files (matplotlib, Agg backend).
* :func:`result_file_problem`: whether a trained trial's own ``result.json`` still backs what the
  journal says of it. The status and the export of the best trial warn when it does not (a
  deleted or replaced trial folder): the journal's θ and reward are then its word alone.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import yaml

from paploss.losses import FUNCTION_NAMES, MIN_KNOT_SPACING, knots_to_theta
from paploss.search.journal import RoundRecord, SearchJournal, TrialRecord
from paploss.search.launchers.trial_launcher import error_summary
from paploss.search.space import SearchSpace
from paploss.search.trials.runner import RESULT_FILE, load_result, trial_folder_name
from paploss.utils.io import atomic_write

__all__ = [
    "RoundSummary",
    "ExportResult",
    "EXPORT_CHOICES",
    "round_summaries",
    "format_status",
    "result_file_problem",
    "export_config",
    "round_overrides",
    "space_from_journal",
    "plot_rewards",
    "plot_functions",
]

#: What :func:`export_config` can export: the best scored trial, or the final policy mean.
EXPORT_CHOICES = ("best", "mean")
#: Per-round counts shown in the status table, in this order.
_COUNTED = ("done", "diverged", "failed", "rejected", "duplicate")
_MAX_DIGITS = 12


# ------------------------------------------------------------------------------------ status


@dataclass(frozen=True)
class RoundSummary:
    """Per-round numbers shared by the status table and the reward plot.

    Attributes:
        round: round index (0-based).
        status: ``open`` or ``closed``.
        sigma: σ the round's candidates were sampled with (None if unknown).
        counts: number of trials per status.
        rewards: rewards of the samples in the policy update (done, diverged, and the ones
            screening kept from training: rejected, duplicate), in trial order.
        statuses: the status of each of ``rewards``.
        mean_reward: reward of the policy-mean trial, if it was scored.
        best_so_far: best ``done`` reward up to and including this round.
        minutes: wall time of the round so far.
    """

    round: int
    status: str
    sigma: Optional[float]
    counts: Dict[str, int]
    rewards: List[float]
    statuses: List[str]
    mean_reward: Optional[float]
    best_so_far: Optional[float]
    minutes: Optional[float]


def round_summaries(journal: SearchJournal) -> List[RoundSummary]:
    """One :class:`RoundSummary` per round of the journal."""
    summaries = []
    best: Optional[float] = None
    trials_by_round: Dict[int, List[TrialRecord]] = {}
    for trial in journal.trials():
        trials_by_round.setdefault(trial.round, []).append(trial)
    for record in journal.rounds():
        trials = trials_by_round.get(record.round, [])
        counts: Dict[str, int] = {}
        for trial in trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        scored = [t for t in trials if t.role == "sample" and t.is_scored]
        means = [t for t in trials if t.role == "mean" and t.is_scored]
        done = [float(t.reward) for t in trials if t.status == "done" and t.reward is not None]
        if done:
            best = max(done) if best is None else max(best, max(done))
        end = record.finished_at
        if end is None:
            finished = [t.finished_at for t in trials if t.finished_at is not None]
            end = max(finished) if finished else None
        summaries.append(
            RoundSummary(
                round=record.round,
                status=record.status,
                sigma=_round_sigma(record),
                counts=counts,
                rewards=[float(t.reward) for t in scored],
                statuses=[t.status for t in scored],
                mean_reward=float(means[0].reward) if means else None,
                best_so_far=best,
                minutes=None if end is None else (end - record.started_at) / 60.0,
            )
        )
    return summaries


def _round_sigma(record: RoundRecord) -> Optional[float]:
    if record.update_stats and "sigma" in record.update_stats:
        return float(record.update_stats["sigma"])
    state = record.policy_state_start or {}
    schedule = (state.get("config") or {}).get("sigma_schedule")
    if not schedule:
        return None
    from paploss.search.settings import SigmaSchedule

    return SigmaSchedule(**schedule)(record.round)


def format_status(journal: SearchJournal, show_trials: bool = False) -> str:
    """A plain-text report: the search, a table of rounds and (optionally) of trials."""
    settings = journal.settings
    loop = settings.get("search", {})
    space = settings.get("space", {})
    summaries = round_summaries(journal)
    closed = sum(s.status == "closed" for s in summaries)
    lines = [
        f"journal: {journal.path}",
        f"model:   {settings.get('model', {}).get('config')}",
        f"space:   {len(space.get('names', []))} dimensions ({', '.join(space.get('heads', []))})",
        f"rounds:  {closed} closed of {loop.get('rounds')} planned"
        + (
            f", round {summaries[-1].round} open"
            if summaries and summaries[-1].status == "open"
            else ""
        ),
    ]
    best = journal.best_trial()
    if best is not None:
        lines.append(
            f"best:    reward {best.reward:.4f} (round {best.round} trial {best.index}, "
            f"{best.role}) in {best.folder}"
        )
        problem = result_file_problem(journal, best)
        if problem:
            lines.append(f"warning: the best trial's {problem}")
    screening = _screening_line(journal, summaries)
    if screening:
        lines.append(screening)
    lines.append("")
    rows = []
    for s in summaries:
        counts = s.counts
        state = "/".join(str(counts.get(key, 0)) for key in _COUNTED) + (
            f" +{counts.get('pending', 0) + counts.get('running', 0)} open"
            if s.status == "open"
            else ""
        )
        rows.append(
            [
                str(s.round),
                s.status,
                _fmt(s.sigma, 4),
                state,
                _fmt(float(np.mean(s.rewards)) if s.rewards else None),
                _fmt(min(s.rewards) if s.rewards else None),
                _fmt(max(s.rewards) if s.rewards else None),
                _fmt(s.mean_reward),
                _fmt(s.best_so_far),
                _fmt(s.minutes, 1),
            ]
        )
    header = [
        "round",
        "status",
        "sigma",
        "done/div/fail/rej/dup",
        "mean",
        "min",
        "max",
        "mu",
        "best",
        "minutes",
    ]
    lines += _table(header, rows)
    if show_trials:
        lines.append("")
        min_gain = (settings.get("screening") or {}).get("rejection", {}).get("min_ap_gain")
        trial_rows = []
        for t in journal.trials():
            seconds = t.metrics.get("total_s")
            note = _screening_note(t, min_gain) or t.metrics.get("reason")
            note = note or error_summary(t.error or "")
            trial_rows.append(
                [
                    str(t.round),
                    str(t.index),
                    t.role,
                    t.status,
                    _fmt(t.reward),
                    _fmt(_number(t.metrics.get("AP50"))),
                    _fmt(_number(t.metrics.get("AP75"))),
                    str(t.attempts),
                    _fmt(_number(seconds), 0),
                    t.job_id or "",
                    note[:60],
                ]
            )
        lines += _table(
            [
                "round",
                "trial",
                "role",
                "status",
                "reward",
                "AP50",
                "AP75",
                "tries",
                "s",
                "job",
                "note",
            ],
            trial_rows,
        )
    return "\n".join(lines)


def _screening_line(journal: SearchJournal, summaries: Sequence[RoundSummary]) -> Optional[str]:
    """``screening: 3 rejected, 1 duplicate(s) of 12 samples (not trained; on: ...)``, or None
    for a journal of a search from before screening existed."""
    rejected = sum(s.counts.get("rejected", 0) for s in summaries)
    duplicates = sum(s.counts.get("duplicate", 0) for s in summaries)
    screening = journal.settings.get("screening")
    if not screening and not rejected and not duplicates:
        return None  # a search from before screening existed
    switches = screening or {}
    on = [
        name
        for name in ("rejection", "equivalence", "early_stop")
        if (switches.get(name) or {}).get("enabled")
    ]
    samples = sum(1 for t in journal.trials() if t.role == "sample")
    return (
        f"screening: {rejected} rejected, {duplicates} duplicate(s) of {samples} samples "
        f"(not trained; on: {', '.join(on) or 'nothing'})"
    )


def _screening_note(trial: TrialRecord, min_gain: Any) -> Optional[str]:
    """Why screening kept a trial from training (for the trial table)."""
    record = trial.metrics.get("screening") or {}
    if trial.status == "rejected":
        score = _number(record.get("score"))
        if score is None:
            return "rejected by screening"
        limit = _number(min_gain)
        return f"AP gain {score:.2f}" + (f" < {limit:g}" if limit is not None else "")
    if trial.status == "duplicate" or (trial.status == "failed" and trial.folder is None):
        original = record.get("duplicate_of_trial")
        if original:
            return f"duplicate of {original}" + ("" if trial.status == "duplicate" else " (failed)")
    return None


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _fmt(value: Optional[float], digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def result_file_problem(journal: SearchJournal, trial: TrialRecord) -> Optional[str]:
    """What is wrong with a trained trial's ``result.json``, or None when it backs the journal.

    The journal is the search's record; a trial's folder keeps the trial's own: its
    ``result.json`` must exist, be readable and hold this trial's result with the journal's
    reward. Only ``done`` and ``diverged`` trials have one.

    Returns:
        A phrase such as ``"result file trials/round001_trial02/result.json is missing ..."``.
    """
    if trial.folder is None or trial.status not in ("done", "diverged"):
        return None
    search_dir = os.path.dirname(os.path.abspath(journal.path))
    folder = os.path.join(search_dir, trial.folder)
    shown = os.path.join(trial.folder, RESULT_FILE)
    alone = f"its reward {_fmt(trial.reward)} and parameters are the journal's word alone"
    if not os.path.exists(os.path.join(folder, RESULT_FILE)):
        return f"result file {shown} is missing (deleted?); {alone}"
    result = load_result(folder)
    if result is None:
        return f"result file {shown} is unreadable; {alone}"
    name = trial_folder_name(trial.round, trial.index)
    if result.trial_id != name or result.reward is None or trial.reward is None:
        return f"result file {shown} holds the result of {result.trial_id}; {alone}"
    if not math.isclose(result.reward, trial.reward, rel_tol=1e-9, abs_tol=1e-9):
        return (
            f"result file {shown} says reward {_fmt(result.reward)}, the journal "
            f"{_fmt(trial.reward)}"
        )
    return None


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(w) for cell, w in zip(cells, widths)).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    if not rows:
        out.append("(no rounds yet)")
    return out


# ------------------------------------------------------------------------------------ export


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
    """

    path: str
    which: str
    overrides: Dict[str, Any]
    trial: Optional[TrialRecord]
    round: int
    warnings: Tuple[str, ...] = ()


def space_from_journal(journal: SearchJournal) -> SearchSpace:
    """The search space stored in a journal's settings."""
    description = journal.settings.get("space")
    if not description:
        raise ValueError(f"{journal.path}: the journal's settings do not describe a search space")
    return SearchSpace.from_dict(description)


def export_config(
    journal: SearchJournal,
    path: os.PathLike,
    which: str = "best",
    output_dir: Optional[str] = None,
) -> ExportResult:
    """Write the searched parameters as a ready-to-train Detectron2 config.

    The file sets ``_BASE_`` to the searched model's config (relative to the file when both are
    on one drive, else absolute), the ``MODEL.PAPLOSS`` values (rounded, see
    :func:`round_overrides`) and ``OUTPUT_DIR``.

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
        trial = journal.best_trial()
        if trial is None:
            raise ValueError(f"{journal.path}: no trial has finished yet: nothing to export")
        overrides = space.to_overrides(trial.theta)
        after_round = trial.round
        provenance = (
            f"best trial: round {trial.round}, trial {trial.index} ({trial.role}), "
            f"proxy reward {trial.reward:.4f}"
        )
        problem = result_file_problem(journal, trial)
        if problem:
            warnings.append(f"the exported trial's {problem}")
    else:
        closed = [r for r in journal.rounds() if r.status == "closed"]
        if not closed:
            raise ValueError(f"{journal.path}: no round is closed yet: no updated mean to export")
        state = closed[-1].policy_state_end or {}
        logits = np.asarray(state.get("logit_mean", []), dtype=np.float64)
        mean = np.clip(1.0 / (1.0 + np.exp(-logits)), 0.0, 1.0)
        overrides = space.to_overrides(mean)
        after_round = closed[-1].round
        provenance = f"policy mean after round {after_round}"
    rounded = round_overrides(overrides, space)

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
        "Searched PAP-loss parameters, exported from the loss search in",
        f"  {_relative_or_absolute(search_dir, os.getcwd())}",
        f"{provenance} (bbox AP on {reward_on}).",
        "Train it: python tools/train_net.py --config-file "
        + _relative_or_absolute(path, os.getcwd()),
    ]
    header += [f"Warning: {warning}." for warning in warnings]
    body: Dict[str, Any] = {"_BASE_": base}
    body.update(_nest(rounded))
    body["OUTPUT_DIR"] = output_dir
    text = "".join(f"# {line}\n" for line in header)
    text += yaml.dump(body, Dumper=_ExportDumper, sort_keys=False, width=120)
    atomic_write(path, text)
    return ExportResult(path, which, rounded, trial, after_round, tuple(warnings))


def round_overrides(overrides: Mapping[str, Any], space: SearchSpace) -> Dict[str, Any]:
    """Config values rounded for readability, still valid and still describing the same loss.

    Knots are rounded to 4 decimals, or to more where 4 would break the minimum knot spacing
    (:data:`paploss.losses.MIN_KNOT_SPACING`) or the ordering; λ to 4 decimals (clamped to
    [0.1, 10]). The result is checked with :meth:`SearchSpace.from_overrides`.
    """
    rounded: Dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, list):
            rounded[key] = _round_knots(value)
        else:
            rounded[key] = min(10.0, max(0.1, round(float(value), 4)))
    space.from_overrides(rounded)  # raises if rounding broke anything
    return rounded


def _round_knots(knots: Sequence[Sequence[float]]) -> List[List[float]]:
    for digits in range(4, _MAX_DIGITS + 1):
        candidate = [[round(float(x), digits), round(float(y), digits)] for x, y in knots]
        try:
            knots_to_theta(candidate, min_spacing=MIN_KNOT_SPACING)
        except ValueError:
            continue
        return candidate
    return [[float(x), float(y)] for x, y in knots]


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


# ------------------------------------------------------------------------------------ plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_rewards(journal: SearchJournal, path: os.PathLike) -> str:
    """Reward per round: samples, mean with min-max band and quartiles, policy mean, best so far.

    Returns:
        The written PNG path.
    """
    plt = _pyplot()
    summaries = round_summaries(journal)
    penalty = journal.settings.get("proxy", {}).get("diverged_reward")
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    xs, means, lows, highs, q1s, q3s = [], [], [], [], [], []
    screened: Dict[str, List[Tuple[int, float]]] = {"rejected": [], "duplicate": []}
    for s in summaries:
        x = s.round
        if s.rewards:
            values = np.asarray(s.rewards)
            xs.append(x)
            means.append(values.mean())
            lows.append(values.min())
            highs.append(values.max())
            q1s.append(np.percentile(values, 25))
            q3s.append(np.percentile(values, 75))
            trained = [r for r, status in zip(s.rewards, s.statuses) if status not in screened]
            ax.scatter(
                np.full(len(trained), x), trained, s=12, color="tab:blue", alpha=0.45, zorder=3
            )
            for r, status in zip(s.rewards, s.statuses):
                if status in screened:
                    screened[status].append((x, r))
    if screened["rejected"]:
        ax.scatter(
            *zip(*screened["rejected"]),
            s=28,
            marker="x",
            color="tab:grey",
            zorder=4,
            label=f"rejected by screening ({len(screened['rejected'])})",
        )
    if screened["duplicate"]:
        ax.scatter(
            *zip(*screened["duplicate"]),
            s=36,
            marker="o",
            facecolors="none",
            edgecolors="tab:purple",
            zorder=4,
            label=f"duplicates, reward reused ({len(screened['duplicate'])})",
        )
    if xs:
        ax.fill_between(xs, lows, highs, color="tab:blue", alpha=0.12, label="samples: min-max")
        ax.fill_between(xs, q1s, q3s, color="tab:blue", alpha=0.25, label="samples: quartiles")
        ax.plot(xs, means, color="tab:blue", marker="o", label="samples: mean")
    mean_points = [(s.round, s.mean_reward) for s in summaries if s.mean_reward is not None]
    if mean_points:
        ax.plot(*zip(*mean_points), color="tab:green", marker="s", label="policy mean μ")
    best_points = [(s.round, s.best_so_far) for s in summaries if s.best_so_far is not None]
    if best_points:
        ax.step(*zip(*best_points), where="post", color="tab:red", label="best so far")
    if penalty is not None and any(s.counts.get("diverged") for s in summaries):
        ax.axhline(penalty, color="grey", linestyle=":", label="diverged penalty")
    ax.set_xlabel("round")
    ax.set_ylabel(f"reward: bbox AP on {journal.settings.get('proxy', {}).get('val_dataset', '')}")
    title = "Loss search: reward per round"
    if screened["rejected"] or screened["duplicate"]:
        title += (
            f" ({len(screened['rejected'])} rejected, {len(screened['duplicate'])} duplicates"
            " not trained)"
        )
    ax.set_title(title, fontsize=10)
    if summaries:
        ax.set_xlim(-0.5, max(s.round for s in summaries) + 0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_functions(journal: SearchJournal, path: os.PathLike) -> str:
    """The searched functions of every head vs the identity: best trial and final policy mean.

    One row per head, one panel per function (H1, H2, I1, I2, I3); λ of each curve in the legend
    of the first panel of the row. Fixed groups are drawn at their fixed values.

    Returns:
        The written PNG path.
    """
    plt = _pyplot()
    space = space_from_journal(journal)
    curves: List[Tuple[str, Dict[str, Any], str]] = []
    best = journal.best_trial()
    if best is not None:
        curves.append(
            (f"best trial (reward {best.reward:.4f})", space.to_overrides(best.theta), "-")
        )
    closed = [r for r in journal.rounds() if r.status == "closed"]
    if closed and closed[-1].policy_state_end:
        logits = np.asarray(closed[-1].policy_state_end["logit_mean"], dtype=np.float64)
        mean = np.clip(1.0 / (1.0 + np.exp(-logits)), 0.0, 1.0)
        curves.append(
            (f"policy mean after round {closed[-1].round}", space.to_overrides(mean), "--")
        )
    heads = space.heads
    fig, axes = plt.subplots(
        len(heads),
        len(FUNCTION_NAMES),
        figsize=(3.0 * len(FUNCTION_NAMES), 3.0 * len(heads)),
        dpi=100,
        squeeze=False,
    )
    grid = np.linspace(0.0, 1.0, 2)
    for row, head in enumerate(heads):
        for col, name in enumerate(FUNCTION_NAMES):
            ax = axes[row][col]
            ax.plot(grid, grid, color="grey", linestyle=":", label="identity")
            key = f"MODEL.PAPLOSS.{head}.FUNCTIONS.{name}"
            for label, overrides, style in curves:
                knots = overrides.get(key)
                if knots is None:
                    continue
                xs = [0.0] + [k[0] for k in knots] + [1.0]
                ys = [0.0] + [k[1] for k in knots] + [1.0]
                lam = overrides.get(f"MODEL.PAPLOSS.{head}.GRAD_SCALE")
                suffix = f", λ={lam:.3g}" if col == 0 and lam is not None else ""
                ax.plot(xs, ys, linestyle=style, marker="o", markersize=3, label=label + suffix)
            fixed = f"{head}.{name}" in space.fixed
            ax.set_title(f"{head} {name}" + (" (fixed)" if fixed else ""), fontsize=9)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_aspect("equal")
            ax.grid(alpha=0.3)
            if col == 0:
                ax.legend(fontsize=6, loc="upper left")
    fig.suptitle("Searched PAP-loss functions vs identity", fontsize=11)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: os.PathLike) -> str:
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
