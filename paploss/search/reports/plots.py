"""PNG plots of a search (matplotlib, Agg backend): reward per round, searched functions.

Both read the journal only (``paploss-search plot``, :func:`write_plots`). A search of loss
graphs has no functions to plot: its best losses are in the status and the exported config.
"""

from __future__ import annotations

import io
import os
from typing import Any, Dict, List, Tuple

import numpy as np

from paploss.losses import FUNCTION_NAMES
from paploss.search.journal import SearchJournal
from paploss.search.recheck import declared_best
from paploss.search.reports.export import space_from_journal
from paploss.search.reports.status import round_summaries, search_method
from paploss.search.spaces import SearchSpace
from paploss.utils.io import atomic_write

__all__ = ["plot_rewards", "plot_functions", "write_plots"]


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

    Raises:
        ValueError: for a search without such functions (of loss graphs).
    """
    space = space_from_journal(journal)
    if not isinstance(space, SearchSpace):
        raise ValueError(f"{journal.path}: a search of {space.WHAT} has no functions to plot")
    plt = _pyplot()
    curves: List[Tuple[str, Dict[str, Any], str]] = []
    declared = declared_best(journal)
    if declared is not None:
        curves.append(
            (
                f"best trial (reward {declared.mean_reward:.4f})",
                space.to_overrides(declared.trial.theta),
                "-",
            )
        )
    closed = [r for r in journal.rounds() if r.status == "closed"]
    method = search_method(journal)
    if closed and closed[-1].policy_state_end and method is not None:
        mean = method.point_from_state(closed[-1].policy_state_end)
        if mean is not None:
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


def write_plots(journal: SearchJournal, folder: os.PathLike) -> List[str]:
    """``rewards.png`` and, for a search of PAP-loss parameters, ``functions.png`` in
    ``folder``; returns the written paths."""
    folder = os.fspath(folder)
    paths = [plot_rewards(journal, os.path.join(folder, "rewards.png"))]
    if isinstance(space_from_journal(journal), SearchSpace):
        paths.append(plot_functions(journal, os.path.join(folder, "functions.png")))
    return paths


def _save(fig: Any, plt: Any, path: os.PathLike) -> str:
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=os.path.splitext(path)[1][1:] or "png")
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
    return path
