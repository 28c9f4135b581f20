"""Trial fan-out through submitit: debug, local processes and a real (localhost) Slurm cluster."""

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import cloudpickle
import pytest
from search_testing import dead_pid, peak_overlap
from submitit.core.utils import cloudpickle_dump

from paploss.search.launchers import (
    CheckpointableTrial,
    LaunchError,
    TrialLauncher,
    check_launcher,
    error_summary,
    make_executor,
)
from paploss.search.trials import runner as trial_module
from paploss.utils.jobs import current_job_id, distributed_port, distributed_url

# Jobs unpickle the trial function in a fresh interpreter where this test module is not
# importable: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def counting_trial(spec: Dict[str, Any]) -> Dict[str, Any]:
    """A small idempotent trial: counts ``steps`` steps, checkpointing after each one.

    Writes into ``spec["folder"]``: ``checkpoint.json`` (steps done), ``starts.jsonl`` (one line
    per (re)start: the step it resumed from) and ``result.json`` (the final result, returned
    as-is by any later call).
    """
    folder = Path(spec["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    result_file = folder / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    checkpoint = folder / "checkpoint.json"
    step = json.loads(checkpoint.read_text())["step"] if checkpoint.exists() else 0
    with open(folder / "starts.jsonl", "a") as f:
        start = {
            "step": step,
            "time": time.time(),
            "pid": os.getpid(),
            "restarts": os.environ.get("SLURM_RESTART_COUNT"),
        }
        f.write(json.dumps(start) + "\n")
    if spec.get("fail"):
        raise ValueError(spec["fail"])
    if spec.get("warn"):
        print(spec["warn"], file=sys.stderr, flush=True)
    if spec.get("crash"):
        os.kill(os.getpid(), signal.SIGKILL)
    while step < spec["steps"]:
        time.sleep(spec.get("sleep_s", 0.0))
        step += 1
        tmp = checkpoint.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": step}))
        tmp.replace(checkpoint)
    result = {"value": spec["value"], "steps": step, "end": time.time(), "port": distributed_port()}
    result_file.write_text(json.dumps(result))
    return result


def _specs(root: Path, n: int, **common: Any) -> List[Dict[str, Any]]:
    return [{"folder": str(root / f"trial{i}"), "value": i * 10, **common} for i in range(n)]


def _starts(spec: Dict[str, Any]) -> List[Dict[str, Any]]:
    lines = (Path(spec["folder"]) / "starts.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


# ------------------------------------------------------------------------------ no scheduler


def test_debug_round(tmp_path: Path) -> None:
    launcher = TrialLauncher("debug", tmp_path / "jobs")
    specs = _specs(tmp_path, 3, steps=2)
    specs[1]["fail"] = "diverging on purpose"
    handles = launcher.submit(counting_trial, specs)
    progress = []
    outcomes = launcher.wait(handles, callback=lambda o, k, n: progress.append((o.index, k, n)))

    assert [o.ok for o in outcomes] == [True, False, True]
    assert [o.result["value"] for o in outcomes if o.ok] == [0, 20]
    assert outcomes[1].message == "ValueError: diverging on purpose"
    assert [(k, n) for _, k, n in progress] == [(1, 3), (2, 3), (3, 3)]
    # Idempotent: running the same round again returns the stored results without recounting.
    again = launcher.wait(launcher.submit(counting_trial, [specs[0]]))
    assert again[0].result == outcomes[0].result
    assert len(_starts(specs[0])) == 1
    with pytest.raises(ValueError, match="cannot be re-attached"):
        launcher.attach([handles[0].job_id])


def test_local_round_runs_two_at_a_time(tmp_path: Path) -> None:
    launcher = TrialLauncher("local", tmp_path / "jobs", parallel=2, poll_interval_s=0.2)
    specs = _specs(tmp_path, 3, steps=4, sleep_s=0.25)
    handles = launcher.submit(counting_trial, specs)
    assert [h.status for h in handles] == ["submitted", "submitted", "waiting"]

    outcomes = launcher.wait(handles, timeout_s=90)
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert [o.result["value"] for o in outcomes] == [0, 10, 20]
    assert len({h.job_id for h in handles}) == 3
    # The third trial started only after one of the first two had finished.
    first_end = min(outcomes[0].result["end"], outcomes[1].result["end"])
    assert _starts(specs[2])[0]["time"] >= first_end - 0.05


def test_local_crash_is_reported(tmp_path: Path) -> None:
    launcher = TrialLauncher("local", tmp_path / "jobs", poll_interval_s=0.2)
    specs = _specs(tmp_path, 1, crash=True, warn="UserWarning: torch.meshgrid: an unrelated line")
    (outcome,) = launcher.wait(launcher.submit(counting_trial, specs))
    assert not outcome.ok
    # The one-line reason is the cause, not the last line of the job's log ...
    assert outcome.message == f"job {outcome.job_id} ended without a result (process ended)"
    # ... which the full report still shows.
    assert "torch.meshgrid: an unrelated line" in outcome.error


def test_error_summary() -> None:
    traceback = (
        "Traceback (most recent call last):\n"
        '  File "trial.py", line 3, in run\n'
        "    train()\n"
        "    ^^^^^^^\n"
        "FloatingPointError: Loss became infinite or NaN at iteration=4!\n"
    )
    assert (
        error_summary(traceback)
        == "FloatingPointError: Loss became infinite or NaN at iteration=4!"
    )
    report = "job 12 ended without a result (OUT_OF_MEMORY)\n--- end of 12_0_log.err ---\nwarning"
    assert error_summary(report) == "job 12 ended without a result (OUT_OF_MEMORY)"
    assert error_summary("") == ""


def test_local_reattach(tmp_path: Path) -> None:
    specs = _specs(tmp_path, 2, steps=4, sleep_s=0.25)
    launcher = TrialLauncher("local", tmp_path / "jobs", parallel=2)
    job_ids = [h.job_id for h in launcher.submit(counting_trial, specs)]
    del launcher

    resumed = TrialLauncher("local", tmp_path / "jobs", poll_interval_s=0.2)
    outcomes = resumed.wait(resumed.attach(job_ids + ["999999999"]), timeout_s=60)
    assert [o.ok for o in outcomes] == [True, True, False], [o.error for o in outcomes]
    assert [o.result["value"] for o in outcomes[:2]] == [0, 10]


def test_parallel_counts_reattached_jobs(tmp_path: Path) -> None:
    # Two jobs start; their launcher goes away (a killed controller) and a new one re-attaches
    # them, then submits two more trials: with parallel=2 those wait for free slots.
    specs = _specs(tmp_path, 4, steps=6, sleep_s=0.25)
    first = TrialLauncher("local", tmp_path / "jobs", parallel=2)
    job_ids = [h.job_id for h in first.submit(counting_trial, specs[:2])]
    del first

    resumed = TrialLauncher("local", tmp_path / "jobs", parallel=2, poll_interval_s=0.1)
    attached = resumed.attach(job_ids)
    new = resumed.submit(counting_trial, specs[2:])
    assert [h.status for h in new] == ["waiting", "waiting"]
    assert resumed.running_jobs() == 2
    outcomes = resumed.wait(attached + new, timeout_s=90)
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    intervals = [(_starts(spec)[0]["time"], o.result["end"]) for spec, o in zip(specs, outcomes)]
    assert peak_overlap(intervals) == 2, intervals


def test_local_result_from_before_the_submission_is_ignored(tmp_path: Path) -> None:
    # Local job ids are process ids, which come back: a result file left under a job's id before
    # the job was submitted is an earlier job's.
    launcher = TrialLauncher("local", tmp_path / "jobs", poll_interval_s=0.1)
    pid = dead_pid()
    planted = launcher.folder / f"{pid}_0_result.pkl"
    cloudpickle_dump(("success", {"value": "of another job"}), planted)
    an_hour_ago = time.time() - 3600
    os.utime(planted, (an_hour_ago, an_hour_ago))

    (outcome,) = launcher.wait(launcher.attach([str(pid)], submitted_at=[time.time() - 60]))
    assert not outcome.ok and outcome.message.endswith("ended without a result (process ended)")
    # Without a submission time the file is read: whose result it is, the caller checks (the
    # search controller compares trial ids and spec digests).
    (outcome,) = launcher.wait(launcher.attach([str(pid)]))
    assert outcome.ok and outcome.result == {"value": "of another job"}


def test_make_executor_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown launcher kind"):
        make_executor("cloud", tmp_path)
    local = make_executor("local", tmp_path, timeout_min=30, setup=["export A=1"])
    assert local.parameters["timeout_min"] == 30


def test_distributed_port() -> None:
    ports = [distributed_port(f"5000_{task}", check_free=False) for task in range(8)]
    assert len(set(ports)) == 8 and all(20000 <= p < 40000 for p in ports)
    assert distributed_port("5000_3", check_free=False) == ports[3]
    assert distributed_port("5001_0", check_free=False) not in ports
    assert distributed_url("77_1").startswith("tcp://127.0.0.1:")


def test_job_id_is_the_innermost_job_and_gives_the_port(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SUBMITIT_DEBUG_JOB_ID", "SUBMITIT_LOCAL_JOB_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    assert current_job_id() is None

    monkeypatch.setenv("SLURM_JOB_ID", "900")
    assert current_job_id() == "900"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "899")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert current_job_id() == "899_1"
    # A local trial of a controller that runs inside a Slurm allocation: the local job.
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "4242")
    assert current_job_id() == "4242"
    monkeypatch.setenv("SUBMITIT_DEBUG_JOB_ID", "debug-1")
    assert current_job_id() == "debug-1"
    monkeypatch.delenv("SUBMITIT_DEBUG_JOB_ID")

    # The port comes from the same id that the trial logs.
    assert distributed_port(check_free=False) == distributed_port("4242", check_free=False)
    assert trial_module.current_job_id is current_job_id


def test_check_launcher_without_slurm_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_launcher("local")
    check_launcher("debug")
    with pytest.raises(ValueError, match="unknown launcher kind"):
        check_launcher("cloud")
    monkeypatch.setenv("PATH", str(tmp_path))  # no Slurm tools on it
    start = time.monotonic()
    with pytest.raises(LaunchError, match="sbatch, srun, squeue, scontrol not found"):
        check_launcher("slurm")
    assert time.monotonic() - start < 1.0


def test_checkpoint_resubmits_the_same_trial(tmp_path: Path) -> None:
    trial = CheckpointableTrial(counting_trial, _specs(tmp_path, 1, steps=1)[0])
    resubmitted = trial.checkpoint()
    assert resubmitted.function.spec == trial.spec and resubmitted.function.requeues == 1
    assert resubmitted.result()["steps"] == 1


# ------------------------------------------------------------------------------ Slurm


def _slurm_launcher(folder: Path, **kwargs: Any) -> TrialLauncher:
    options = dict(
        timeout_min=5,
        cpus_per_task=1,
        mem_gb=1,
        poll_interval_s=0.3,
        scheduler_poll_s=0.5,
        result_grace_s=2.0,
    )
    options.update(kwargs)
    return TrialLauncher("slurm", folder, **options)


@pytest.mark.slurm
def test_slurm_array_round(slurm_cluster, tmp_path: Path) -> None:
    launcher = _slurm_launcher(tmp_path / "jobs", job_name="paploss-test")
    specs = _specs(tmp_path, 3, steps=2, sleep_s=0.1)
    handles = launcher.submit(counting_trial, specs)
    array_id = handles[0].job_id.split("_")[0]
    assert [h.job_id for h in handles] == [f"{array_id}_{i}" for i in range(3)]

    progress = []
    outcomes = launcher.wait(handles, callback=lambda o, k, n: progress.append(k), timeout_s=120)
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert [o.result["value"] for o in outcomes] == [0, 10, 20]
    assert progress == [1, 2, 3]
    assert all(20000 <= o.result["port"] < 40000 for o in outcomes)
    # It ran as one Slurm job array with the requested options.
    script = (tmp_path / "jobs" / f"{array_id}_submission.sh").read_text()
    for flag in ("--array=0-2%3", "--job-name=paploss-test", "--time=5", "--mem=1G", "--requeue"):
        assert flag in script


@pytest.mark.slurm
def test_slurm_raising_and_killed_tasks_fail(slurm_cluster, tmp_path: Path) -> None:
    launcher = _slurm_launcher(tmp_path / "jobs")
    specs = _specs(tmp_path, 2, steps=1)
    specs[0]["fail"] = "loss exploded in trial 0"
    specs[1]["crash"] = True
    outcomes = launcher.wait(launcher.submit(counting_trial, specs), timeout_s=120)

    assert not outcomes[0].ok and outcomes[0].message == "ValueError: loss exploded in trial 0"
    assert "Traceback" in outcomes[0].error
    assert not outcomes[1].ok
    assert outcomes[1].message.startswith(f"job {outcomes[1].job_id} ended without a result")
    assert "FAILED" in outcomes[1].message or "CANCELLED" in outcomes[1].message


@pytest.mark.slurm
def test_slurm_interrupted_tasks_are_requeued_and_resume(slurm_cluster, tmp_path: Path) -> None:
    launcher = _slurm_launcher(tmp_path / "jobs")
    specs = _specs(tmp_path, 2, steps=12, sleep_s=0.5)
    handles = launcher.submit(counting_trial, specs)
    checkpoints = [Path(spec["folder"]) / "checkpoint.json" for spec in specs]
    _wait_for(
        lambda: all(c.exists() and json.loads(c.read_text())["step"] >= 2 for c in checkpoints),
        60,
        "both array tasks to checkpoint twice",
    )
    # Task 0 gets what a preemption sends (SIGTERM, then the checkpoint signal), task 1 the
    # signal that precedes its time limit. submitit checkpoints both and requeues them with
    # `scontrol requeue` (with a limit under 10 minutes it counts either signal as a time-out).
    handles[0].job._interrupt()
    handles[1].job._interrupt(timeout=True)

    outcomes = launcher.wait(handles, timeout_s=120)
    for spec, handle, outcome in zip(specs, handles, outcomes):
        assert outcome.ok, outcome.error
        assert outcome.result["steps"] == 12
        starts = _starts(spec)
        assert len(starts) == 2
        assert starts[0]["step"] == 0 and starts[1]["step"] >= 2  # resumed from its checkpoint
        assert starts[1]["restarts"] == "1"
        assert handle.job.submission().function.requeues == 1


@pytest.mark.slurm
def test_slurm_reattach_after_restart(slurm_cluster, tmp_path: Path) -> None:
    folder = tmp_path / "jobs"
    specs = _specs(tmp_path, 2, steps=4, sleep_s=0.5)
    launcher = _slurm_launcher(folder)
    job_ids = [h.job_id for h in launcher.submit(counting_trial, specs)]
    del launcher  # the controller goes away; only the job ids survive (in its journal)

    resumed = _slurm_launcher(folder, result_grace_s=0.5)
    gone = str(int(job_ids[0].split("_")[0]) + 100000)  # never submitted: no result, unknown
    handles = resumed.attach(job_ids + [gone])
    outcomes = resumed.wait(handles, timeout_s=120)
    assert [o.ok for o in outcomes] == [True, True, False]
    assert [o.result["value"] for o in outcomes[:2]] == [0, 10]
    assert "no longer known to Slurm" in outcomes[2].error
    assert all(len(_starts(spec)) == 1 for spec in specs)


@pytest.mark.slurm
def test_check_launcher_without_an_answering_cluster_fails_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slurm installed, no cluster behind the configuration: a controller that does not answer,
    # or a configuration file that does not exist (the Slurm tools retry that for a minute).
    conf = tmp_path / "slurm.conf"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conf.write_text(
        "ClusterName=nowhere\nSlurmctldHost=localhost(127.0.0.1)\n"
        f"SlurmctldPort={port}\nAuthType=auth/munge\n"
        "NodeName=localhost CPUs=1 State=UNKNOWN\nPartitionName=p Nodes=localhost State=UP\n"
    )
    for path, message in ((conf, "no Slurm controller answers"), (tmp_path / "no.conf", "exist")):
        monkeypatch.setenv("SLURM_CONF", str(path))
        start = time.monotonic()
        with pytest.raises(LaunchError, match=message):
            check_launcher("slurm", timeout_s=15)
        assert time.monotonic() - start < 16


@pytest.mark.slurm
def test_slurm_rejected_submission_is_a_launch_error(slurm_cluster, tmp_path: Path) -> None:
    launcher = _slurm_launcher(tmp_path / "jobs", partition="no-such-partition")
    with pytest.raises(LaunchError, match="(?i)partition"):
        launcher.submit(counting_trial, _specs(tmp_path, 2, steps=1))
