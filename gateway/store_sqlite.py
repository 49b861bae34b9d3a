"""The :class:`~gateway.store.JobStore` in one SQLite file (one host: the default of ``synchuman serve``).

Schema versions (``MIGRATIONS[v - 1]`` takes a database from version ``v - 1`` to ``v``; the version is kept
in the ``schema_version`` table; a database without it but with a ``jobs`` table is version 1, the layout
before versioning):

1. ``jobs`` (serialized Job + state, creation time, idempotency key) and ``events``.
2. leases: ``lease_owner``, ``lease_expires_ns`` and ``cancel_requested`` on ``jobs``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from gateway.store import Event, Job, LeaseLost, LeaseRenewal, create_ns, terminal_list

MIGRATIONS: tuple[str, ...] = (
    """
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
    """,
    """
    ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
    ALTER TABLE jobs ADD COLUMN lease_expires_ns INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_by_lease ON jobs (state, lease_expires_ns);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def _now_ns() -> int:
    return time.time_ns()


def _expiry(lease_s: float) -> int:
    return _now_ns() + int(lease_s * 1e9)


def current_version(db: sqlite3.Connection) -> int:
    """The schema version of an open database (0: empty)."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" in tables:
        return int(db.execute("SELECT version FROM schema_version").fetchone()[0])
    return 1 if "jobs" in tables else 0


def migrate(db: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the database to schema ``target`` in one transaction; returns the version found before.
    A database newer than this code is refused (``RuntimeError``) rather than misread.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        found = current_version(db)
        if found > SCHEMA_VERSION:
            raise RuntimeError(
                f"the job database has schema version {found}; this gateway knows up to {SCHEMA_VERSION}: "
                "upgrade the gateway"
            )
        for version in range(found + 1, target + 1):
            for statement in filter(str.strip, MIGRATIONS[version - 1].split(";")):
                db.execute(statement)
        if found < target:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return found


class SqliteJobStore:
    """:class:`~gateway.store.JobStore` in one SQLite file (WAL journal; one connection guarded by a lock)."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            migrate(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def ping(self) -> None:
        with self._lock:
            self._db.execute("SELECT 1").fetchone()

    def schema_version(self) -> int:
        with self._lock:
            return current_version(self._db)

    def _write(self, statements: list[tuple[str, tuple]]) -> list[int]:
        """Run statements in one immediate transaction; their row counts."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                counts = [self._db.execute(sql, args).rowcount for sql, args in statements]
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return counts

    def create(self, job: Job, event: Event, lease_owner: str = "", lease_s: float = 0.0) -> tuple[Job, bool]:
        key = job.idempotency_key or None
        try:
            self._write(
                [
                    (
                        "INSERT INTO jobs (id, state, create_ns, idempotency_key, job, lease_owner, "
                        "lease_expires_ns) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            job.id,
                            job.state,
                            create_ns(job),
                            key,
                            job.SerializeToString(),
                            lease_owner or None,
                            _expiry(lease_s) if lease_owner else 0,
                        ),
                    ),
                    (
                        "INSERT INTO events (job_id, sequence, event) VALUES (?, ?, ?)",
                        (job.id, event.sequence, event.SerializeToString()),
                    ),
                ]
            )
            return job, True
        except sqlite3.IntegrityError:
            if key is None:
                raise
            existing = self.find_by_key(key)
            if existing is None:
                raise
            return existing, False

    def save(self, job: Job, event: Event | None = None, lease_owner: str = "") -> None:
        update = "UPDATE jobs SET state = ?, job = ? WHERE id = ?"
        args: tuple = (job.state, job.SerializeToString(), job.id)
        if lease_owner:
            update += " AND lease_owner = ?"
            args += (lease_owner,)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._db.execute(update, args).rowcount != 1:
                    raise LeaseLost(f"job {job.id} is not leased to {lease_owner!r}")
                if event is not None:
                    self._db.execute(
                        "INSERT INTO events (job_id, sequence, event) VALUES (?, ?, ?)",
                        (job.id, event.sequence, event.SerializeToString()),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _jobs(self, sql: str, args: tuple = ()) -> list[Job]:
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [Job.FromString(row[0]) for row in rows]

    def get(self, job_id: str) -> Job | None:
        found = self._jobs("SELECT job FROM jobs WHERE id = ?", (job_id,))
        return found[0] if found else None

    def find_by_key(self, idempotency_key: str) -> Job | None:
        found = self._jobs("SELECT job FROM jobs WHERE idempotency_key = ?", (idempotency_key,))
        return found[0] if found else None

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
        return self._jobs(sql, (*args, limit))

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
        return self._jobs(
            f"SELECT job FROM jobs WHERE state NOT IN ({terminal_list()}) ORDER BY create_ns, id"
        )

    def count_by_state(self) -> dict[int, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {int(state): int(count) for state, count in rows}

    def delete(self, job_id: str) -> bool:
        deleted, _ = self._write(
            [("DELETE FROM jobs WHERE id = ?", (job_id,)), ("DELETE FROM events WHERE job_id = ?", (job_id,))]
        )
        return deleted > 0

    def finished_before(self, create_ns: int, limit: int) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT id FROM jobs WHERE state IN ({terminal_list()}) AND create_ns < ? "
                "ORDER BY create_ns, id LIMIT ?",
                (create_ns, limit),
            ).fetchall()
        return [str(row[0]) for row in rows]

    # -- leases (one connection under a lock: the transactions below are already exclusive) ----------------

    def acquire(self, owner: str, lease_s: float, limit: int) -> list[Job]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    f"SELECT id, job FROM jobs WHERE state NOT IN ({terminal_list()}) "
                    "AND (lease_owner IS NULL OR lease_expires_ns < ?) ORDER BY create_ns, id LIMIT ?",
                    (_now_ns(), limit),
                ).fetchall()
                expires = _expiry(lease_s)
                self._db.executemany(
                    "UPDATE jobs SET lease_owner = ?, lease_expires_ns = ? WHERE id = ?",
                    [(owner, expires, row[0]) for row in rows],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [Job.FromString(row[1]) for row in rows]

    def claim(self, owner: str, job_id: str, lease_s: float) -> Job | None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                updated = self._db.execute(
                    "UPDATE jobs SET lease_owner = ?, lease_expires_ns = ? WHERE id = ? "
                    f"AND state NOT IN ({terminal_list()}) "
                    "AND (lease_owner IS NULL OR lease_expires_ns < ?)",
                    (owner, _expiry(lease_s), job_id, _now_ns()),
                ).rowcount
                row = self._db.execute("SELECT job FROM jobs WHERE id = ?", (job_id,)).fetchone()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return Job.FromString(row[0]) if updated and row else None

    def renew(self, owner: str, lease_s: float) -> LeaseRenewal:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                mine = f"lease_owner = ? AND state NOT IN ({terminal_list()})"
                until = _expiry(lease_s)
                self._db.execute(f"UPDATE jobs SET lease_expires_ns = ? WHERE {mine}", (until, owner))
                rows = self._db.execute(f"SELECT id, cancel_requested FROM jobs WHERE {mine}", (owner,))
                rows = rows.fetchall()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return LeaseRenewal(
            held=frozenset(str(r[0]) for r in rows), cancel=frozenset(str(r[0]) for r in rows if r[1])
        )

    def release(self, owner: str, job_id: str) -> None:
        self._write(
            [
                (
                    "UPDATE jobs SET lease_owner = NULL, lease_expires_ns = 0"
                    " WHERE id = ? AND lease_owner = ?",
                    (job_id, owner),
                )
            ]
        )

    def release_all(self, owner: str) -> int:
        (released,) = self._write(
            [("UPDATE jobs SET lease_owner = NULL, lease_expires_ns = 0 WHERE lease_owner = ?", (owner,))]
        )
        return released

    def request_cancel(self, job_id: str) -> bool:
        (updated,) = self._write(
            [
                (
                    f"UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state NOT IN ({terminal_list()})",
                    (job_id,),
                )
            ]
        )
        return updated > 0

    def lease_owner(self, job_id: str) -> str:
        with self._lock:
            row = self._db.execute(
                "SELECT lease_owner FROM jobs WHERE id = ? AND lease_expires_ns >= ?", (job_id, _now_ns())
            ).fetchone()
        return str(row[0] or "") if row else ""
