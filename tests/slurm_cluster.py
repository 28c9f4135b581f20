"""Pytest fixture giving tests a working Slurm cluster.

``slurm_cluster`` (session scope) uses the cluster that ``sinfo`` already answers for, if any;
otherwise it starts the single-node localhost cluster of ``tools/slurm_local.sh`` (needs root)
and points ``SLURM_CONF`` at it for the rest of the session, so that submitit's ``sbatch`` calls
and the jobs themselves find it. The cluster is left running afterwards (it starts in about a
second next time); stop it with ``bash tools/slurm_local.sh stop``. When the default ports are
taken by another cluster and ``PAPLOSS_SLURM_PORT`` is not set, it runs on free ports instead.

A missing Slurm installation fails the tests that use the fixture instead of skipping them: CI
installs it with ``bash tools/setup_env.sh --with-slurm``.
"""

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SLURM_LOCAL = REPO_ROOT / "tools" / "slurm_local.sh"
_CLIENT_TOOLS = ("sinfo", "sbatch", "srun", "squeue", "scontrol", "scancel")


@dataclass(frozen=True)
class SlurmCluster:
    """What the tests know about the cluster.

    Attributes:
        conf: the ``SLURM_CONF`` in effect (None: the system's default configuration).
        local: whether it is the localhost cluster of ``tools/slurm_local.sh``.
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

    with pytest.MonkeyPatch.context() as patch:
        proc = _start_local_cluster()
        if proc.returncode != 0 and "taken by another program" in proc.stderr + proc.stdout:
            if "PAPLOSS_SLURM_PORT" not in os.environ:
                # The default ports belong to another cluster (e.g. one of another checkout):
                # this checkout's cluster takes free ones for the session.
                patch.setenv("PAPLOSS_SLURM_PORT", str(_free_port_pair()))
                proc = _start_local_cluster()
        if proc.returncode != 0:
            pytest.fail(
                "could not start the local Slurm cluster with `bash tools/slurm_local.sh start`:\n"
                f"{proc.stdout}{proc.stderr}",
                pytrace=False,
            )
        conf = _local_conf()
        patch.setenv("SLURM_CONF", conf)
        listed = _sinfo()
        if listed is None:
            pytest.fail(
                f"the local Slurm cluster started but sinfo does not answer with SLURM_CONF={conf};"
                " see the logs named by `bash tools/slurm_local.sh status`",
                pytrace=False,
            )
        yield SlurmCluster(conf, True, tuple(listed.split()))
