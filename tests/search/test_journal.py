"""Search journal: round trips, refusal of foreign or damaged files, crash consistency."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from paploss.search.journal import (
    FINAL_TRIAL_STATUSES,
    JOURNAL_MAGIC,
    JournalError,
    NewTrial,
    SearchJournal,
    settings_digest,
)
from paploss.search.proposers import TruncatedNormalPolicy
from paploss.search.settings import PPOConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETTINGS = {"space": {"heads": ["RETINANET"], "dim": 41}, "policy": {"seed": 0, "sigma": 0.2}}
POLICY_STATE = {"round": 0, "logit_mean": [0.1, -0.2], "rng": {"state": 2**100 + 7}}


def _new_trial(i, **kwargs):
    return NewTrial(
        theta=[0.1 * i, 0.5],
        overrides={"MODEL.PAPLOSS.RETINANET.GRAD_SCALE": 1.0 + i},
        seed=42,
        **kwargs,
    )


def _read_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def test_create_and_round_trip(tmp_path):
    path = str(tmp_path / "search.journal")
    with SearchJournal.create(path, SETTINGS) as journal:
        assert journal.settings == SETTINGS
        assert journal.settings_sha256 == settings_digest(SETTINGS)
        assert journal.next_round_index() == 0
        assert journal.latest_policy_state() is None and journal.best_trial() is None
        indices = journal.begin_round(0, POLICY_STATE, [_new_trial(i) for i in range(3)])
        assert indices == [0, 1, 2]
        assert journal.add_trials(0, [_new_trial(3, role="mean")]) == [3]
        journal.update_trial(0, 0, status="running", attempts=1, job_id="123_0", started_at=1.5)
        journal.update_trial(0, 0, status="done", reward=0.25, metrics={"AP": 25.0}, finished_at=9)
        journal.update_trial(0, 1, status="diverged", reward=-1.0, metrics={"loss": float("nan")})
        journal.update_trial(0, 2, status="failed", attempts=3, error="Traceback ...")
        journal.update_trial(0, 3, status="done", reward=0.3)
        with pytest.raises(JournalError, match="round 0 is still open"):
            journal.begin_round(1, POLICY_STATE)
        journal.end_round(0, {"round": 1}, update_stats={"mean_shift_l2": 0.01})

    with SearchJournal.open(path, SETTINGS) as journal:
        trial = journal.trial(0, 0)
        assert trial.theta == [0.0, 0.5]
        assert trial.overrides == {"MODEL.PAPLOSS.RETINANET.GRAD_SCALE": 1.0}
        assert (trial.status, trial.reward, trial.metrics) == ("done", 0.25, {"AP": 25.0})
        assert (trial.attempts, trial.job_id, trial.started_at, trial.finished_at) == (
            1,
            "123_0",
            1.5,
            9.0,
        )
        assert trial.is_final and trial.created_at > 0
        assert journal.trial(0, 2).error == "Traceback ..."
        assert str(journal.trial(0, 1).metrics["loss"]) == "nan"
        assert [t.index for t in journal.trials(status="done")] == [0, 3]
        assert [t.index for t in journal.trials(round=0, status=["failed", "diverged"])] == [1, 2]
        assert journal.trials(round=5) == []
        assert journal.best_trial().index == 3
        assert journal.best_trial(role="sample").index == 0
        (round_record,) = journal.rounds()
        assert round_record.status == "closed"
        assert round_record.policy_state_start == POLICY_STATE  # big ints survive
        assert round_record.update_stats == {"mean_shift_l2": 0.01}
        assert journal.latest_policy_state() == {"round": 1}
        assert journal.open_round() is None and journal.next_round_index() == 1
        with pytest.raises(JournalError, match="closed"):
            journal.update_trial(0, 0, status="running")


def test_open_round_is_what_a_resume_continues(tmp_path):
    path = str(tmp_path / "search.journal")
    with SearchJournal.create(path, SETTINGS) as journal:
        journal.begin_round(0, {"round": 0}, [_new_trial(0)])
        journal.update_trial(0, 0, status="done", reward=1.0)
        journal.end_round(0, {"round": 1})
        journal.begin_round(1, {"round": 1, "sampled": True}, [_new_trial(0), _new_trial(1)])
        journal.update_trial(1, 0, status="running")
        with pytest.raises(JournalError, match=r"unfinished trials: 0 \(running\), 1 \(pending\)"):
            journal.end_round(1, {"round": 2})
    with SearchJournal.open(path) as journal:
        assert journal.open_round().round == 1
        assert journal.latest_policy_state() == {"round": 1, "sampled": True}
        with pytest.raises(JournalError, match="next round is 2"):
            journal.begin_round(3, {})


def test_input_validation(tmp_path):
    with SearchJournal.create(str(tmp_path / "j"), SETTINGS) as journal:
        journal.begin_round(0, {}, [_new_trial(0)])
        with pytest.raises(ValueError, match="status"):
            journal.update_trial(0, 0, status="finished")
        with pytest.raises(ValueError, match="finite"):
            journal.update_trial(0, 0, reward=float("inf"))
        with pytest.raises(ValueError, match="attempts"):
            journal.update_trial(0, 0, attempts=-1)
        with pytest.raises(KeyError):
            journal.update_trial(0, 7, status="done")
        with pytest.raises(ValueError, match="role"):
            journal.add_trials(0, [_new_trial(1, role="baseline")])
        with pytest.raises(ValueError, match="JSON"):
            journal.add_trials(0, [NewTrial(theta=[0.5], overrides={"k": object()}, seed=0)])
        # A failed call leaves no partial change behind.
        assert [t.index for t in journal.trials()] == [0]
        assert journal.trial(0, 0).status == "pending"
    with pytest.raises(ValueError, match="JSON"):
        SearchJournal.create(str(tmp_path / "k"), {"bad": float("nan")})


def test_read_only_journal_refuses_writes(tmp_path):
    path = str(tmp_path / "j")
    SearchJournal.create(path, SETTINGS).close()
    with SearchJournal.open(path, read_only=True) as journal:
        assert journal.read_only and journal.rounds() == []
        with pytest.raises(JournalError, match="read-only"):
            journal.begin_round(0, {})


def test_create_never_overwrites(tmp_path):
    path = tmp_path / "j"
    path.write_bytes(b"precious")
    with pytest.raises(JournalError, match="already exists"):
        SearchJournal.create(str(path), SETTINGS)
    assert path.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["j"]  # no temporary file left behind


def test_open_or_create(tmp_path):
    path = str(tmp_path / "j")
    SearchJournal.open_or_create(path, SETTINGS).close()
    with SearchJournal.open_or_create(path, SETTINGS) as journal:
        assert journal.settings == SETTINGS


def _foreign_db(path):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE foo (a INTEGER)")
    conn.execute("INSERT INTO foo VALUES (1)")
    conn.commit()
    conn.close()


def _wrong_magic(path):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('magic', 'some-other-tool')")
    conn.commit()
    conn.close()


def _future_schema(path):
    SearchJournal.create(path, SETTINGS).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()


def _random_bytes(path):
    with open(path, "wb") as handle:
        handle.write(os.urandom(8192))


def _garbage_after_header(path):
    with open(path, "wb") as handle:
        handle.write(b"SQLite format 3\x00" + os.urandom(8192))


def _damaged_pages(path):
    with SearchJournal.create(path, SETTINGS) as journal:
        journal.begin_round(0, {}, [_new_trial(i) for i in range(50)])
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.seek(4096)  # the second page onwards: table b-trees
        handle.write(b"\xff" * (size - 4096))


def _empty(path):
    open(path, "wb").close()


@pytest.mark.parametrize(
    "make, message",
    [
        (_random_bytes, "not an SQLite database"),
        (_garbage_after_header, "corrupt"),
        (_damaged_pages, "corrupt"),
        (_empty, "empty file"),
        (_foreign_db, "not a paploss search journal .no 'meta' table"),
        (_wrong_magic, "magic 'some-other-tool'"),
        (_future_schema, "schema version '99' is not supported"),
    ],
)
def test_unusable_files_raise_and_stay_untouched(tmp_path, make, message):
    path = str(tmp_path / "search.journal")
    make(path)
    before = _read_bytes(path)
    for read_only in (False, True):
        with pytest.raises(JournalError, match=message) as info:
            SearchJournal.open(path, SETTINGS, read_only=read_only)
        assert path in str(info.value)
        with pytest.raises(JournalError):
            SearchJournal.open_or_create(path, SETTINGS)
    assert _read_bytes(path) == before
    assert os.listdir(tmp_path) == ["search.journal"]


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(JournalError, match="no such journal file"):
        SearchJournal.open(str(tmp_path / "absent"))
    with pytest.raises(JournalError, match="not a regular file"):
        SearchJournal.open(str(tmp_path))
    assert not os.path.exists(tmp_path / "absent")


def test_settings_mismatch_raises_and_leaves_file(tmp_path):
    path = str(tmp_path / "j")
    SearchJournal.create(path, SETTINGS).close()
    before = _read_bytes(path)
    other = json.loads(json.dumps(SETTINGS))
    other["policy"]["seed"] = 1
    other["launcher"] = "slurm"
    with pytest.raises(JournalError, match="differing keys: launcher, policy.seed"):
        SearchJournal.open(path, other)
    # Key order does not matter.
    reordered = {"policy": {"sigma": 0.2, "seed": 0}, "space": SETTINGS["space"]}
    SearchJournal.open(path, reordered).close()
    assert _read_bytes(path) == before


_WRITER = textwrap.dedent("""
    import sys
    from paploss.search.journal import NewTrial, SearchJournal

    path = sys.argv[1]
    journal = SearchJournal.open_or_create(path, {"test": "crash"})
    print("ready", flush=True)
    while True:
        current = journal.open_round()
        if current is None:
            r = journal.next_round_index()
            trials = [NewTrial(theta=[r, i], overrides={}, seed=r) for i in range(8)]
            journal.begin_round(r, {"round": r}, trials)
        else:
            r = current.round
        for trial in journal.trials(round=r, status=["pending", "running"]):
            journal.update_trial(r, trial.index, status="running", attempts=trial.attempts + 1)
            journal.update_trial(r, trial.index, status="done", reward=r + trial.index / 10,
                                 metrics={"AP": r}, finished_at=1.0)
        journal.end_round(r, {"round": r + 1}, {"n": 8})
    """)


def _open_after_crash(path, read_only):
    """Open read-only when possible; an interrupted write needs one writable open to recover."""
    if read_only:
        try:
            return SearchJournal.open(path, {"test": "crash"}, read_only=True)
        except JournalError as exc:
            assert "interrupted write" in str(exc)
    return SearchJournal.open(path, {"test": "crash"})


def test_sigkill_mid_write_leaves_consistent_journal(tmp_path):
    """Kill a writer at random moments, five times in a row; every restart resumes cleanly."""
    path = str(tmp_path / "search.journal")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rounds_seen = []
    for attempt in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, path], stdout=subprocess.PIPE, env=env, text=True
        )
        try:
            assert child.stdout.readline().strip() == "ready"
            time.sleep(0.05 + 0.07 * attempt)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()

        with _open_after_crash(path, read_only=attempt % 2 == 1) as journal:
            rounds = journal.rounds()
            assert [r.round for r in rounds] == list(range(len(rounds)))
            assert sum(r.status == "open" for r in rounds) <= 1
            for record in rounds:
                trials = journal.trials(round=record.round)
                assert [t.index for t in trials] == list(range(8))  # begin_round is atomic
                for trial in trials:
                    assert (trial.status == "done") == (trial.reward is not None)
                    assert (trial.status == "done") == (trial.metrics == {"AP": record.round})
                    assert trial.status in ("pending", "running", "done")
                if record.status == "closed":
                    assert all(t.status in FINAL_TRIAL_STATUSES for t in trials)
                    assert record.policy_state_end == {"round": record.round + 1}
            rounds_seen.append(len(rounds))
    assert rounds_seen == sorted(rounds_seen) and rounds_seen[-1] >= 2
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("SELECT value FROM meta WHERE key = 'magic'").fetchone() == (JOURNAL_MAGIC,)
    conn.close()


_HOLDER = textwrap.dedent("""
    import sqlite3, sys, time

    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("PRAGMA cache_size = -16")  # tiny page cache: changes spill into the file
    conn.execute("BEGIN IMMEDIATE")
    for i in range(1, 20000):
        conn.execute(
            "INSERT INTO trials (round, idx, role, theta, overrides, seed, status, metrics, "
            "attempts, created_at) VALUES (0, ?, 'sample', ?, '{}', 0, 'pending', '{}', 0, 0)",
            (i, "[" + "0.5," * 50 + "0.5]"),
        )
    conn.execute("UPDATE meta SET value = 'overwritten' WHERE key = 'magic'")
    print("holding", flush=True)
    time.sleep(60)
    """)


def test_interrupted_transaction_is_rolled_back_on_open(tmp_path):
    """A writer killed inside a transaction that already spilled pages into the file."""
    path = str(tmp_path / "search.journal")
    with SearchJournal.create(path, SETTINGS) as journal:
        journal.begin_round(0, {"round": 0}, [_new_trial(0)])
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, path], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "holding"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert os.path.exists(path + "-journal")  # a hot journal: the file itself is mid-change
    before = _read_bytes(path)
    with pytest.raises(JournalError, match="interrupted write"):
        SearchJournal.open(path, SETTINGS, read_only=True)
    assert _read_bytes(path) == before
    with SearchJournal.open(path, SETTINGS) as journal:
        assert [t.index for t in journal.trials()] == [0]
        assert journal.open_round().policy_state_start == {"round": 0}
    assert not os.path.exists(path + "-journal")
    with SearchJournal.open(path, SETTINGS, read_only=True) as journal:
        assert len(journal.trials()) == 1


def test_policy_state_stored_in_journal_resumes_identically(tmp_path):
    """A round recorded in the journal and resumed from it gives the uninterrupted result."""
    target = np.linspace(0.3, 0.7, 6)

    def reward(thetas):
        return -np.sum((thetas - target) ** 2, axis=1)

    def make_policy():
        return TruncatedNormalPolicy(np.full(6, 0.5), ppo=PPOConfig(num_steps=20), seed=5)

    uninterrupted = make_policy()
    for _ in range(3):
        thetas = uninterrupted.sample(4)
        uninterrupted.update(thetas, reward(thetas))

    path = str(tmp_path / "j")
    policy = make_policy()
    with SearchJournal.create(path, SETTINGS) as journal:
        for r in range(2):
            thetas = policy.sample(4)
            trials = [NewTrial(theta=t.tolist(), overrides={}, seed=r) for t in thetas]
            journal.begin_round(r, policy.state_dict(), trials)
            if r == 1:
                break  # "killed" while round 1 runs
            for i, value in enumerate(reward(thetas)):
                journal.update_trial(r, i, status="done", reward=float(value))
            policy.update(thetas, reward(thetas))
            journal.end_round(r, policy.state_dict())

    resumed = make_policy()
    with SearchJournal.open(path, SETTINGS) as journal:
        resumed.load_state_dict(journal.latest_policy_state())
        current = journal.open_round()
        thetas = np.array([t.theta for t in journal.trials(round=current.round)])
        for trial, value in zip(journal.trials(round=current.round), reward(thetas)):
            journal.update_trial(current.round, trial.index, status="done", reward=float(value))
        resumed.update(thetas, reward(thetas))
        journal.end_round(current.round, resumed.state_dict())
    thetas = resumed.sample(4)
    resumed.update(thetas, reward(thetas))
    np.testing.assert_array_equal(resumed.mean, uninterrupted.mean)
    assert resumed.state_dict() == uninterrupted.state_dict()
