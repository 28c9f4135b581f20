"""The job a process runs in, and the distributed rendezvous port derived from it.

Trials log the job id (``starts.jsonl``) and a multi-GPU trial derives its port from it; both
use :func:`current_job_id`, so they always agree. Nothing here imports submitit: a trial's job
process uses it before anything else is loaded.
"""

import os
import socket
import zlib
from typing import Any, Optional

__all__ = ["current_job_id", "distributed_port", "distributed_url"]


#: Where :func:`current_job_id` looks, innermost job first: ``(job variable, task variable)``.
_JOB_ID_VARIABLES = (
    ("SUBMITIT_DEBUG_JOB_ID", None),
    ("SUBMITIT_LOCAL_JOB_ID", None),
    ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"),
    ("SLURM_JOB_ID", None),
)


def current_job_id() -> Optional[str]:
    """The id of the job this process runs in, as the launcher names it; None outside a job.

    Jobs nest: a search controller inside a Slurm allocation runs its local (or debug) trials
    with the allocation's ``SLURM_*`` variables inherited, so the innermost job is taken first:

    1. ``SUBMITIT_DEBUG_JOB_ID``: a debug trial, in the controller's own process;
    2. ``SUBMITIT_LOCAL_JOB_ID``: a local trial (the process id of submitit's job controller);
    3. ``SLURM_ARRAY_JOB_ID`` + ``_`` + ``SLURM_ARRAY_TASK_ID``: a task of a Slurm job array;
    4. ``SLURM_JOB_ID``: any other Slurm job.

    Trials log this id (``starts.jsonl``) and :func:`distributed_port` derives their port from it,
    so the two always agree.
    """
    for job_var, task_var in _JOB_ID_VARIABLES:
        value = os.environ.get(job_var)
        if value:
            task = os.environ.get(task_var) if task_var else None
            return f"{value}_{task}" if task else value
    return None


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def distributed_port(
    job_id: Optional[str] = None,
    *,
    base: int = 20000,
    span: int = 20000,
    check_free: bool = True,
) -> int:
    """A TCP port for the job's distributed rendezvous, distinct for jobs sharing a node.

    The port is derived from the job id: the tasks of one array get consecutive ports and
    different arrays get spread ones, so concurrent trials on one machine do not collide.

    Args:
        job_id: ``"<job>"`` or ``"<array job>_<task>"``; default: :func:`current_job_id`, or
            this process id outside a job.
        base, span: ports are taken from ``[base, base + span)``.
        check_free: move on to the next port while the derived one is taken on this host. Leave
            it off for multi-node jobs, where every node must compute the same port.

    Returns:
        The port number.
    """
    key = job_id if job_id is not None else (current_job_id() or str(os.getpid()))
    main, _, task = str(key).partition("_")
    if main.isdigit() and (task.isdigit() or not task):
        offset = int(main) * 1009 + int(task or 0)
    else:
        offset = zlib.crc32(str(key).encode())
    port = base + offset % span
    if check_free:
        for step in range(64):
            candidate = base + (offset + step) % span
            if _port_is_free(candidate):
                return candidate
    return port


def distributed_url(job_id: Optional[str] = None, host: str = "127.0.0.1", **kwargs: Any) -> str:
    """``tcp://host:port`` for Detectron2's ``launch(..., dist_url=...)``; see distributed_port."""
    return f"tcp://{host}:{distributed_port(job_id, **kwargs)}"
