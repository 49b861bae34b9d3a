"""The SQLite :class:`~gateway.store_sql.Dialect`: the job store in one file (one host: the default of
``synchuman serve``).

One connection (WAL journal) guarded by a lock; writes are ``BEGIN IMMEDIATE`` transactions, so the claim
query needs no row locking: SQLite has one writer at a time. Times are integers, ns since the epoch, from
SQLite's clock. There are no notifications: workers poll (see :mod:`gateway.job_loop`). A database without
the ``schema_version`` table but with a ``jobs`` table is version 1, the layout before versioning.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.store_sql import Dialect, Session, SqlJobStore

#: Now, in ns since the epoch (julianday: ms precision, ample for leases of seconds).
_NOW = "CAST((julianday('now') - 2440587.5) * 86400000000000 AS INTEGER)"

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
    """
    ALTER TABLE jobs ADD COLUMN run_after_ns INTEGER NOT NULL DEFAULT 0;
    """,
    """
    ALTER TABLE jobs ADD COLUMN trace_context TEXT;
    """,
    """
    ALTER TABLE jobs ADD COLUMN owner_key TEXT;
    CREATE INDEX jobs_by_owner ON jobs (owner_key, create_ns DESC, id DESC);
    CREATE TABLE api_keys (
        key_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        key_sha256 TEXT NOT NULL,
        admin INTEGER NOT NULL DEFAULT 0,
        max_concurrent_jobs INTEGER NOT NULL DEFAULT 0,
        max_jobs_per_day INTEGER NOT NULL DEFAULT 0,
        max_upload_bytes INTEGER NOT NULL DEFAULT 0,
        create_ns INTEGER NOT NULL,
        revoke_ns INTEGER
    );
    CREATE TABLE api_key_usage (
        key_id TEXT NOT NULL,
        day TEXT NOT NULL,
        jobs INTEGER NOT NULL,
        PRIMARY KEY (key_id, day)
    );
    """,
    """
    CREATE TABLE webhook_deliveries (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        done INTEGER NOT NULL DEFAULT 0,
        run_after_ns INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_expires_ns INTEGER NOT NULL DEFAULT 0,
        delivery BLOB NOT NULL,
        job BLOB NOT NULL
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries (done, run_after_ns);
    CREATE INDEX webhook_deliveries_by_job ON webhook_deliveries (job_id);
    """,
)


class SqliteDialect(Dialect):
    """A SQLite file at ``path`` (or ``:memory:``)."""

    lease_expires = "lease_expires_ns"
    run_after = "run_after_ns"
    never = "0"
    now = _NOW
    later = f"({_NOW} + CAST(? * 1e9 AS INTEGER))"
    true = "1"
    skip_locked = ""
    version_table = "schema_version"
    migrations = MIGRATIONS

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    @contextmanager
    def reading(self, probe: bool = False) -> Iterator[Session]:
        with self._lock:
            yield self._db

    def tables(self, session: Session) -> set[str]:
        return {
            row[0]
            for row in session.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        }

    def lock_migrations(self, session: Session) -> None:
        """Nothing to do: the migration's ``BEGIN IMMEDIATE`` already excludes every other writer."""

    def notify(self, session: Session) -> None:
        """Nothing to do: SQLite has no notifications (the workers poll)."""

    def seconds_until(self, time_sql: str) -> str:
        return f"(({time_sql}) - {_NOW}) / 1e9"

    def close(self) -> None:
        with self._lock:
            self._db.close()


class SqliteJobStore(SqlJobStore):
    """:class:`~gateway.store_sql.SqlJobStore` in the SQLite file at ``path``."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(SqliteDialect(path))
