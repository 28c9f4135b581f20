"""Durable journal of a loss search: settings, rounds, trials and policy states in one SQLite file.

The search controller is the only writer. Every change is one SQLite transaction with
``synchronous=FULL`` and a rollback journal, so a process killed at any moment (SIGKILL included)
leaves a file that opens to the state of the last committed change. A rollback journal is used
rather than WAL because WAL needs shared memory between processes, which network file systems
(where search outputs usually live on a cluster) do not provide reliably.

Layout (schema version 1):

* ``meta``: key/value pairs. ``magic`` identifies a paploss search journal, ``schema_version``
  the layout, ``settings`` the canonical JSON of the search settings and ``settings_sha256`` its
  digest, so a resume with different settings is detected.
* ``rounds``: one row per round: ``open`` while its trials run, ``closed`` once the policy was
  updated. ``policy_state_start`` is the state of the search method (the policy of ``ppo``, any
  :class:`~paploss.search.proposers.Proposer`'s ``state_dict``) recorded when the round began (a
  controller saves it right after proposing, so the state includes the advanced random
  generator), ``policy_state_end`` the state after the update, plus the update statistics and
  timings.
* ``trials``: one row per candidate, keyed by ``(round, idx)``: θ, the config overrides, the seed,
  a role (``sample`` or ``mean``: the policy mean scored as a baseline), the status, reward,
  metrics, attempts, the last error, the scheduler job id, the trial folder and timings.

Opening never writes before the file has been recognised: a missing, empty, non-SQLite, corrupt or
foreign file, a wrong magic, an unknown schema version or different settings raise
:class:`JournalError` naming the file and the problem, and the file is left as it was. ``create``
builds the journal in a temporary file next to the target and links it into place, so it never
overwrites an existing file and never leaves a half-initialised journal behind.

JSON columns use Python's ``json`` module; ``metrics`` may contain NaN or infinities (written as
``NaN``/``Infinity``), every other JSON column must be strictly finite.

A writer killed inside a transaction leaves a hot rollback journal next to the file; the next
writable open rolls it back (SQLite's own recovery). A read-only open cannot, and raises
:class:`JournalError` saying so until the file has been opened writable once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sqlite3
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

from paploss.utils.io import fsync_directory, fsync_file
from paploss.utils.validation import check_int

__all__ = [
    "JOURNAL_MAGIC",
    "SCHEMA_VERSION",
    "TRIAL_STATUSES",
    "FINAL_TRIAL_STATUSES",
    "SCORED_TRIAL_STATUSES",
    "TRIAL_ROLES",
    "JournalError",
    "NewTrial",
    "TrialRecord",
    "RoundRecord",
    "SearchJournal",
    "settings_digest",
]

JOURNAL_MAGIC = "paploss-search-journal"
SCHEMA_VERSION = 1
TRIAL_STATUSES = ("pending", "running", "done", "diverged", "failed", "rejected", "duplicate")
FINAL_TRIAL_STATUSES = ("done", "diverged", "failed", "rejected", "duplicate")
#: Statuses whose reward enters the policy update: trained (done, diverged) or screened (rejected,
#: duplicate; a duplicate once its original's reward is known).
SCORED_TRIAL_STATUSES = ("done", "diverged", "rejected", "duplicate")
#: Roles of a trial: a candidate the method learns from, the method's reference point (e.g. the
#: policy mean), or a retraining of one of the best with another seed (``search.recheck``; a
#: journal created before the role existed never holds one, its settings have no recheck).
TRIAL_ROLES = ("sample", "mean", "recheck")

_SQLITE_HEADER = b"SQLite format 3\x00"
_SQLITE_READONLY_ROLLBACK = getattr(sqlite3, "SQLITE_READONLY_ROLLBACK", 776)
_REQUIRED_TABLES = ("meta", "rounds", "trials")


def _in_list(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


_SCHEMA = f"""
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE rounds (
    round              INTEGER PRIMARY KEY CHECK (round >= 0),
    status             TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    policy_state_start TEXT NOT NULL,
    policy_state_end   TEXT,
    update_stats       TEXT,
    started_at         REAL NOT NULL,
    finished_at        REAL
);
CREATE TABLE trials (
    round       INTEGER NOT NULL REFERENCES rounds (round),
    idx         INTEGER NOT NULL CHECK (idx >= 0),
    role        TEXT NOT NULL CHECK (role IN ({_in_list(TRIAL_ROLES)})),
    theta       TEXT NOT NULL,
    overrides   TEXT NOT NULL,
    seed        INTEGER NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ({_in_list(TRIAL_STATUSES)})),
    reward      REAL,
    metrics     TEXT NOT NULL,
    attempts    INTEGER NOT NULL CHECK (attempts >= 0),
    error       TEXT,
    job_id      TEXT,
    folder      TEXT,
    created_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    PRIMARY KEY (round, idx)
);
CREATE INDEX trials_by_status ON trials (status);
"""


class JournalError(Exception):
    """A journal file cannot be used: not a journal, damaged, incompatible, or misused."""


def _canonical_json(value: Any, *, allow_nan: bool = False) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=allow_nan)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"value is not JSON-serialisable: {exc}") from None


def settings_digest(settings: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of the canonical JSON of ``settings`` (key order does not matter)."""
    return hashlib.sha256(_canonical_json(settings).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class NewTrial:
    """A candidate to add to a round (the journal assigns its index).

    Attributes:
        theta: the candidate's θ values.
        overrides: config overrides (dotted key → plain value) that the trial trains with.
        seed: the trial's random seed (common to the candidates of a round).
        role: ``"sample"`` for a policy sample, ``"mean"`` for the policy mean scored as baseline.
        status: initial status: ``"pending"``, unless screening already decided (``"rejected"``,
            ``"duplicate"``).
        reward: initial reward (e.g. reused from an equivalent candidate for ``"duplicate"``).
        metrics: initial metrics (e.g. screening scores).
        folder: the trial's output folder, when known up front.
    """

    theta: Sequence[float]
    overrides: Mapping[str, Any]
    seed: int
    role: str = "sample"
    status: str = "pending"
    reward: Optional[float] = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    folder: Optional[str] = None


@dataclass(frozen=True)
class TrialRecord:
    """One stored trial (see the module docstring for the meaning of each field)."""

    round: int
    index: int
    role: str
    theta: List[float]
    overrides: Dict[str, Any]
    seed: int
    status: str
    reward: Optional[float]
    metrics: Dict[str, Any]
    attempts: int
    error: Optional[str]
    job_id: Optional[str]
    folder: Optional[str]
    created_at: float
    started_at: Optional[float]
    finished_at: Optional[float]

    @property
    def is_final(self) -> bool:
        """Whether the status is one a round can close with."""
        return self.status in FINAL_TRIAL_STATUSES

    @property
    def is_scored(self) -> bool:
        """Whether its reward enters the policy update (a scored status, and a reward)."""
        return self.status in SCORED_TRIAL_STATUSES and self.reward is not None


@dataclass(frozen=True)
class RoundRecord:
    """One stored round."""

    round: int
    status: str
    policy_state_start: Dict[str, Any]
    policy_state_end: Optional[Dict[str, Any]]
    update_stats: Optional[Dict[str, Any]]
    started_at: float
    finished_at: Optional[float]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


_UNSET: Any = _Unset()


class SearchJournal:
    """A search journal file. Create with :meth:`create`, open with :meth:`open`.

    Use as a context manager (or call :meth:`close`). Methods that write raise
    :class:`JournalError` on a journal opened with ``read_only=True``.
    """

    def __init__(self, path: str, connection: sqlite3.Connection, read_only: bool) -> None:
        """Internal; use :meth:`create` or :meth:`open`."""
        self._path = path
        self._conn = connection
        self._read_only = read_only
        self._lock = threading.RLock()
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        self._settings: Dict[str, Any] = json.loads(meta["settings"])
        self._settings_sha256: str = meta["settings_sha256"]

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path: str, settings: Mapping[str, Any]) -> "SearchJournal":
        """Create a new journal at ``path`` holding ``settings``.

        Args:
            path: file to create; must not exist.
            settings: JSON-able description of the search (space, policy, proxy, launcher...).

        Raises:
            JournalError: if ``path`` already exists (it is never overwritten).
            ValueError: if ``settings`` is not JSON-able.
        """
        path = os.fspath(path)
        settings_json = _canonical_json(dict(settings))
        if os.path.lexists(path):
            raise JournalError(f"{path}: already exists; refusing to overwrite it")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise JournalError(f"{path}: directory {directory} does not exist")
        tmp_path = os.path.join(
            directory, f".{os.path.basename(path)}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        try:
            conn = sqlite3.connect(tmp_path, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=DELETE")
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
                now = repr(time.time())
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("magic", JOURNAL_MAGIC),
                        ("schema_version", str(SCHEMA_VERSION)),
                        ("settings", settings_json),
                        ("settings_sha256", settings_digest(json.loads(settings_json))),
                        ("created_at", now),
                    ],
                )
                conn.execute("COMMIT")
            finally:
                conn.close()
            fsync_file(tmp_path)
            try:
                os.link(tmp_path, path)  # atomic and never replaces an existing file
            except FileExistsError:
                raise JournalError(f"{path}: already exists; refusing to overwrite it") from None
            except OSError:
                # File systems without hard links: rename (checked for existence just before).
                if os.path.lexists(path):
                    raise JournalError(f"{path}: already exists; refusing to overwrite it")
                os.rename(tmp_path, path)
            fsync_directory(directory)
        finally:
            if os.path.lexists(tmp_path):
                os.unlink(tmp_path)
        return cls.open(path)

    @classmethod
    def open(
        cls,
        path: str,
        settings: Optional[Mapping[str, Any]] = None,
        *,
        read_only: bool = False,
    ) -> "SearchJournal":
        """Open an existing journal.

        Args:
            path: the journal file.
            settings: when given, must equal the stored settings (resume with the same search).
            read_only: open without write access (e.g. to report on a running search).

        Raises:
            JournalError: if the file is missing, empty, not SQLite, corrupt, not a paploss search
                journal, of an unknown schema version, or ``settings`` differ. The file is not
                modified in any of these cases.
        """
        path = os.fspath(path)
        _check_sqlite_header(path)
        mode = "ro" if read_only else "rw"
        uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode={mode}"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise JournalError(f"{path}: cannot open as SQLite database: {exc}") from None
        try:
            _validate(path, conn)
            if settings is not None:
                _check_settings(path, conn, settings)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            return cls(path, conn, read_only)
        except BaseException:
            conn.close()
            raise

    @classmethod
    def open_or_create(cls, path: str, settings: Mapping[str, Any]) -> "SearchJournal":
        """Open ``path`` with ``settings`` checked, or create it when it does not exist."""
        if os.path.lexists(os.fspath(path)):
            return cls.open(path, settings)
        return cls.create(path, settings)

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> "SearchJournal":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ properties
    @property
    def path(self) -> str:
        return self._path

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def settings(self) -> Dict[str, Any]:
        """The search settings stored at creation (a copy)."""
        return json.loads(json.dumps(self._settings))

    @property
    def settings_sha256(self) -> str:
        return self._settings_sha256

    # ------------------------------------------------------------------ rounds
    def begin_round(
        self,
        round_index: int,
        policy_state: Mapping[str, Any],
        trials: Sequence[NewTrial] = (),
    ) -> List[int]:
        """Open round ``round_index`` with its policy state and candidates, in one transaction.

        Args:
            round_index: must be the next round (0 for the first) and no round may be open.
            policy_state: JSON-able policy state at the start of the round.
            trials: the round's candidates; indices 0, 1, ... are assigned in order.

        Returns:
            The indices given to ``trials``.
        """
        state_json = _canonical_json(dict(policy_state))
        with self._write() as conn:
            expected = self._next_round_index(conn)
            if round_index != expected:
                raise JournalError(
                    f"{self._path}: cannot begin round {round_index}; the next round is {expected}"
                )
            open_round = conn.execute("SELECT round FROM rounds WHERE status = 'open'").fetchone()
            if open_round is not None:
                raise JournalError(f"{self._path}: round {open_round[0]} is still open")
            conn.execute(
                "INSERT INTO rounds (round, status, policy_state_start, started_at) "
                "VALUES (?, 'open', ?, ?)",
                (round_index, state_json, time.time()),
            )
            return self._insert_trials(conn, round_index, trials)

    def add_trials(self, round_index: int, trials: Sequence[NewTrial]) -> List[int]:
        """Append candidates to the open round ``round_index``; returns their indices."""
        with self._write() as conn:
            self._require_open_round(conn, round_index)
            return self._insert_trials(conn, round_index, trials)

    def end_round(
        self,
        round_index: int,
        policy_state: Mapping[str, Any],
        update_stats: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """Close the open round with the policy state after its update.

        Raises:
            JournalError: if the round is not open or one of its trials is still pending/running.
        """
        state_json = _canonical_json(dict(policy_state))
        stats_json = None if update_stats is None else _canonical_json(dict(update_stats))
        with self._write() as conn:
            self._require_open_round(conn, round_index)
            unfinished = conn.execute(
                f"SELECT idx, status FROM trials WHERE round = ? AND status NOT IN "
                f"({_in_list(FINAL_TRIAL_STATUSES)}) ORDER BY idx",
                (round_index,),
            ).fetchall()
            if unfinished:
                listed = ", ".join(f"{idx} ({status})" for idx, status in unfinished)
                raise JournalError(
                    f"{self._path}: cannot close round {round_index}; unfinished trials: {listed}"
                )
            conn.execute(
                "UPDATE rounds SET status = 'closed', policy_state_end = ?, update_stats = ?, "
                "finished_at = ? WHERE round = ?",
                (state_json, stats_json, time.time(), round_index),
            )

    def rounds(self) -> List[RoundRecord]:
        """All rounds in order."""
        with self._lock:
            rows = self._connection().execute(f"SELECT {_ROUND_COLUMNS} FROM rounds ORDER BY round")
            return [_round_from_row(row) for row in rows.fetchall()]

    def get_round(self, round_index: int) -> RoundRecord:
        """Round ``round_index``; raises ``KeyError`` if it does not exist."""
        with self._lock:
            row = (
                self._connection()
                .execute(f"SELECT {_ROUND_COLUMNS} FROM rounds WHERE round = ?", (round_index,))
                .fetchone()
            )
        if row is None:
            raise KeyError(f"round {round_index} is not in {self._path}")
        return _round_from_row(row)

    def open_round(self) -> Optional[RoundRecord]:
        """The round that was begun but not ended, if any (what a resumed controller continues)."""
        with self._lock:
            row = (
                self._connection()
                .execute(f"SELECT {_ROUND_COLUMNS} FROM rounds WHERE status = 'open'")
                .fetchone()
            )
        return None if row is None else _round_from_row(row)

    def next_round_index(self) -> int:
        """Index of the next round to begin (0 for a new journal)."""
        with self._lock:
            return self._next_round_index(self._connection())

    def latest_policy_state(self) -> Optional[Dict[str, Any]]:
        """The policy state to continue from, or ``None`` for a new journal.

        That is the start state of the open round when there is one, otherwise the end state of
        the last closed round.
        """
        current = self.open_round()
        if current is not None:
            return current.policy_state_start
        with self._lock:
            row = (
                self._connection()
                .execute(
                    "SELECT policy_state_end FROM rounds WHERE status = 'closed' "
                    "ORDER BY round DESC LIMIT 1"
                )
                .fetchone()
            )
        return None if row is None else json.loads(row[0])

    # ------------------------------------------------------------------ trials
    def update_trial(
        self,
        round_index: int,
        index: int,
        *,
        status: str = _UNSET,
        reward: Optional[float] = _UNSET,
        metrics: Mapping[str, Any] = _UNSET,
        attempts: int = _UNSET,
        error: Optional[str] = _UNSET,
        job_id: Optional[str] = _UNSET,
        folder: Optional[str] = _UNSET,
        started_at: Optional[float] = _UNSET,
        finished_at: Optional[float] = _UNSET,
    ) -> TrialRecord:
        """Change the given fields of trial ``(round_index, index)`` in one transaction.

        Fields left out keep their value; ``None`` clears a nullable field. Trials of a closed round
        cannot change.

        Returns:
            The updated trial.

        Raises:
            KeyError: if the trial does not exist.
            ValueError: for an unknown status, a non-finite reward, negative attempts or
                non-JSON-able metrics.
            JournalError: if the round is closed or the journal is read-only.
        """
        changes: Dict[str, Any] = {}
        if status is not _UNSET:
            changes["status"] = _check_status(status)
        if reward is not _UNSET:
            changes["reward"] = _check_reward(reward)
        if metrics is not _UNSET:
            changes["metrics"] = _canonical_json(dict(metrics), allow_nan=True)
        if attempts is not _UNSET:
            changes["attempts"] = check_int(attempts, "attempts", minimum=0)
        for name, value in (
            ("error", error),
            ("job_id", job_id),
            ("folder", folder),
        ):
            if value is not _UNSET:
                changes[name] = None if value is None else str(value)
        for name, value in (("started_at", started_at), ("finished_at", finished_at)):
            if value is not _UNSET:
                changes[name] = None if value is None else float(value)

        with self._write() as conn:
            row = conn.execute(
                "SELECT r.status FROM trials t JOIN rounds r ON r.round = t.round "
                "WHERE t.round = ? AND t.idx = ?",
                (round_index, index),
            ).fetchone()
            if row is None:
                raise KeyError(f"trial {round_index}/{index} is not in {self._path}")
            if row[0] != "open":
                raise JournalError(
                    f"{self._path}: round {round_index} is closed; its trials cannot change"
                )
            if changes:
                assignments = ", ".join(f"{name} = ?" for name in changes)
                conn.execute(
                    f"UPDATE trials SET {assignments} WHERE round = ? AND idx = ?",
                    (*changes.values(), round_index, index),
                )
            return self._fetch_trial(conn, round_index, index)

    def trial(self, round_index: int, index: int) -> TrialRecord:
        """Trial ``(round_index, index)``; raises ``KeyError`` if it does not exist."""
        with self._lock:
            return self._fetch_trial(self._connection(), round_index, index)

    def trials(
        self,
        round: Optional[int] = None,
        status: Union[None, str, Iterable[str]] = None,
    ) -> List[TrialRecord]:
        """Trials ordered by (round, index), optionally filtered by round and status(es)."""
        clauses, params = [], []
        if round is not None:
            clauses.append("round = ?")
            params.append(int(round))
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            for value in statuses:
                _check_status(value)
            clauses.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params.extend(statuses)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._connection().execute(
                f"SELECT {_TRIAL_COLUMNS} FROM trials {where} ORDER BY round, idx", params
            )
            return [_trial_from_row(row) for row in rows.fetchall()]

    def best_trial(self, role: Optional[str] = None) -> Optional[TrialRecord]:
        """The ``done`` trial with the highest reward (earliest on ties), or ``None``.

        Args:
            role: restrict to ``"sample"`` or ``"mean"`` trials; all roles when ``None``.
        """
        clause, params = "", []
        if role is not None:
            if role not in TRIAL_ROLES:
                raise ValueError(f"role must be one of {TRIAL_ROLES}, got {role!r}")
            clause, params = "AND role = ?", [role]
        with self._lock:
            row = (
                self._connection()
                .execute(
                    f"SELECT {_TRIAL_COLUMNS} FROM trials WHERE status = 'done' "
                    f"AND reward IS NOT NULL {clause} ORDER BY reward DESC, round, idx LIMIT 1",
                    params,
                )
                .fetchone()
            )
        return None if row is None else _trial_from_row(row)

    # ------------------------------------------------------------------ internals
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalError(f"{self._path}: journal is closed")
        return self._conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self._read_only:
            raise JournalError(f"{self._path}: journal was opened read-only")
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @staticmethod
    def _next_round_index(conn: sqlite3.Connection) -> int:
        (last,) = conn.execute("SELECT MAX(round) FROM rounds").fetchone()
        return 0 if last is None else int(last) + 1

    def _require_open_round(self, conn: sqlite3.Connection, round_index: int) -> None:
        row = conn.execute("SELECT status FROM rounds WHERE round = ?", (round_index,)).fetchone()
        if row is None:
            raise JournalError(f"{self._path}: round {round_index} does not exist")
        if row[0] != "open":
            raise JournalError(f"{self._path}: round {round_index} is closed")

    def _insert_trials(
        self, conn: sqlite3.Connection, round_index: int, trials: Sequence[NewTrial]
    ) -> List[int]:
        (last,) = conn.execute(
            "SELECT MAX(idx) FROM trials WHERE round = ?", (round_index,)
        ).fetchone()
        start = 0 if last is None else int(last) + 1
        rows = []
        now = time.time()
        for offset, trial in enumerate(trials):
            if not isinstance(trial, NewTrial):
                raise TypeError(f"trials must be NewTrial instances, got {type(trial).__name__}")
            if trial.role not in TRIAL_ROLES:
                raise ValueError(f"role must be one of {TRIAL_ROLES}, got {trial.role!r}")
            if int(trial.seed) != trial.seed:
                raise ValueError(f"seed must be an int, got {trial.seed!r}")
            theta = [float(v) for v in trial.theta]
            rows.append(
                (
                    round_index,
                    start + offset,
                    trial.role,
                    _canonical_json(theta),
                    _canonical_json(dict(trial.overrides)),
                    int(trial.seed),
                    _check_status(trial.status),
                    _check_reward(trial.reward),
                    _canonical_json(dict(trial.metrics), allow_nan=True),
                    0,
                    trial.folder,
                    now,
                )
            )
        conn.executemany(
            "INSERT INTO trials (round, idx, role, theta, overrides, seed, status, reward, "
            "metrics, attempts, folder, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        return [start + offset for offset in range(len(rows))]

    def _fetch_trial(self, conn: sqlite3.Connection, round_index: int, index: int) -> TrialRecord:
        row = conn.execute(
            f"SELECT {_TRIAL_COLUMNS} FROM trials WHERE round = ? AND idx = ?",
            (round_index, index),
        ).fetchone()
        if row is None:
            raise KeyError(f"trial {round_index}/{index} is not in {self._path}")
        return _trial_from_row(row)


_ROUND_COLUMNS = (
    "round, status, policy_state_start, policy_state_end, update_stats, started_at, finished_at"
)
_TRIAL_COLUMNS = (
    "round, idx, role, theta, overrides, seed, status, reward, metrics, attempts, error, job_id, "
    "folder, created_at, started_at, finished_at"
)


def _round_from_row(row: Sequence[Any]) -> RoundRecord:
    return RoundRecord(
        round=row[0],
        status=row[1],
        policy_state_start=json.loads(row[2]),
        policy_state_end=None if row[3] is None else json.loads(row[3]),
        update_stats=None if row[4] is None else json.loads(row[4]),
        started_at=row[5],
        finished_at=row[6],
    )


def _trial_from_row(row: Sequence[Any]) -> TrialRecord:
    return TrialRecord(
        round=row[0],
        index=row[1],
        role=row[2],
        theta=json.loads(row[3]),
        overrides=json.loads(row[4]),
        seed=row[5],
        status=row[6],
        reward=row[7],
        metrics=json.loads(row[8]),
        attempts=row[9],
        error=row[10],
        job_id=row[11],
        folder=row[12],
        created_at=row[13],
        started_at=row[14],
        finished_at=row[15],
    )


def _check_status(status: str) -> str:
    if status not in TRIAL_STATUSES:
        raise ValueError(f"trial status must be one of {TRIAL_STATUSES}, got {status!r}")
    return status


def _check_reward(reward: Optional[float]) -> Optional[float]:
    if reward is None:
        return None
    reward = float(reward)
    if not math.isfinite(reward):
        raise ValueError(f"reward must be finite or None, got {reward}")
    return reward


def _check_sqlite_header(path: str) -> None:
    """Recognise an SQLite file from its first bytes without going through SQLite."""
    if not os.path.lexists(path):
        raise JournalError(f"{path}: no such journal file")
    if not os.path.isfile(path):
        raise JournalError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise JournalError(f"{path}: cannot read: {exc}") from None
    if not header:
        raise JournalError(f"{path}: empty file, not a paploss search journal")
    if header != _SQLITE_HEADER:
        raise JournalError(f"{path}: not an SQLite database, so not a paploss search journal")


def _validate(path: str, conn: sqlite3.Connection) -> None:
    """Read-only checks: integrity, the expected tables, the magic and the schema version."""
    try:
        check = conn.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            problems = "; ".join(str(row[0]) for row in check[:5])
            raise JournalError(f"{path}: SQLite database is corrupt ({problems})")
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if "meta" not in tables:
            raise JournalError(
                f"{path}: an SQLite database but not a paploss search journal (no 'meta' table)"
            )
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", None) == _SQLITE_READONLY_ROLLBACK:
            raise JournalError(
                f"{path}: holds an interrupted write (a hot rollback journal) that a read-only "
                "open cannot roll back; open it once without read_only (e.g. resume the search)"
            ) from None
        raise JournalError(f"{path}: corrupt or unreadable SQLite database: {exc}") from None
    if meta.get("magic") != JOURNAL_MAGIC:
        raise JournalError(
            f"{path}: not a paploss search journal (magic {meta.get('magic')!r}, "
            f"expected {JOURNAL_MAGIC!r})"
        )
    if meta.get("schema_version") != str(SCHEMA_VERSION):
        raise JournalError(
            f"{path}: journal schema version {meta.get('schema_version')!r} is not supported "
            f"(this paploss reads version {SCHEMA_VERSION})"
        )
    missing = [name for name in _REQUIRED_TABLES if name not in tables]
    missing += [key for key in ("settings", "settings_sha256") if key not in meta]
    if missing:
        raise JournalError(f"{path}: damaged journal, missing {', '.join(missing)}")


def _check_settings(path: str, conn: sqlite3.Connection, settings: Mapping[str, Any]) -> None:
    stored = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()[0])
    given = json.loads(_canonical_json(dict(settings)))
    if settings_digest(given) == settings_digest(stored):
        return
    flat_stored, flat_given = _flatten(stored), _flatten(given)
    differing = sorted(
        key
        for key in set(flat_stored) | set(flat_given)
        if flat_stored.get(key, _UNSET) != flat_given.get(key, _UNSET)
    )
    shown = ", ".join(differing[:10]) + (" ..." if len(differing) > 10 else "")
    raise JournalError(
        f"{path}: the journal was created with other search settings; differing keys: {shown}. "
        "Resume with the original settings or start a new journal."
    )


def _flatten(value: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: Dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix or "<root>": value}
