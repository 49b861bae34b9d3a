"""The :class:`~gateway.store.JobStore` in SQL, written once for every engine: :class:`SqlJobStore` over a
:class:`Dialect` (:mod:`gateway.store_sqlite`, :mod:`gateway.store_postgres`).

Statements are written with ``?`` placeholders (a dialect's sessions take them: PostgreSQL's as ``%s``) and
the dialect's fragments for what differs between engines: the clock (``now``, ``later``: now plus ``?``
seconds), the column types of times (and so their names and "never" value), the claim query's row locking
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite has one writer at a time, the transaction is enough),
transactions and connections, notifications and the schema migrations. Both engines understand
``INSERT ... ON CONFLICT DO NOTHING`` and ``UPDATE ... RETURNING``.

Schema versions (each dialect's ``migrations[v - 1]`` takes a database from version ``v - 1`` to ``v``;
migrating is one transaction, serialized between gateways starting together):

1. ``jobs`` (serialized Job + state, creation time, idempotency key) and ``events``.
2. leases: lease owner, lease expiry and ``cancel_requested`` on ``jobs``.
3. ``run_after`` on ``jobs``: a job released for a retry's back-off is acquired by nobody before it.
4. ``trace_context`` on ``jobs``: the W3C ``traceparent`` of the job's span (tracing on), so whichever
   gateway runs the job traces its stage calls into the submission's trace.
5. API keys (:mod:`gateway.api_keys`): ``api_keys``, ``api_key_usage`` and ``owner_key`` on ``jobs``, the key
   a job belongs to (NULL: the shared token's); a key's idempotency keys are its own (stored as
   ``KEY_ID<TAB>KEY``).
6. ``webhook_deliveries``: the webhook outbox (:mod:`gateway.webhooks_store`), a row queued with the end of
   every job that has a callback URL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from gateway.api_keys import ApiKey, SqlKeyStore, charge_job
from gateway.store import (
    TERMINAL_STATES,
    Event,
    InvalidJobState,
    Job,
    JobNotFound,
    LeaseLost,
    LeaseRenewal,
    Listener,
    create_ns,
    terminal_list,
)
from gateway.webhooks_store import WebhookOutbox

UNFINISHED = f"state NOT IN ({terminal_list()})"


def scoped_key(idempotency_key: str, owner_key: str) -> str | None:
    """The stored form of an idempotency key: as sent for the shared token's jobs, ``OWNER<TAB>KEY`` for an
    API key's (a key holds printable characters only, so the two never collide); None for no key."""
    if not idempotency_key:
        return None
    return f"{owner_key}\t{idempotency_key}" if owner_key else idempotency_key


class Cursor(Protocol):
    """The part of a DB-API cursor the store uses."""

    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Session(Protocol):
    """A connection (in a transaction or not) that runs ``?``-placeholder statements."""

    def execute(self, sql: str, args: tuple = ...) -> Cursor: ...


class _NoListener:
    """What :meth:`Dialect.listen` returns for an engine without notifications."""

    def close(self) -> None:
        """Nothing to stop."""


class Dialect(ABC):
    """What differs between SQL engines. Fragments (class attributes): ``lease_expires`` / ``run_after``:
    the names of the time columns; ``never``: the time before all others; ``now``: the store's clock;
    ``later``: ``now`` plus ``?`` seconds; ``true``: the boolean literal; ``skip_locked``: suffix of the
    claim query's row selection; ``version_table``: where the schema version is kept; ``migrations``."""

    lease_expires: str
    run_after: str
    never: str
    now: str
    later: str
    true: str
    skip_locked: str
    version_table: str
    migrations: tuple[str, ...]

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Session]:
        """A session whose statements commit together when the block ends (roll back on an exception)."""

    @abstractmethod
    def reading(self, probe: bool = False) -> AbstractContextManager[Session]:
        """A session for one read (``probe``: a health check, tried even while the store seems down)."""

    @abstractmethod
    def tables(self, session: Session) -> set[str]:
        """Names of the tables of the database."""

    @abstractmethod
    def seconds_until(self, time_sql: str) -> str:
        """SQL of the seconds (a float) from now until the time ``time_sql``."""

    @abstractmethod
    def lock_migrations(self, session: Session) -> None:
        """Serialize migrations between gateways starting together (in the migration's transaction)."""

    @abstractmethod
    def notify(self, session: Session) -> None:
        """Tell the listeners (at commit) that a job may have become available."""

    def listen(self, wake: Callable[[], None]) -> Listener:
        """Call ``wake()`` on every notification until the listener is closed."""
        return _NoListener()

    @abstractmethod
    def close(self) -> None:
        """Release the connections."""


def current_version(dialect: Dialect, session: Session) -> int:
    """The schema version of the database (0: empty; 1: a ``jobs`` table from before versioning)."""
    tables = dialect.tables(session)
    if dialect.version_table in tables:
        return int(session.execute(f"SELECT version FROM {dialect.version_table}").fetchone()[0])
    return 1 if "jobs" in tables else 0


def migrate(dialect: Dialect, target: int | None = None) -> int:
    """Bring the database to schema ``target`` (default: the latest) in one transaction; returns the version
    found before. A database newer than this code is refused (``RuntimeError``) rather than misread."""
    latest = len(dialect.migrations)
    target = latest if target is None else target
    with dialect.transaction() as session:
        dialect.lock_migrations(session)
        found = current_version(dialect, session)
        if found > latest:
            raise RuntimeError(
                f"the job database has schema version {found}; this gateway knows up to {latest}: "
                "upgrade the gateway"
            )
        for version in range(found + 1, target + 1):
            for statement in filter(str.strip, dialect.migrations[version - 1].split(";")):
                session.execute(statement)
        if found < target:
            session.execute(f"CREATE TABLE IF NOT EXISTS {dialect.version_table} (version INTEGER NOT NULL)")
            session.execute(f"DELETE FROM {dialect.version_table}")
            session.execute(f"INSERT INTO {dialect.version_table} (version) VALUES (?)", (target,))
    return found


def _jobs(rows: list[Any]) -> list[Job]:
    return [Job.FromString(bytes(row[0])) for row in rows]


def _oldest_first(jobs: list[Job]) -> list[Job]:
    return sorted(jobs, key=lambda job: (create_ns(job), job.id))


class SqlJobStore(WebhookOutbox):
    """:class:`~gateway.store.JobStore` on ``dialect`` (migrated to the latest schema on opening), with the
    webhook outbox of :class:`~gateway.webhooks_store.WebhookOutbox`."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = d = dialect
        #: Nobody holds the job: never leased, released, or its lease expired.
        self._free = f"(lease_owner IS NULL OR {d.lease_expires} < {d.now})"
        self._lease_until = f"{d.lease_expires} = {d.later}"
        self._unleased = f"lease_owner = NULL, {d.lease_expires} = {d.never}"
        try:
            migrate(dialect)
        except BaseException:
            dialect.close()
            raise
        self.api_keys = SqlKeyStore(dialect)

    def close(self) -> None:
        self._dialect.close()

    def ping(self) -> None:
        with self._dialect.reading(probe=True) as session:
            session.execute("SELECT 1").fetchone()

    def schema_version(self) -> int:
        with self._dialect.reading() as session:
            return current_version(self._dialect, session)

    def listen(self, wake: Callable[[], None]) -> Listener:
        return self._dialect.listen(wake)

    def _rows(self, sql: str, args: tuple = ()) -> list[Any]:
        with self._dialect.reading() as session:
            return session.execute(sql, args).fetchall()

    def _write(self, sql: str, args: tuple = ()) -> list[Any]:
        """One ``... RETURNING`` statement in its own transaction; its rows."""
        with self._dialect.transaction() as session:
            return session.execute(sql, args).fetchall()

    # -- records ---------------------------------------------------------------------------------------------

    def create(
        self,
        job: Job,
        event: Event,
        lease_owner: str = "",
        lease_s: float = 0.0,
        trace_context: str = "",
        owner: ApiKey | None = None,
    ) -> tuple[Job, bool]:
        d, key = self._dialect, scoped_key(job.idempotency_key, owner.key_id if owner else "")
        expires, lease = (d.later, (lease_s,)) if lease_owner else (d.never, ())
        with d.transaction() as session:
            inserted = session.execute(
                "INSERT INTO jobs (id, state, create_ns, idempotency_key, job, lease_owner, trace_context, "
                f"owner_key, {d.lease_expires}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, {expires}) "
                "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
                (
                    job.id,
                    job.state,
                    create_ns(job),
                    key,
                    job.SerializeToString(),
                    lease_owner or None,
                    trace_context or None,
                    owner.key_id if owner else None,
                    *lease,
                ),
            ).fetchall()
            if not inserted:
                row = session.execute("SELECT job FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
                return Job.FromString(bytes(row[0])), False
            if owner is not None:
                charge_job(session, owner, UNFINISHED)  # QuotaExceeded: nothing stored
            self._append(session, job.id, event)
            if not lease_owner:
                d.notify(session)
        return job, True

    @staticmethod
    def _append(session: Session, job_id: str, event: Event) -> None:
        session.execute(
            "INSERT INTO events (job_id, sequence, event) VALUES (?, ?, ?)",
            (job_id, event.sequence, event.SerializeToString()),
        )

    def save(self, job: Job, event: Event | None = None, lease_owner: str = "") -> None:
        update = "UPDATE jobs SET state = ?, job = ? WHERE id = ?"
        args: tuple = (job.state, job.SerializeToString(), job.id)
        if lease_owner:
            update += " AND lease_owner = ?"
            args += (lease_owner,)
        with self._dialect.transaction() as session:
            if session.execute(update, args).rowcount != 1:
                if lease_owner:
                    raise LeaseLost(f"job {job.id} is not leased to {lease_owner!r}")
                raise JobNotFound(job.id)
            if event is not None:
                self._append(session, job.id, event)
                if event.WhichOneof("event") == "finished":
                    self._enqueue_webhook(session, event.finished)

    def get(self, job_id: str) -> Job | None:
        found = _jobs(self._rows("SELECT job FROM jobs WHERE id = ?", (job_id,)))
        return found[0] if found else None

    def trace_context(self, job_id: str) -> str:
        rows = self._rows("SELECT trace_context FROM jobs WHERE id = ?", (job_id,))
        return str(rows[0][0] or "") if rows else ""

    def find_by_key(self, idempotency_key: str, owner_key: str = "") -> Job | None:
        found = _jobs(
            self._rows(
                "SELECT job FROM jobs WHERE idempotency_key = ?", (scoped_key(idempotency_key, owner_key),)
            )
        )
        return found[0] if found else None

    def get_owned(self, job_id: str, owner_key: str) -> Job | None:
        found = _jobs(self._rows("SELECT job FROM jobs WHERE id = ? AND owner_key = ?", (job_id, owner_key)))
        return found[0] if found else None

    def list(
        self, limit: int, state: int = 0, before: tuple[int, str] | None = None, owner_key: str | None = None
    ) -> list[Job]:
        where, args = [], []
        if owner_key is not None:
            where.append("owner_key = ?")
            args.append(owner_key)
        if state:
            where.append("state = ?")
            args.append(state)
        if before is not None:
            where.append("(create_ns, id) < (?, ?)")
            args.extend(before)
        sql = "SELECT job FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        return _jobs(self._rows(sql + " ORDER BY create_ns DESC, id DESC LIMIT ?", (*args, limit)))

    def events(self, job_id: str, after_sequence: int = 0) -> list[Event]:
        rows = self._rows(
            "SELECT event FROM events WHERE job_id = ? AND sequence > ? ORDER BY sequence",
            (job_id, after_sequence),
        )
        return [Event.FromString(bytes(row[0])) for row in rows]

    def last_sequence(self, job_id: str) -> int:
        (row,) = self._rows("SELECT MAX(sequence) FROM events WHERE job_id = ?", (job_id,))
        return int(row[0] or 0)

    def unfinished(self) -> list[Job]:
        return _jobs(self._rows(f"SELECT job FROM jobs WHERE {UNFINISHED} ORDER BY create_ns, id"))

    def count_by_state(self) -> dict[int, int]:
        rows = self._rows("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        return {int(state): int(count) for state, count in rows}

    def delete(self, job_id: str) -> None:
        with self._dialect.transaction() as session:
            if not session.execute(f"DELETE FROM jobs WHERE id = ? AND NOT {UNFINISHED}", (job_id,)).rowcount:
                if session.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                    raise JobNotFound(job_id)
                raise InvalidJobState(f"job {job_id} has not finished; cancel it first")
            session.execute("DELETE FROM events WHERE job_id = ?", (job_id,))

    def finished_before(self, create_ns: int, limit: int) -> list[str]:
        rows = self._rows(
            f"SELECT id FROM jobs WHERE NOT {UNFINISHED} AND create_ns < ? ORDER BY create_ns, id LIMIT ?",
            (create_ns, limit),
        )
        return [str(row[0]) for row in rows]

    # -- the queue: leases and run_after ---------------------------------------------------------------------

    def acquire(self, owner: str, lease_s: float, limit: int) -> list[Job]:
        d = self._dialect
        rows = self._write(
            f"UPDATE jobs SET lease_owner = ?, {self._lease_until} WHERE id IN ("
            f"SELECT id FROM jobs WHERE {UNFINISHED} AND {self._free} AND {d.run_after} <= {d.now} "
            f"ORDER BY create_ns, id LIMIT ?{d.skip_locked}) RETURNING job",
            (owner, lease_s, limit),
        )
        return _oldest_first(_jobs(rows))

    def claim(self, owner: str, job_id: str, lease_s: float) -> Job | None:
        found = _jobs(
            self._write(
                f"UPDATE jobs SET lease_owner = ?, {self._lease_until} "
                f"WHERE id = ? AND {UNFINISHED} AND {self._free} RETURNING job",
                (owner, lease_s, job_id),
            )
        )
        return found[0] if found else None

    def renew(self, owner: str, lease_s: float) -> LeaseRenewal:
        rows = self._write(
            f"UPDATE jobs SET {self._lease_until} WHERE lease_owner = ? AND {UNFINISHED} "
            "RETURNING id, cancel_requested",
            (lease_s, owner),
        )
        return LeaseRenewal(
            held=frozenset(str(r[0]) for r in rows), cancel=frozenset(str(r[0]) for r in rows if r[1])
        )

    def _release(self, where: str, args: tuple, run_after: str = "", delay: tuple = ()) -> int:
        """Unlease the jobs matching ``where`` (due at ``run_after``: default now); notify when one of them is
        unfinished; how many there were."""
        d = self._dialect
        with d.transaction() as session:
            rows = session.execute(
                f"UPDATE jobs SET {self._unleased}, {d.run_after} = {run_after or d.never} "
                f"WHERE {where} RETURNING state",
                (*delay, *args),
            ).fetchall()
            if any(row[0] not in TERMINAL_STATES for row in rows):
                d.notify(session)
        return len(rows)

    def release(self, owner: str, job_id: str, run_after_s: float = 0.0) -> None:
        later = (self._dialect.later, (run_after_s,)) if run_after_s > 0 else ("", ())
        self._release("id = ? AND lease_owner = ?", (job_id, owner), *later)

    def release_all(self, owner: str) -> int:
        return self._release("lease_owner = ?", (owner,))

    def make_due(self, job_ids: list[str]) -> int:
        if not job_ids:
            return 0
        d = self._dialect
        with d.transaction() as session:
            made = session.execute(
                f"UPDATE jobs SET {d.run_after} = {d.never} WHERE id IN ({', '.join('?' * len(job_ids))}) "
                f"AND {UNFINISHED} AND {d.run_after} > {d.now}",
                tuple(job_ids),
            ).rowcount
            if made:
                d.notify(session)
        return made

    def next_due_s(self) -> float | None:
        d = self._dialect
        (row,) = self._rows(
            f"SELECT {d.seconds_until(f'MIN({d.run_after})')} FROM jobs "
            f"WHERE {UNFINISHED} AND {self._free} AND {d.run_after} > {d.now}"
        )
        return None if row[0] is None else max(0.0, float(row[0]))

    def request_cancel(self, job_id: str) -> bool:
        with self._dialect.transaction() as session:
            return bool(
                session.execute(
                    f"UPDATE jobs SET cancel_requested = {self._dialect.true} WHERE id = ? AND {UNFINISHED}",
                    (job_id,),
                ).rowcount
            )

    def lease_owner(self, job_id: str) -> str:
        d = self._dialect
        rows = self._rows(
            f"SELECT lease_owner FROM jobs WHERE id = ? AND {d.lease_expires} >= {d.now}", (job_id,)
        )
        return str(rows[0][0] or "") if rows else ""
