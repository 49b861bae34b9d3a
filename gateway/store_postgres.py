"""The :class:`~gateway.store.JobStore` on PostgreSQL, shared by several gateways.

Connections come from a small pool (``psycopg_pool``; broken connections are replaced). Leases use the
server's clock (``clock_timestamp()``), so gateways with skewed clocks agree on expiry, and
:meth:`PostgresJobStore.acquire` takes jobs with ``SELECT ... FOR UPDATE SKIP LOCKED``: two gateways
acquiring at the same moment get disjoint jobs without waiting on each other.

Schema versions (``MIGRATIONS[v - 1]`` takes the database from ``v - 1`` to ``v``; the version is kept in
``synchuman_schema``; migrations run under a transaction-scoped advisory lock, so gateways starting together
migrate once):

1. ``jobs`` (serialized Job + state, creation time, idempotency key) and ``events``.
2. leases: ``lease_owner``, ``lease_expires`` and ``cancel_requested`` on ``jobs``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from gateway.store import Event, Job, LeaseLost, LeaseRenewal, StoreUnavailable, create_ns, terminal_list

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
)
SCHEMA_VERSION = len(MIGRATIONS)
#: Key of the advisory lock held while migrating (any constant unique to this application).
_MIGRATION_LOCK = 0x5359_4E43_4855_4D31

#: Seconds during which calls fail at once after the database was found unreachable.
FAIL_FAST_S = 2.0

_LEASE_UNTIL = "clock_timestamp() + make_interval(secs => %s)"


def current_version(conn: psycopg.Connection) -> int:
    """The schema version (0: empty database)."""
    if conn.execute("SELECT to_regclass('synchuman_schema')").fetchone()[0] is None:
        return 0
    return int(conn.execute("SELECT version FROM synchuman_schema").fetchone()[0])


def migrate(conn: psycopg.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the database to schema ``target`` in one transaction; returns the version found before.
    A database newer than this code is refused (``RuntimeError``).
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        found = current_version(conn)
        if found > SCHEMA_VERSION:
            raise RuntimeError(
                f"the job database has schema version {found}; this gateway knows up to {SCHEMA_VERSION}: "
                "upgrade the gateway"
            )
        for version in range(found + 1, target + 1):
            for statement in filter(str.strip, MIGRATIONS[version - 1].split(";")):
                conn.execute(statement)
        if found < target:
            conn.execute("CREATE TABLE IF NOT EXISTS synchuman_schema (version INTEGER NOT NULL)")
            conn.execute("DELETE FROM synchuman_schema")
            conn.execute("INSERT INTO synchuman_schema (version) VALUES (%s)", (target,))
    return found


class PostgresJobStore:
    """:class:`~gateway.store.JobStore` in a PostgreSQL database named by a libpq URL.

    ``connect_timeout_s`` bounds every wait for a connection, so an unreachable database fails calls with
    :class:`~gateway.store.StoreUnavailable` within seconds instead of hanging them.
    """

    def __init__(self, url: str, max_connections: int = 16, connect_timeout_s: float = 5.0) -> None:
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
            message = f"cannot connect to the job database within {connect_timeout_s:g} s"
            raise StoreUnavailable(message) from exc
        with self._conn() as conn:
            migrate(conn)

    @contextmanager
    def _conn(self, probe: bool = False) -> Iterator[psycopg.Connection]:
        """A pooled connection; connection-level failures become :class:`StoreUnavailable`. After one, calls
        fail at once for :data:`FAIL_FAST_S` instead of each waiting the connect timeout (``probe``: try
        anyway, as the readiness check does)."""
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
        return StoreUnavailable(message)

    def close(self) -> None:
        self._pool.close()

    def ping(self) -> None:
        with self._conn(probe=True) as conn:
            conn.execute("SELECT 1").fetchone()

    def schema_version(self) -> int:
        with self._conn() as conn:
            return current_version(conn)

    def _jobs(self, sql: str, args: tuple = ()) -> list[Job]:
        with self._conn() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [Job.FromString(bytes(row[0])) for row in rows]

    def create(self, job: Job, event: Event, lease_owner: str = "", lease_s: float = 0.0) -> tuple[Job, bool]:
        key = job.idempotency_key or None
        with self._conn() as conn, conn.transaction():
            inserted = conn.execute(
                "INSERT INTO jobs (id, state, create_ns, idempotency_key, job, lease_owner, lease_expires) "
                f"VALUES (%s, %s, %s, %s, %s, %s, CASE WHEN %s THEN {_LEASE_UNTIL} ELSE '-infinity' END) "
                "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
                (
                    job.id,
                    job.state,
                    create_ns(job),
                    key,
                    job.SerializeToString(),
                    lease_owner or None,
                    bool(lease_owner),
                    lease_s,
                ),
            ).fetchone()
            if inserted is None:
                row = conn.execute("SELECT job FROM jobs WHERE idempotency_key = %s", (key,)).fetchone()
                return Job.FromString(bytes(row[0])), False
            conn.execute(
                "INSERT INTO events (job_id, sequence, event) VALUES (%s, %s, %s)",
                (job.id, event.sequence, event.SerializeToString()),
            )
        return job, True

    def save(self, job: Job, event: Event | None = None, lease_owner: str = "") -> None:
        update = "UPDATE jobs SET state = %s, job = %s WHERE id = %s"
        args: tuple = (job.state, job.SerializeToString(), job.id)
        if lease_owner:
            update += " AND lease_owner = %s"
            args += (lease_owner,)
        with self._conn() as conn, conn.transaction():
            if conn.execute(update, args).rowcount != 1:
                raise LeaseLost(f"job {job.id} is not leased to {lease_owner!r}")
            if event is not None:
                conn.execute(
                    "INSERT INTO events (job_id, sequence, event) VALUES (%s, %s, %s)",
                    (job.id, event.sequence, event.SerializeToString()),
                )

    def get(self, job_id: str) -> Job | None:
        found = self._jobs("SELECT job FROM jobs WHERE id = %s", (job_id,))
        return found[0] if found else None

    def find_by_key(self, idempotency_key: str) -> Job | None:
        found = self._jobs("SELECT job FROM jobs WHERE idempotency_key = %s", (idempotency_key,))
        return found[0] if found else None

    def list(self, limit: int, state: int = 0, before: tuple[int, str] | None = None) -> list[Job]:
        where, args = [], []
        if state:
            where.append("state = %s")
            args.append(state)
        if before is not None:
            where.append("(create_ns, id) < (%s, %s)")
            args.extend(before)
        sql = "SELECT job FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY create_ns DESC, id DESC LIMIT %s"
        return self._jobs(sql, (*args, limit))

    def events(self, job_id: str, after_sequence: int = 0) -> list[Event]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT event FROM events WHERE job_id = %s AND sequence > %s ORDER BY sequence",
                (job_id, after_sequence),
            ).fetchall()
        return [Event.FromString(bytes(row[0])) for row in rows]

    def last_sequence(self, job_id: str) -> int:
        with self._conn() as conn:
            row = conn.execute("SELECT MAX(sequence) FROM events WHERE job_id = %s", (job_id,)).fetchone()
        return int(row[0] or 0)

    def unfinished(self) -> list[Job]:
        return self._jobs(
            f"SELECT job FROM jobs WHERE state NOT IN ({terminal_list()}) ORDER BY create_ns, id"
        )

    def count_by_state(self) -> dict[int, int]:
        with self._conn() as conn:
            rows = conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {int(state): int(count) for state, count in rows}

    def delete(self, job_id: str) -> bool:
        with self._conn() as conn, conn.transaction():
            deleted = conn.execute("DELETE FROM jobs WHERE id = %s", (job_id,)).rowcount
            conn.execute("DELETE FROM events WHERE job_id = %s", (job_id,))
        return deleted > 0

    def finished_before(self, create_ns: int, limit: int) -> list[str]:
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT id FROM jobs WHERE state IN ({terminal_list()}) AND create_ns < %s "
                "ORDER BY create_ns, id LIMIT %s",
                (create_ns, limit),
            ).fetchall()
        return [str(row[0]) for row in rows]

    # -- leases ----------------------------------------------------------------------------------------------

    def acquire(self, owner: str, lease_s: float, limit: int) -> list[Job]:
        return self._jobs(
            f"UPDATE jobs SET lease_owner = %s, lease_expires = {_LEASE_UNTIL} WHERE id IN ("
            f"  SELECT id FROM jobs WHERE state NOT IN ({terminal_list()})"
            "   AND (lease_owner IS NULL OR lease_expires < clock_timestamp())"
            "   ORDER BY create_ns, id LIMIT %s FOR UPDATE SKIP LOCKED"
            ") RETURNING job",
            (owner, lease_s, limit),
        )

    def claim(self, owner: str, job_id: str, lease_s: float) -> Job | None:
        found = self._jobs(
            f"UPDATE jobs SET lease_owner = %s, lease_expires = {_LEASE_UNTIL} WHERE id = %s"
            f" AND state NOT IN ({terminal_list()})"
            " AND (lease_owner IS NULL OR lease_expires < clock_timestamp())"
            " RETURNING job",
            (owner, lease_s, job_id),
        )
        return found[0] if found else None

    def renew(self, owner: str, lease_s: float) -> LeaseRenewal:
        with self._conn() as conn:
            rows = conn.execute(
                f"UPDATE jobs SET lease_expires = {_LEASE_UNTIL}"
                f" WHERE lease_owner = %s AND state NOT IN ({terminal_list()})"
                " RETURNING id, cancel_requested",
                (lease_s, owner),
            ).fetchall()
        return LeaseRenewal(
            held=frozenset(str(r[0]) for r in rows), cancel=frozenset(str(r[0]) for r in rows if r[1])
        )

    def release(self, owner: str, job_id: str) -> None:
        with self._conn() as conn:
            conn.execute(
                "UPDATE jobs SET lease_owner = NULL, lease_expires = '-infinity'"
                " WHERE id = %s AND lease_owner = %s",
                (job_id, owner),
            )

    def release_all(self, owner: str) -> int:
        with self._conn() as conn:
            return conn.execute(
                "UPDATE jobs SET lease_owner = NULL, lease_expires = '-infinity' WHERE lease_owner = %s",
                (owner,),
            ).rowcount

    def request_cancel(self, job_id: str) -> bool:
        with self._conn() as conn:
            updated = conn.execute(
                f"UPDATE jobs SET cancel_requested = TRUE WHERE id = %s AND state NOT IN ({terminal_list()})",
                (job_id,),
            ).rowcount
        return updated > 0

    def lease_owner(self, job_id: str) -> str:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT lease_owner FROM jobs WHERE id = %s AND lease_expires >= clock_timestamp()", (job_id,)
            ).fetchone()
        return str(row[0] or "") if row else ""
