"""Where a search writes: the layout of its output folder.

::

    <output>/journal.sqlite       the journal
    <output>/settings.yaml        a readable copy of the settings the search was started with
    <output>/model_config.yaml    the searched model's merged config, which every trial trains
    <output>/warm_start/          with proxy.warm_start: the checkpoint every trial starts from,
                                  trained once before the first round (a trial of its own)
    <output>/trials/round000_trial00/ ...   one folder per trial (see paploss.search.trials.runner)
    <output>/jobs/                submitit's pickles and job logs

Trial folders are named by :func:`trial_folder_name`; the journal stores each trial's folder
relative to the output folder.
"""

from dataclasses import dataclass
from pathlib import Path

from paploss.search.errors import SearchError

__all__ = ["SearchOutput", "trial_folder_name"]


@dataclass(frozen=True)
class SearchOutput:
    """Paths inside a search's output folder."""

    root: Path

    @property
    def journal(self) -> Path:
        return self.root / "journal.sqlite"

    @property
    def settings(self) -> Path:
        return self.root / "settings.yaml"

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def model_config(self) -> Path:
        """The searched model's fully merged config as the search started (what trials train)."""
        return self.root / "model_config.yaml"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def export(self, which: str = "best") -> Path:
        """Default path of an exported config (``best.yaml`` / ``mean.yaml``)."""
        return self.root / f"{which}.yaml"

    @property
    def has_journal(self) -> bool:
        """Whether the folder holds a journal (a file or a link of that name)."""
        return self.journal.exists() or self.journal.is_symlink()

    def require_journal(self) -> None:
        """Raise :class:`SearchError` unless there is a search here to resume."""
        if not self.has_journal:
            where = "no such folder" if not self.root.is_dir() else f"no {self.journal.name}"
            raise SearchError(
                f"{self.root}: no search to resume ({where}); start one there without --resume"
            )


def trial_folder_name(round_index: int, index: int) -> str:
    """Folder name of trial ``index`` of round ``round_index``: ``round002_trial05``."""
    return f"round{round_index:03d}_trial{index:02d}"
