"""The PostgreSQL :class:`~gateway.store_sql.Dialect`: the job store shared by several gateways.

Connections come from a small pool (``psycopg_pool``; broken connections are replaced). Times are the
server's (``clock_timestamp()``), so gateways with skewed clocks agree on expiry and due times. The claim
query locks the rows it takes with ``FOR UPDATE SKIP LOCKED``: two gateways acquiring at the same moment get
disjoint jobs without waiting on each other. Migrations run under a transaction-scoped advisory lock, so
gateways starting together migrate once (the version is kept in ``synchuman_schema``).

Gateways wake each other with ``LISTEN/NOTIFY`` on channel :data:`CHANNEL`: a job submitted, released (for a
retry later, or by a gateway stopping) or made due sends a notice at commit, and every listening gateway
wakes a worker (:class:`NoticeListener`, its own connection, reconnecting after a failure).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from gateway.store import StoreUnavailable
from gateway.store_sql import Cursor, Dialect, Session, SqlJobStore

log = logging.getLogger(__name__)

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        state INTEGER NOT NULL,
        create_ns BIGINT NOT NULL,
        idempotency_key TEXT UNIQUE,
        job BYTEA NOT NULL
    );
    CREATE INDEX jobs_by_time ON jobs (create_ns DESC, id DESC);
    CREATE INDEX jobs_by_state ON jobs (state, create_ns DESC, id DESC);
    CREATE TABLE events (
        job_id TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        event BYTEA NOT NULL,
        PRIMARY KEY (job_id, sequence)
    );
    """,
    """
    ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
    ALTER TABLE jobs ADD COLUMN lease_expires TIMESTAMPTZ NOT NULL DEFAULT '-infinity';
    ALTER TABLE jobs ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT FALSE;
    CREATE INDEX jobs_by_lease ON jobs (state, lease_expires);
    """,
    """
    ALTER TABLE jobs ADD COLUMN run_after TIMESTAMPTZ NOT NULL DEFAULT '-infinity';
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
        admin BOOLEAN NOT NULL DEFAULT FALSE,
        max_concurrent_jobs INTEGER NOT NULL DEFAULT 0,
        max_jobs_per_day INTEGER NOT NULL DEFAULT 0,
        max_upload_bytes BIGINT NOT NULL DEFAULT 0,
        create_ns BIGINT NOT NULL,
        revoke_ns BIGINT
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
        done BOOLEAN NOT NULL DEFAULT FALSE,
        run_after TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
        lease_owner TEXT,
        lease_expires TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
        delivery BYTEA NOT NULL,
        job BYTEA NOT NULL
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries (done, run_after);
    CREATE INDEX webhook_deliveries_by_job ON webhook_deliveries (job_id);
    """,
)
#: Key of the advisory lock held while migrating (any constant unique to this application).
_MIGRATION_LOCK = 0x5359_4E43_4855_4D31
#: The notification channel of "a job may be available".
CHANNEL = "synchuman_jobs"
#: Seconds during which calls fail at once after the database was found unreachable.
FAIL_FAST_S = 2.0


class _Session:
    """A psycopg connection that takes the store's ``?`` placeholders."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, args: tuple = ()) -> Cursor:
        return self._conn.execute(sql.replace("?", "%s"), args)


class PostgresDialect(Dialect):
    """The PostgreSQL database named by a libpq URL. ``connect_timeout_s`` bounds every wait for a connection,
    so an unreachable database fails calls with :class:`~gateway.store.StoreUnavailable` within seconds
    instead of hanging them; after a failure, calls fail at once for :data:`FAIL_FAST_S`."""

    lease_expires = "lease_expires"
    run_after = "run_after"
    never = "'-infinity'"
    now = "clock_timestamp()"
    later = "(clock_timestamp() + make_interval(secs => ?))"
    true = "TRUE"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    version_table = "synchuman_schema"
    migrations = MIGRATIONS

    def __init__(self, url: str, max_connections: int = 16, connect_timeout_s: float = 5.0) -> None:
        self.url = url
        self._timeout_s = connect_timeout_s
        self._down_until = 0.0
        self._down_reason = ""
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout_s))},
            check=ConnectionPool.check_connection,
            timeout=connect_timeout_s,
            open=False,
            name="synchuman-jobs",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except PoolTimeout as exc:
            self._pool.close()
            raise StoreUnavailable(
                f"cannot connect to the job database within {connect_timeout_s:g} s"
            ) from exc

    @contextmanager
    def _conn(self, probe: bool = False) -> Iterator[psycopg.Connection]:
        """A pooled connection; connection-level failures become :class:`StoreUnavailable`."""
        if not probe and time.monotonic() < self._down_until:
            raise StoreUnavailable(self._down_reason)
        try:
            with self._pool.connection(timeout=self._timeout_s) as conn:
                yield conn
        except PoolTimeout as exc:
            raise self._went_down(f"no job database connection within {self._timeout_s:g} s") from exc
        except psycopg.OperationalError as exc:
            message = f"job database unreachable: {exc}".strip()
            if exc.sqlstate is None or exc.sqlstate.startswith(("08", "57P")):  # no connection / server down
                raise self._went_down(message) from exc
            raise StoreUnavailable(message) from exc
        self._down_until = 0.0

    def _went_down(self, message: str) -> StoreUnavailable:
        self._down_until = time.monotonic() + FAIL_FAST_S
        self._down_reason = message
        return StoreUnavailable(self._down_reason)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._conn() as conn, conn.transaction():
            yield _Session(conn)

    @contextmanager
    def reading(self, probe: bool = False) -> Iterator[Session]:
        with self._conn(probe) as conn:
            yield _Session(conn)

    def tables(self, session: Session) -> set[str]:
        rows = session.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
        return {row[0] for row in rows}

    def seconds_until(self, time_sql: str) -> str:
        return f"EXTRACT(EPOCH FROM ({time_sql}) - clock_timestamp())"

    def lock_migrations(self, session: Session) -> None:
        session.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))

    def notify(self, session: Session) -> None:
        session.execute(f"NOTIFY {CHANNEL}")

    def listen(self, wake: Callable[[], None]) -> NoticeListener:
        return NoticeListener(self.url, wake, self._timeout_s)

    def close(self) -> None:
        self._pool.close()


class NoticeListener:
    """A thread with its own connection that LISTENs on :data:`CHANNEL` and calls ``wake()`` for every
    notice; after a lost connection it reconnects (after ``retry_s``, doubling up to 30 s while it fails) and
    calls ``wake()`` once, for the notices it may have missed meanwhile."""

    def __init__(
        self, url: str, wake: Callable[[], None], connect_timeout_s: float, retry_s: float = 1.0
    ) -> None:
        self._url, self._wake = url, wake
        self._connect_timeout_s, self._retry_s = connect_timeout_s, retry_s
        self._stop = threading.Event()
        self.listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-job-notices", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop listening (within about a second)."""
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        retry_s = self._retry_s
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._url, autocommit=True, connect_timeout=max(1, int(self._connect_timeout_s))
                ) as conn:
                    retry_s = self._retry_s
                    self._listen(conn)
            except psycopg.Error as exc:
                self.listening.clear()
                log.warning("job notices lost; reconnecting", extra={"error": str(exc), "in_s": retry_s})
                self._stop.wait(retry_s)
                retry_s = min(2 * retry_s, 30.0)  # the workers poll meanwhile

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(f"LISTEN {CHANNEL}")
        self.listening.set()
        self._wake()  # anything submitted while this gateway was not listening
        while not self._stop.is_set():
            for _ in conn.notifies(timeout=0.5):
                self._wake()


class PostgresJobStore(SqlJobStore):
    """:class:`~gateway.store_sql.SqlJobStore` in the PostgreSQL database at ``url`` (see
    :class:`PostgresDialect` for the arguments)."""

    def __init__(self, url: str, max_connections: int = 16, connect_timeout_s: float = 5.0) -> None:
        super().__init__(PostgresDialect(url, max_connections, connect_timeout_s))
