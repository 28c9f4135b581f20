"""Slurm as the launchers see it: job states from ``squeue``, the client tools, sbatch values.

``sacct`` is not needed (clusters without accounting storage have none): job states are read
from ``squeue --states=all``, which shows finished jobs for the cluster's ``MinJobAge``.
"""

import logging
import os
import shlex
import shutil
import subprocess
import sys
from typing import Dict, Iterable, List, Optional

__all__ = [
    "SLURM_ACTIVE_STATES",
    "SLURM_INSTALL_HINT",
    "missing_slurm_tools",
    "slurm_environment_summary",
    "slurm_mem",
    "squeue_states",
    "expand_array_id",
]

logger = logging.getLogger(__name__)

#: Slurm job states in which a job may still produce a result. Everything else is final.
SLURM_ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SUSPENDED",
        "STOPPED",
        "SIGNALING",
        "STAGE_OUT",
        "SPECIAL_EXIT",
        "RESV_DEL_HOLD",
    }
)

#: What to do when Slurm is missing (the end of every such message).
SLURM_INSTALL_HINT = (
    "install Slurm with `bash tools/setup_env.sh --with-slurm` and start a local cluster with "
    "`bash dev/slurm_local.sh start`, or use the 'local' launcher"
)


def missing_slurm_tools() -> Optional[str]:
    """None when the Slurm client tools are installed, else a line saying which are missing."""
    missing = [cmd for cmd in ("sbatch", "srun", "squeue", "scontrol") if shutil.which(cmd) is None]
    if missing:
        return f"{', '.join(missing)} not found: {SLURM_INSTALL_HINT}"
    return None


def slurm_mem(mem_gb: float) -> str:
    """sbatch ``--mem`` of ``mem_gb`` GB (``"32G"``, or ``"1536M"`` for 1.5)."""
    if mem_gb <= 0:
        raise ValueError(f"mem_gb must be positive, got {mem_gb}")
    return f"{int(mem_gb)}G" if float(mem_gb).is_integer() else f"{int(mem_gb * 1024)}M"


def squeue_states(job_ids: Iterable[str]) -> Optional[Dict[str, str]]:
    """Maps job ids (``"123"``, ``"123_4"``) to Slurm states; None if squeue did not answer.

    Finished jobs stay visible for the cluster's ``MinJobAge`` (300 s by default); jobs purged
    since are absent from the map.
    """
    main_ids = sorted({str(jid).split("_")[0] for jid in job_ids})
    if not main_ids:
        return {}
    cmd = ["squeue", "--states=all", "--array", "--noheader", "--format=%i|%T"]
    cmd.append("--jobs=" + ",".join(main_ids))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        logger.warning("squeue failed (%s); job states unknown for now", e)
        return None
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:  # all of them were purged
            return {}
        logger.warning("squeue failed (%s): %s", proc.returncode, proc.stderr.strip())
        return None
    states: Dict[str, str] = {}
    for line in proc.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if not job_id:
            continue
        for expanded in expand_array_id(job_id):
            states[expanded] = state.strip().upper()
    return states


def expand_array_id(job_id: str) -> List[str]:
    """``"12_[0-2%1]"`` -> ``["12_0", "12_1", "12_2"]``; other ids unchanged."""
    if "[" not in job_id:
        return [job_id]
    main, _, ranges = job_id.partition("_[")
    ids = []
    for part in ranges.rstrip("]").split("%")[0].split(","):
        low, _, high = part.partition("-")
        ids.extend(f"{main}_{i}" for i in range(int(low), int(high or low) + 1))
    return ids


def slurm_environment_summary() -> str:
    """One line about the Slurm client setup, for error messages and logs."""
    conf = os.environ.get("SLURM_CONF", "(default /etc/slurm/slurm.conf)")
    sbatch = shutil.which("sbatch") or "not installed"
    return f"sbatch: {sbatch}; SLURM_CONF: {conf}; python: {shlex.quote(sys.executable)}"
