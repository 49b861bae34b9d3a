"""Durable job records and their event logs: the :class:`JobStore` interface and its SQLite implementation.

A job is kept as its ``synchuman.v1.Job`` message (serialized) plus the indexed columns queries need (state,
creation time, idempotency key). Every event a client can watch is appended to the job's event log in the
same transaction that updates the job, so a restarted gateway serves exactly the sequence it had written.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Protocol

from synchuman.v1 import reconstruction_pb2

Job = reconstruction_pb2.Job
Event = reconstruction_pb2.WatchJobResponse

TERMINAL_STATES = frozenset(
    {
        reconstruction_pb2.JOB_STATE_SUCCEEDED,
        reconstruction_pb2.JOB_STATE_FAILED,
        reconstruction_pb2.JOB_STATE_CANCELLED,
    }
)


class JobStore(Protocol):
    """Where jobs and their events live. Implementations must be safe to call from several threads."""

    def create(self, job: Job, event: Event) -> tuple[Job, bool]:
        """Insert ``job`` with its first event; when its idempotency key is taken, return that job and
        False.
        """

    def save(self, job: Job, event: Event | None = None) -> None:
        """Replace the stored ``job`` and append ``event`` (if any) atomically."""

    def get(self, job_id: str) -> Job | None:
        """The job, or None."""

    def find_by_key(self, idempotency_key: str) -> Job | None:
        """The job submitted with ``idempotency_key``, or None."""

    def list(self, limit: int, state: int = 0, before: tuple[int, str] | None = None) -> list[Job]:
        """Up to ``limit`` jobs, newest first, optionally only in ``state`` and strictly older than ``before``
        (``(create_time_ns, id)`` of the last job of the previous page).
        """

    def events(self, job_id: str, after_sequence: int = 0) -> list[Event]:
        """The job's events with a sequence number above ``after_sequence``, in order."""

    def last_sequence(self, job_id: str) -> int:
        """The highest event sequence number of the job (0 when it has none)."""

    def unfinished(self) -> list[Job]:
        """Jobs not in a terminal state, oldest first (to resume after a restart)."""

    def count_by_state(self) -> dict[int, int]:
        """Number of jobs per state."""

    def delete(self, job_id: str) -> bool:
        """Remove a job and its events; False when there was no such job."""

    def finished_before(self, create_ns: int, limit: int) -> list[str]:
        """Ids of finished jobs created before ``create_ns`` (ns since the epoch), oldest first."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state INTEGER NOT NULL,
    create_ns INTEGER NOT NULL,
    idempotency_key TEXT UNIQUE,
    job BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (create_ns DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, create_ns DESC, id DESC);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (job_id, sequence)
);
"""


def _create_ns(job: Job) -> int:
    return job.create_time.seconds * 1_000_000_000 + job.create_time.nanos


class SqliteJobStore:
    """:class:`JobStore` in one SQLite file (WAL journal; one connection guarded by a lock)."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def _insert_event(self, job_id: str, event: Event) -> None:
        self._db.execute(
            "INSERT INTO events (job_id, sequence, event) VALUES (?, ?, ?)",
            (job_id, event.sequence, event.SerializeToString()),
        )

    def create(self, job: Job, event: Event) -> tuple[Job, bool]:
        key = job.idempotency_key or None
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO jobs (id, state, create_ns, idempotency_key, job) VALUES (?, ?, ?, ?, ?)",
                    (job.id, job.state, _create_ns(job), key, job.SerializeToString()),
                )
                self._insert_event(job.id, event)
                self._db.execute("COMMIT")
                return job, True
            except sqlite3.IntegrityError:
                self._db.execute("ROLLBACK")
                if key is None:
                    raise
                row = self._db.execute("SELECT job FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
                return Job.FromString(row[0]), False

    def save(self, job: Job, event: Event | None = None) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE jobs SET state = ?, job = ? WHERE id = ?",
                    (job.state, job.SerializeToString(), job.id),
                )
                if event is not None:
                    self._insert_event(job.id, event)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _one(self, sql: str, args: tuple) -> Job | None:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return Job.FromString(row[0]) if row else None

    def get(self, job_id: str) -> Job | None:
        return self._one("SELECT job FROM jobs WHERE id = ?", (job_id,))

    def find_by_key(self, idempotency_key: str) -> Job | None:
        return self._one("SELECT job FROM jobs WHERE idempotency_key = ?", (idempotency_key,))

    def list(self, limit: int, state: int = 0, before: tuple[int, str] | None = None) -> list[Job]:
        where, args = [], []
        if state:
            where.append("state = ?")
            args.append(state)
        if before is not None:
            where.append("(create_ns < ? OR (create_ns = ? AND id < ?))")
            args.extend([before[0], before[0], before[1]])
        sql = "SELECT job FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY create_ns DESC, id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        return [Job.FromString(row[0]) for row in rows]

    def events(self, job_id: str, after_sequence: int = 0) -> list[Event]:
        with self._lock:
            rows = self._db.execute(
                "SELECT event FROM events WHERE job_id = ? AND sequence > ? ORDER BY sequence",
                (job_id, after_sequence),
            ).fetchall()
        return [Event.FromString(row[0]) for row in rows]

    def last_sequence(self, job_id: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(sequence) FROM events WHERE job_id = ?", (job_id,)).fetchone()
        return int(row[0] or 0)

    def unfinished(self) -> list[Job]:
        terminal = ",".join(str(s) for s in sorted(TERMINAL_STATES))
        with self._lock:
            rows = self._db.execute(
                f"SELECT job FROM jobs WHERE state NOT IN ({terminal}) ORDER BY create_ns, id"
            ).fetchall()
        return [Job.FromString(row[0]) for row in rows]

    def count_by_state(self) -> dict[int, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {int(state): int(count) for state, count in rows}

    def delete(self, job_id: str) -> bool:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                deleted = self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount
                self._db.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return deleted > 0

    def finished_before(self, create_ns: int, limit: int) -> list[str]:
        terminal = ",".join(str(s) for s in sorted(TERMINAL_STATES))
        with self._lock:
            rows = self._db.execute(
                f"SELECT id FROM jobs WHERE state IN ({terminal}) AND create_ns < ? "
                "ORDER BY create_ns, id LIMIT ?",
                (create_ns, limit),
            ).fetchall()
        return [str(row[0]) for row in rows]


def open_job_store(url: str, data_dir: Path) -> JobStore:
    """The job store named by ``url``: ``""`` (default: ``DATA_DIR/jobs.sqlite3``), ``sqlite:///PATH`` or
    ``sqlite:///:memory:``. Other schemes are refused with the list of supported ones.
    """
    if not url:
        return SqliteJobStore(data_dir / "jobs.sqlite3")
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        return SqliteJobStore(path or data_dir / "jobs.sqlite3")
    raise ValueError(
        f"unsupported database URL {url!r}: use sqlite:///PATH (or leave it empty for the default)"
    )
