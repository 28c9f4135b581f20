"""Helpers for the modeling tests."""

from paploss.engine import setup_cfg


def make_cfg(config_file, *opts):
    """A frozen config with a batch of 4 images and the given overrides."""
    return setup_cfg(config_file, ["SOLVER.IMS_PER_BATCH", "4", *opts])
