"""Atomic file writes: a reader sees the old file or the new one, never a part of either.

A crash or a SIGKILL at any moment leaves either the previous content or the complete new one::

    atomic_write(path, "text")                  # str or bytes
    atomic_write_json(path, {"a": 1}, indent=1)

The content goes to a temporary file in the same folder, which is flushed to disk (``fsync``) and
renamed over the target; the folder is then synced too, so that the rename itself survives a power
loss. Every durable file of a search (trial results and specs, settings copies, exported configs)
is written this way.
"""

import contextlib
import json
import os
import uuid
from typing import Any, Union

__all__ = ["atomic_write", "atomic_write_json", "fsync_file", "fsync_directory"]


def atomic_write(path: Union[str, os.PathLike], data: Union[str, bytes]) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Args:
        path: the file to write; its folder must exist.
        data: text (written as UTF-8) or bytes.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(folder)


def atomic_write_json(path: Union[str, os.PathLike], value: Any, **dump_kwargs: Any) -> None:
    """:func:`atomic_write` of ``json.dumps(value, **dump_kwargs)``."""
    atomic_write(path, json.dumps(value, **dump_kwargs))


def fsync_file(path: Union[str, os.PathLike]) -> None:
    """Flush a file that was written and closed to disk."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: Union[str, os.PathLike]) -> None:
    """Flush a folder's entries (a rename or a new link in it) to disk, where that is possible.

    Some file systems cannot open or sync folders; there is nothing more to do on those.
    """
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
