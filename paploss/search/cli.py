"""``paploss-search``: run a loss search, and report on it.

Examples::

    paploss-search run                                        # configs/search/default.yaml
    paploss-search run --config configs/search/default.yaml --output output/search/default
    paploss-search run --resume --output output/search/default
    paploss-search run --launcher slurm --partition gpu --time 120 --gpus 1 --cpus 8 --mem 32 \\
        --sbatch constraint=volta32gb search.rounds=40 proxy.iterations=2000
    paploss-search status --output output/search/default --trials
    paploss-search export --output output/search/default [--which mean] [--to my.yaml]
    paploss-search plot --output output/search/default

Trailing ``section.key=value`` arguments of ``run`` override the search settings (values are
YAML). Errors in the input (a missing or malformed settings file, an unknown launcher, a journal
that is not a search journal or was created with other settings, ``--resume`` of a folder without
a journal, a Slurm launcher without an answering cluster) end with a one-line message and exit
code 1 (2 for command-line syntax), never with a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

__all__ = ["main", "build_parser"]

logger = logging.getLogger("paploss.search")

_DEFAULT_CONFIG = os.path.join("configs", "search", "default.yaml")
_EXIT_ERROR = 1
_EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """A problem with the command line's input, reported as one line."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``paploss-search`` (sub-commands run, status, export, plot)."""
    from paploss.search.settings import LAUNCHER_KINDS

    parser = argparse.ArgumentParser(
        prog="paploss-search",
        description="Search a detector's loss: PAP-loss parameters with PPO, or loss graphs "
        "from scratch by evolution; each candidate is scored by a short proxy training (COCO "
        "bbox AP).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    run = commands.add_parser("run", help="run a search, or resume one (--resume)")
    run.add_argument(
        "--config",
        metavar="FILE",
        help=f"search settings (default: {_DEFAULT_CONFIG}, or the journal's when resuming)",
    )
    run.add_argument(
        "--output", metavar="DIR", help="search folder (default: output/search/<config name>)"
    )
    run.add_argument("--resume", action="store_true", help="continue the search in --output")
    run.add_argument("--launcher", choices=LAUNCHER_KINDS, help="where trials run")
    run.add_argument("--parallel", type=int, metavar="N", help="local launcher: trials at once")
    slurm = run.add_argument_group("Slurm options (launcher slurm)")
    slurm.add_argument("--partition", help="sbatch --partition")
    slurm.add_argument("--time", type=float, metavar="MIN", help="time limit per trial, minutes")
    slurm.add_argument("--cpus", type=int, metavar="N", help="sbatch --cpus-per-task")
    slurm.add_argument("--gpus", type=int, metavar="N", help="GPUs per trial")
    slurm.add_argument("--mem", type=float, metavar="GB", help="sbatch --mem in GB")
    slurm.add_argument("--account", help="sbatch --account")
    slurm.add_argument("--qos", help="sbatch --qos")
    slurm.add_argument(
        "--array-parallelism", type=int, metavar="N", help="array tasks of a round at once"
    )
    slurm.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra sbatch flag, e.g. constraint=volta32gb or exclusive=true (repeatable)",
    )
    run.add_argument(
        "--no-report",
        action="store_true",
        help="do not export the best config and plots at the end",
    )
    run.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="settings overrides, e.g. search.rounds=3 proxy.iterations=100",
    )

    status = commands.add_parser(
        "status",
        help="table of rounds (and trials) of a search, with the candidates screening rejected "
        "or found duplicate",
    )
    status.add_argument("--output", metavar="DIR", required=True, help="search folder")
    status.add_argument("--trials", action="store_true", help="also list every trial")

    export = commands.add_parser("export", help="write the best loss as a config file")
    export.add_argument("--output", metavar="DIR", required=True, help="search folder")
    export.add_argument(
        "--which",
        choices=("best", "mean"),
        default="best",
        help="best: the best trial; mean: the policy mean after the last round",
    )
    export.add_argument("--to", metavar="FILE", help="file to write (default: DIR/<which>.yaml)")

    plot = commands.add_parser("plot", help="PNG plots: reward per round, searched functions")
    plot.add_argument("--output", metavar="DIR", required=True, help="search folder")
    plot.add_argument("--to", metavar="DIR", help="folder for the PNG files (default: DIR/plots)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``paploss-search`` and ``tools/search.py``; returns the exit code."""
    args = build_parser().parse_args(argv)
    _setup_logging()
    from paploss.search.errors import SearchError
    from paploss.search.journal import JournalError
    from paploss.search.launchers import LaunchError
    from paploss.search.settings import SettingsError

    handlers = {"run": _cmd_run, "status": _cmd_status, "export": _cmd_export, "plot": _cmd_plot}
    try:
        return handlers[args.command](args)
    except (CLIError, SettingsError, SearchError, JournalError, LaunchError) as exc:
        _error(str(exc))
    except KeyboardInterrupt:
        output = getattr(args, "output", None) or "<output>"
        print(
            f"\npaploss-search: interrupted; continue with: paploss-search run --resume "
            f"--output {output}",
            file=sys.stderr,
        )
        return _EXIT_INTERRUPTED
    return _EXIT_ERROR


# ------------------------------------------------------------------------------------ commands


def _cmd_run(args: argparse.Namespace) -> int:
    from paploss.search.controller import SearchController
    from paploss.search.output import SearchOutput

    settings, output_dir = _run_settings(args)
    controller = SearchController(settings, output_dir, resume=args.resume)
    summary = controller.run()
    if args.no_report:
        return 0
    output = SearchOutput(Path(output_dir).absolute())
    lines = [f"search finished: {summary.rounds_closed} rounds in {output.root}"]
    if summary.best is not None:
        best = summary.best
        lines.append(
            f"  best reward:     {best.reward:.4f} (bbox AP on {settings.proxy.val_dataset}, "
            f"round {best.round} trial {best.index}: {best.folder})"
        )
        lines.append(f"  chosen:          {summary.best_how}")
    paths = _write_report(output)
    lines += paths
    print("\n".join(lines))
    return 0


def _warn_export(exported: Any) -> None:
    for warning in exported.warnings:
        logger.warning("warning: %s", warning)


def _write_report(output: Any) -> List[str]:
    """Export the best config and write the plots; returns lines saying where they are."""
    from paploss.search.journal import SearchJournal
    from paploss.search.reports import export_config, write_plots

    lines = []
    with SearchJournal.open(str(output.journal), read_only=True) as journal:
        statuses = [t.status for t in journal.trials()]
        rejected, duplicates = statuses.count("rejected"), statuses.count("duplicate")
        if rejected or duplicates:
            lines.append(
                f"  screening:       {rejected} rejected, {duplicates} duplicate(s) of "
                f"{len(statuses)} candidates, not trained"
            )
        if journal.best_trial() is not None:
            exported = export_config(journal, output.export("best"), which="best")
            _warn_export(exported)
            lines.append(f"  exported config: {_show(exported.path)}")
            lines.append(f"  train it:        {exported.train_command}")
            _warn_if_model_config_changed(journal)
        plots = write_plots(journal, output.plots)
    for number, path in enumerate(plots):
        lines.append(f"  {'plots:' if number == 0 else '':<17}{_show(path)}")
    return lines


def _cmd_status(args: argparse.Namespace) -> int:
    from paploss.search.reports import format_status

    with _open_journal(args.output) as journal:
        print(format_status(journal, show_trials=args.trials))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from paploss.search.output import SearchOutput
    from paploss.search.reports import export_config

    output = SearchOutput(Path(args.output).absolute())
    with _open_journal(args.output) as journal:
        try:
            exported = export_config(journal, args.to or output.export(args.which), args.which)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    _warn_export(exported)
    what = (
        f"round {exported.trial.round} trial {exported.trial.index}, reward "
        f"{exported.trial.reward:.4f}"
        if exported.trial is not None
        else f"policy mean after round {exported.round}"
    )
    print(f"exported {args.which} parameters ({what}) to {_show(exported.path)}")
    print(f"train it: {exported.train_command}")
    with _open_journal(args.output) as journal:
        _warn_if_model_config_changed(journal)
    return 0


def _warn_if_model_config_changed(journal: Any) -> None:
    from paploss.search.controller import model_config_changed

    settings = journal.settings
    if model_config_changed(settings):
        logger.warning(
            "warning: %s has changed since the search started; the exported config inherits "
            "from it (_BASE_), so it no longer trains exactly what was searched (the search's "
            "trials trained %s)",
            settings["model"]["config"],
            _show(os.path.join(os.path.dirname(journal.path), "model_config.yaml")),
        )


def _cmd_plot(args: argparse.Namespace) -> int:
    from paploss.search.output import SearchOutput
    from paploss.search.reports import write_plots

    output = SearchOutput(Path(args.output).absolute())
    folder = Path(args.to).absolute() if args.to else output.plots
    with _open_journal(args.output) as journal:
        try:
            paths = write_plots(journal, folder)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    print("\n".join(f"wrote {_show(path)}" for path in paths))
    return 0


# ------------------------------------------------------------------------------------ helpers


def _run_settings(args: argparse.Namespace) -> Any:
    """Settings and output folder of ``run`` from the config file, the journal and the flags."""
    from paploss.search.output import SearchOutput
    from paploss.search.settings_loading import load_settings

    config = args.config
    if args.output and args.resume:
        output = SearchOutput(Path(args.output).absolute())
        output.require_journal()  # never a default search in a mistyped folder
        if config is None:
            settings = _settings_from_journal(output, args.overrides)
            return _with_launcher_flags(settings, args), str(output.root)
    if config is None:
        config = _default_config()
    settings = load_settings(config, args.overrides)
    output_dir = args.output or os.path.join("output", "search", Path(config).stem)
    return _with_launcher_flags(settings, args), output_dir


def _settings_from_journal(output: Any, overrides: Sequence[str]) -> Any:
    """Resume without --config: the journal's settings, the launcher of the saved copy."""
    from paploss.search.settings import JOURNAL_SECTIONS
    from paploss.search.settings_loading import load_settings

    with _open_journal(str(output.root)) as journal:
        stored = journal.settings
    base = {key: stored[key] for key in JOURNAL_SECTIONS if key in stored}
    if output.settings.exists():
        try:
            with open(output.settings) as handle:
                launcher = (yaml.safe_load(handle) or {}).get("launcher")
        except (OSError, yaml.YAMLError):
            launcher = None
        if isinstance(launcher, dict):
            base["launcher"] = launcher
    return load_settings(None, overrides, base=base)


def _with_launcher_flags(settings: Any, args: argparse.Namespace) -> Any:
    extra: Dict[str, Any] = {}
    for item in args.sbatch:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--sbatch {item!r} must look like KEY=VALUE")
        extra[key.strip()] = yaml.safe_load(value) if value.strip() else True
    changes = {
        "kind": args.launcher,
        "parallel": args.parallel,
        "partition": args.partition,
        "timeout_min": args.time,
        "cpus_per_task": args.cpus,
        "gpus_per_node": args.gpus,
        "mem_gb": args.mem,
        "account": args.account,
        "qos": args.qos,
        "array_parallelism": args.array_parallelism,
    }
    if extra:
        changes["additional_parameters"] = {**settings.launcher.additional_parameters, **extra}
    return settings.replace_launcher(**changes)


def _default_config() -> str:
    if os.path.isfile(_DEFAULT_CONFIG):
        return _DEFAULT_CONFIG
    # Installed from a source checkout (editable): the repository's configs folder.
    candidate = Path(__file__).resolve().parents[2] / _DEFAULT_CONFIG
    if candidate.is_file():
        return str(candidate)
    raise CLIError(f"no --config given and {_DEFAULT_CONFIG} does not exist here")


def _open_journal(output_dir: str) -> Any:
    from paploss.search.journal import SearchJournal
    from paploss.search.output import SearchOutput

    output = SearchOutput(Path(output_dir).absolute())
    if not output.journal.exists() and not output.journal.is_symlink():
        if not output.root.is_dir():
            raise CLIError(f"{output_dir}: no such search folder")
        raise CLIError(f"{output_dir}: not a search folder (no {output.journal.name})")
    return SearchJournal.open(str(output.journal), read_only=True)


def _show(path: os.PathLike) -> str:
    """A path relative to the working directory when it lies below it."""
    path = os.path.abspath(os.fspath(path))
    relative = os.path.relpath(path, os.getcwd())
    return path if relative.startswith("..") else relative


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each message (it may be replaced)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _setup_logging() -> None:
    # Deprecation notices that Detectron2 v0.6 triggers at import time; they say nothing about
    # the search.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*torch\.meshgrid.*", category=UserWarning)
    if logger.handlers:
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _error(message: str) -> None:
    # One line, whatever the message: its lines joined.
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    print(f"paploss-search: error: {'; '.join(lines)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
