"""Shared helpers: atomic writes and the integer and number checks of settings."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from paploss.utils import io as io_module
from paploss.utils.io import atomic_write, atomic_write_json
from paploss.utils.validation import check_int, check_number, is_int, is_number


def test_atomic_write_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    atomic_write_json(path, {"reward": 1.5}, indent=1)
    atomic_write(path, json.dumps({"reward": 2.5}))
    assert json.loads(path.read_text()) == {"reward": 2.5}
    atomic_write(tmp_path / "blob", b"\x00\x01")
    assert (tmp_path / "blob").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob", "result.json"]


def test_atomic_write_that_fails_keeps_the_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "settings.yaml"
    atomic_write(path, "old: 1\n")
    synced = []
    monkeypatch.setattr(io_module.os, "fsync", lambda fd: synced.append(fd))
    atomic_write(path, "new: 2\n")
    assert len(synced) == 2  # the file, then its folder
    assert path.read_text() == "new: 2\n"

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(io_module.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        atomic_write(path, "newer: 3\n")
    assert path.read_text() == "new: 2\n"
    assert os.listdir(tmp_path) == ["settings.yaml"]  # no temporary file left behind


def test_check_int() -> None:
    assert check_int(3, "search.rounds", minimum=1) == 3
    assert check_int(np.int64(2), "x") == 2 and is_int(-5) and not is_int(-5, minimum=0)
    for value in (True, 2.0, "3", None):
        assert not is_int(value)
    with pytest.raises(ValueError, match=r"^search.rounds must be an integer >= 1, got True$"):
        check_int(True, "search.rounds", minimum=1)
    with pytest.raises(KeyError, match="proxy.num_threads must be an integer >= 0, got -1"):
        check_int(-1, "proxy.num_threads", minimum=0, error=KeyError)
    with pytest.raises(ValueError, match=r"^seed must be an integer, got 1.5$"):
        check_int(1.5, "seed")


def test_check_number() -> None:
    assert check_number(0.5, "MODEL.PAPLOSS.RS.DELTA", low=0.0) == 0.5
    assert check_number(np.float32(1.0), "x", low=0.0, high=1.0, high_inclusive=True) == 1.0
    assert check_number(0, "x", low=0.0, low_inclusive=True) == 0.0
    assert is_number(np.int64(3)) and not is_number(True) and not is_number(float("nan"))
    with pytest.raises(
        ValueError, match=r"^MODEL.PAPLOSS.AP.DELTA must be a number in \(0.0, inf\)"
    ):
        check_number(0.0, "MODEL.PAPLOSS.AP.DELTA", low=0.0)
    with pytest.raises(KeyError, match=r"tau must be a number in \(0.0, 1.0\), got True"):
        check_number(True, "tau", low=0.0, high=1.0, error=KeyError)
