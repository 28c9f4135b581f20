"""Pytest fixture giving tests a working Slurm cluster.

``slurm_cluster`` (session scope) uses the cluster that ``sinfo`` already answers for, if any;
otherwise it starts the single-node localhost cluster of ``dev/slurm_local.sh`` (needs root)
and points ``SLURM_CONF`` at it for the rest of the session, so that submitit's ``sbatch`` calls
and the jobs themselves find it. At the end of the session it cancels the jobs left on a cluster
it started and stops the daemons it started (munged, slurmctld, slurmd: whichever were not
running before); a cluster that was already running stays as it was. When the default ports are
taken by another cluster and ``PAPLOSS_SLURM_PORT`` is not set, it runs on free ports instead.

A missing Slurm installation fails the tests that use the fixture instead of skipping them: CI
installs it with ``bash tools/setup_env.sh --with-slurm``.
"""

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SLURM_LOCAL = REPO_ROOT / "dev" / "slurm_local.sh"
_CLIENT_TOOLS = ("sinfo", "sbatch", "srun", "squeue", "scontrol", "scancel")


@dataclass(frozen=True)
class SlurmCluster:
    """What the tests know about the cluster.

    Attributes:
        conf: the ``SLURM_CONF`` in effect (None: the system's default configuration).
        local: whether it is the localhost cluster of ``dev/slurm_local.sh``.
        partitions: partition names as ``sinfo`` lists them (the default one marked ``*``).
    """

    conf: Optional[str]
    local: bool
    partitions: tuple


def _sinfo(env: Optional[Dict[str, str]] = None) -> Optional[str]:
    """Partition names if sinfo answers, else None."""
    try:
        proc = subprocess.run(
            ["sinfo", "--noheader", "--format=%P"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 and proc.stdout.strip() else None


def _local_conf() -> str:
    proc = subprocess.run(
        ["bash", str(SLURM_LOCAL), "env"], capture_output=True, text=True, check=True
    )
    return proc.stdout.strip().split("=", 1)[1]


def _start_local_cluster() -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        ["bash", str(SLURM_LOCAL), "start"], capture_output=True, text=True, timeout=300
    )


def _started_daemons(proc: "subprocess.CompletedProcess[str]") -> List[str]:
    """The daemons a ``slurm_local.sh start`` started (its ``started:`` line)."""
    for line in proc.stdout.splitlines():
        _, marker, names = line.partition("[slurm_local] started:")
        if marker:
            return [name for name in names.split() if name != "none"]
    return []


def _cancel_jobs(timeout_s: float = 30.0) -> None:
    """Cancels every job of the (local, test-owned) cluster and waits until they are gone."""
    try:
        subprocess.run(["scancel", "--full", "--user", str(os.getuid())], timeout=30, check=False)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            listed = subprocess.run(
                ["squeue", "--noheader", "--format=%i"], capture_output=True, text=True, timeout=30
            )
            if listed.returncode != 0 or not listed.stdout.strip():
                return
            time.sleep(0.5)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _stop_daemons(names: List[str]) -> None:
    if names:
        subprocess.run(
            ["bash", str(SLURM_LOCAL), "stop", *names], capture_output=True, text=True, timeout=120
        )


def _free_port_pair() -> int:
    """A port ``p`` with ``p`` and ``p + 1`` free on localhost (slurmctld and slurmd)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("found no two consecutive free ports on localhost")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A Slurm cluster that answers; ``SLURM_CONF`` is set for the session when needed."""
    missing = [tool for tool in _CLIENT_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"Slurm is not installed (missing {', '.join(missing)}): install it with "
            "`bash tools/setup_env.sh --with-slurm` (needs root; CI does this)",
            pytrace=False,
        )
    listed = _sinfo()
    if listed is not None:
        yield SlurmCluster(os.environ.get("SLURM_CONF"), False, tuple(listed.split()))
        return

    started: List[str] = []  # what this session started, and stops at its end
    with pytest.MonkeyPatch.context() as patch:
        try:
            proc = _start_local_cluster()
            started += _started_daemons(proc)
            if proc.returncode != 0 and "taken by another program" in proc.stderr + proc.stdout:
                if "PAPLOSS_SLURM_PORT" not in os.environ:
                    # The default ports belong to another cluster (e.g. one of another checkout):
                    # this checkout's cluster takes free ones for the session.
                    patch.setenv("PAPLOSS_SLURM_PORT", str(_free_port_pair()))
                    proc = _start_local_cluster()
                    started += _started_daemons(proc)
            if proc.returncode != 0:
                pytest.fail(
                    "could not start the local Slurm cluster with `bash dev/slurm_local.sh "
                    f"start`:\n{proc.stdout}{proc.stderr}",
                    pytrace=False,
                )
            conf = _local_conf()
            patch.setenv("SLURM_CONF", conf)
            listed = _sinfo()
            if listed is None:
                pytest.fail(
                    f"the local Slurm cluster started but sinfo does not answer with "
                    f"SLURM_CONF={conf}; see the logs named by `bash dev/slurm_local.sh status`",
                    pytrace=False,
                )
            yield SlurmCluster(conf, True, tuple(listed.split()))
        finally:
            if "slurmctld" in started:
                _cancel_jobs()  # a cluster of this session: its jobs are the tests' leftovers
            _stop_daemons(started)
