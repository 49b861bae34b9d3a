"""Durable job records and their event logs: the :class:`JobStore` interface, its exceptions and
:func:`open_job_store`.

A job is kept as its ``synchuman.v1.Job`` message (serialized) plus the indexed columns queries need (state,
creation time, idempotency key, lease, ``run_after``). Every event a client can watch is appended to the job's
event log in the same transaction that updates the job, so any gateway serves exactly the sequence that was
written.

The store is the queue (as in River, Oban or graphile-worker): several gateways may share one store
(PostgreSQL); a job is worked by the gateway holding its **lease** (owner id + expiry). The holder renews its
leases with a heartbeat; a gateway that dies stops renewing, its leases expire and another gateway acquires
the jobs and resumes them from their stored stage outputs. A job whose stage call must be retried later is
released with a ``run_after`` time: until then it is leased to nobody and taken by no one; once due, any
gateway takes it. One implementation, :class:`gateway.store_sql.SqlJobStore`, on two SQL dialects:
:mod:`gateway.store_sqlite` (one host, the default) and :mod:`gateway.store_postgres` (several gateways,
woken by ``LISTEN/NOTIFY``).

The store raises its own exceptions (:class:`StoreError` and subclasses), never transport errors: the front
ends map them to gRPC and HTTP statuses in one place, :mod:`gateway.store_errors`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from synchuman.v1 import reconstruction_pb2

if TYPE_CHECKING:
    from gateway.api_keys import ApiKey, SqlKeyStore

Job = reconstruction_pb2.Job
Event = reconstruction_pb2.WatchJobResponse

TERMINAL_STATES = frozenset(
    {
        reconstruction_pb2.JOB_STATE_SUCCEEDED,
        reconstruction_pb2.JOB_STATE_FAILED,
        reconstruction_pb2.JOB_STATE_CANCELLED,
    }
)


class StoreError(Exception):
    """Something the job store refused or could not do."""


class StoreUnavailable(StoreError):
    """The job store cannot be reached (database down, network, timeout); retrying later may succeed."""


class JobNotFound(StoreError):
    """No job has the id asked for."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class InvalidJobState(StoreError):
    """The job is in a state that does not allow the operation (e.g. deleting a job that has not finished)."""


class LeaseLost(StoreError):
    """A write fenced by a lease found the job leased to another gateway (or no longer existing)."""


@dataclass(frozen=True)
class LeaseRenewal:
    """Outcome of a heartbeat: ``held``: ids of the jobs still leased to the caller (the others were lost);
    ``cancel``: those of them a client asked (on any gateway) to cancel.
    """

    held: frozenset[str]
    cancel: frozenset[str]


class Listener(Protocol):
    """A subscription to the store's "work may be available" notices (see :meth:`JobStore.listen`)."""

    def close(self) -> None:
        """Stop listening."""


class JobStore(Protocol):
    """Where jobs and their events live. Implementations must be safe to call from several threads.

    Lease durations and ``run_after`` delays are seconds; times are judged by the store's clock (PostgreSQL:
    the server's), so gateways with skewed clocks agree. ``api_keys``: the API keys kept in the same
    database (:mod:`gateway.api_keys`).
    """

    api_keys: SqlKeyStore

    def create(
        self,
        job: Job,
        event: Event,
        lease_owner: str = "",
        lease_s: float = 0.0,
        trace_context: str = "",
        owner: ApiKey | None = None,
    ) -> tuple[Job, bool]:
        """Insert ``job`` with its first event, leased to ``lease_owner`` for ``lease_s`` when given, with the
        W3C ``traceparent`` of its span (``trace_context``, "" when not traced); when its idempotency key is
        taken, return that job and False. With ``owner``, the job belongs to that API key, whose idempotency
        keys are its own, and is charged to its quota (:class:`gateway.api_keys.QuotaExceeded`: nothing
        stored).
        """

    def save(self, job: Job, event: Event | None = None, lease_owner: str = "") -> None:
        """Replace the stored ``job`` and append ``event`` (if any) atomically. With ``lease_owner``, only
        while the job is leased to it (else :class:`LeaseLost`, nothing written); :class:`JobNotFound` for
        a job that does not exist.
        """

    def get(self, job_id: str) -> Job | None:
        """The job, or None."""

    def trace_context(self, job_id: str) -> str:
        """The ``trace_context`` the job was created with ("" when none, or no such job)."""

    def find_by_key(self, idempotency_key: str, owner_key: str = "") -> Job | None:
        """The job submitted with ``idempotency_key`` (by the API key ``owner_key``; "": the shared token),
        or None."""

    def get_owned(self, job_id: str, owner_key: str) -> Job | None:
        """The job when it belongs to the API key ``owner_key``, else None."""

    def list(
        self, limit: int, state: int = 0, before: tuple[int, str] | None = None, owner_key: str | None = None
    ) -> list[Job]:
        """Up to ``limit`` jobs, newest first, optionally only in ``state``, only of the API key ``owner_key``
        and strictly older than ``before`` (``(create_time_ns, id)`` of the last job of the previous page).
        """

    def events(self, job_id: str, after_sequence: int = 0) -> list[Event]:
        """The job's events with a sequence number above ``after_sequence``, in order."""

    def last_sequence(self, job_id: str) -> int:
        """The highest event sequence number of the job (0 when it has none)."""

    def unfinished(self) -> list[Job]:
        """Jobs not in a terminal state, oldest first."""

    def count_by_state(self) -> dict[int, int]:
        """Number of jobs per state."""

    def delete(self, job_id: str) -> None:
        """Remove a finished job and its events; :class:`JobNotFound` when there is no such job,
        :class:`InvalidJobState` when it has not finished."""

    def finished_before(self, create_ns: int, limit: int) -> list[str]:
        """Ids of finished jobs created before ``create_ns`` (ns since the epoch), oldest first."""

    def acquire(self, owner: str, lease_s: float, limit: int) -> list[Job]:
        """Lease up to ``limit`` due unfinished jobs that nobody holds (never leased, released or expired;
        ``run_after`` reached) to ``owner`` for ``lease_s``, oldest first; jobs another caller is acquiring
        at the same moment are skipped, never handed out twice.
        """

    def claim(self, owner: str, job_id: str, lease_s: float) -> Job | None:
        """Lease one unfinished job to ``owner`` when nobody holds it (never leased, released or expired;
        due or not: a cancellation claims a job waiting for its retry); None otherwise (also when ``owner``
        itself holds it: someone there is working on it).
        """

    def renew(self, owner: str, lease_s: float) -> LeaseRenewal:
        """Heartbeat: extend the leases of ``owner``'s unfinished jobs by ``lease_s`` from now, expired ones
        included as long as no other gateway has taken them (taking a job is the only way its owner changes,
        so a job still recorded as ``owner``'s was not worked on elsewhere).
        """

    def release(self, owner: str, job_id: str, run_after_s: float = 0.0) -> None:
        """Give up ``owner``'s lease of the job (no-op when it holds none); with ``run_after_s``, nobody
        acquires it before that many seconds from now (a retry's back-off). Notifies listeners."""

    def release_all(self, owner: str) -> int:
        """Give up every lease of ``owner`` (a gateway starting under the id of its previous, dead self);
        returns how many there were."""

    def make_due(self, job_ids: list[str]) -> int:
        """Make jobs waiting for their ``run_after`` due now (their stage came back early); returns how many
        were waiting. Notifies listeners."""

    def next_due_s(self) -> float | None:
        """Seconds until the earliest ``run_after`` of a job nobody holds and that is not due yet (None when
        there is none)."""

    def listen(self, wake: Callable[[], None]) -> Listener:
        """Call ``wake()`` whenever a job may have become available on any gateway (submitted, released, made
        due); a store without notifications (SQLite) never calls it: its readers poll."""

    def request_cancel(self, job_id: str) -> bool:
        """Flag an unfinished job for cancellation by whichever gateway holds it; False when the job is
        missing or finished.
        """

    def lease_owner(self, job_id: str) -> str:
        """The gateway holding an unexpired lease of the job ("" when none)."""

    def ping(self) -> None:
        """Return when the store answers a trivial query; :class:`StoreUnavailable` otherwise."""

    def schema_version(self) -> int:
        """The schema version of the database."""

    def close(self) -> None:
        """Release connections."""


def create_ns(job: Job) -> int:
    """The job's creation time in ns since the epoch (the ordering column)."""
    return job.create_time.seconds * 1_000_000_000 + job.create_time.nanos


def terminal_list() -> str:
    """The terminal states as a SQL list literal, e.g. ``3,4,5``."""
    return ",".join(str(s) for s in sorted(TERMINAL_STATES))


def open_job_store(url: str, data_dir: Path) -> JobStore:
    """The job store named by ``url``: ``""`` (default: ``DATA_DIR/jobs.sqlite3``), ``sqlite:///PATH``
    (relative), ``sqlite:////ABS/PATH``, ``sqlite:///:memory:`` or ``postgresql://USER:PASS@HOST:PORT/DB``
    (also ``postgres://``; libpq parameters such as ``?sslmode=require`` pass through). The schema is created
    or migrated to the current version here. Other schemes are refused with the list of supported ones.
    """
    scheme, sep, rest = url.partition("://")
    if not url or (sep and scheme == "sqlite"):
        from gateway.store_sqlite import SqliteJobStore

        path = rest[1:] if rest.startswith("/") else rest
        return SqliteJobStore(path or data_dir / "jobs.sqlite3")
    if sep and scheme in ("postgresql", "postgres"):
        from gateway.store_postgres import PostgresJobStore

        return PostgresJobStore(url)
    raise ValueError(
        f"unsupported job store URL {url!r}: use sqlite:///PATH, postgresql://USER:PASSWORD@HOST:PORT/DB "
        "(or leave it empty for DATA_DIR/jobs.sqlite3)"
    )
