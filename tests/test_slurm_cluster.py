"""The ``slurm_cluster`` fixture stops what it started, and leaves a running cluster alone."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Dict

import pytest

from tests.slurm_cluster import REPO_ROOT, SLURM_LOCAL, _free_port_pair

# A test session of its own: it uses the fixture, records the daemons' process ids, and leaves a
# job running for the fixture to clean up.
_SESSION_TEST = """
import json, os, subprocess, time
from pathlib import Path

def test_uses_the_cluster(slurm_cluster):
    folder = Path(os.environ["PAPLOSS_SLURM_DIR"])
    pids = {
        name: int((folder / path).read_text())
        for name, path in (("munged", "munge/munged.pid"), ("slurmctld", "run/slurmctld.pid"),
                           ("slurmd", "run/slurmd.pid"))
    }
    job = subprocess.run(
        ["sbatch", "--parsable", "--wrap", f"sleep {os.environ['JOB_MARKER']}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    for _ in range(120):
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                               text=True).stdout.strip()
        if state == "RUNNING":
            break
        time.sleep(0.5)
    Path(os.environ["REPORT"]).write_text(json.dumps(
        {"local": slurm_cluster.local, "pids": pids, "state": state}))
"""


def _alive(pid: int, name: str) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == name
    except OSError:
        return False


def _processes_named(marker: str) -> list:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _run_session(folder: Path, env: Dict[str, str]) -> Dict:
    test_file = folder / "test_session.py"
    test_file.write_text(_SESSION_TEST)
    report = folder / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.slurm_cluster",
         "-q", str(test_file), "--rootdir", str(folder)],
        env={**env, "REPORT": str(report), "PYTHONPATH": str(REPO_ROOT)},
        cwd=folder, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(report.read_text())


@pytest.mark.slurm
def test_fixture_stops_the_daemons_it_started_and_keeps_a_running_cluster(tmp_path: Path) -> None:
    # A cluster folder of its own (the munge socket path must stay short) on free ports.
    cluster_dir = Path(tempfile.mkdtemp(prefix="pl-slurm-"))
    marker = f"300.{uuid.uuid4().int % 10**9:09d}"  # the job sleeps this long: its command line
    env = {key: value for key, value in os.environ.items() if key != "SLURM_CONF"}
    env.update(
        PAPLOSS_SLURM_DIR=str(cluster_dir),
        PAPLOSS_SLURM_PORT=str(_free_port_pair()),
        JOB_MARKER=marker,
    )
    conf = (
        subprocess.run(["bash", str(SLURM_LOCAL), "env"], env=env, capture_output=True, text=True)
        .stdout.strip()
        .split("=", 1)[1]
    )
    try:
        # No cluster answers: the session starts one, and stops it (and its job) at its end.
        report = _run_session(tmp_path, env)
        assert report["local"] and report["state"] == "RUNNING", report
        assert sorted(report["pids"]) == ["munged", "slurmctld", "slurmd"]
        assert not [name for name, pid in report["pids"].items() if _alive(pid, name)]
        assert not _processes_named(marker), "the session's job still runs"

        # A cluster that runs already (here: started by hand) stays up after a session.
        started = subprocess.run(
            ["bash", str(SLURM_LOCAL), "start"], env=env, capture_output=True, text=True
        )
        assert started.returncode == 0, started.stderr
        assert "started: munged slurmctld slurmd" in started.stdout
        report = _run_session(tmp_path, {**env, "SLURM_CONF": conf})
        assert not report["local"]
        assert all(_alive(pid, name) for name, pid in report["pids"].items()), report
    finally:
        if Path(conf).is_file():  # jobs left by a failed check
            subprocess.run(["scancel", "--full", "--user", str(os.getuid())],
                           env={**env, "SLURM_CONF": conf}, capture_output=True, timeout=30)  # fmt: skip
        subprocess.run(["bash", str(SLURM_LOCAL), "stop"], env=env, capture_output=True)
        for pid in _processes_named(marker):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(cluster_dir, ignore_errors=True)
