"""Durable job records and their event logs: the :class:`JobStore` interface and :func:`open_job_store`.

A job is kept as its ``synchuman.v1.Job`` message (serialized) plus the indexed columns queries need (state,
creation time, idempotency key, lease). Every event a client can watch is appended to the job's event log in
the same transaction that updates the job, so any gateway serves exactly the sequence that was written.

Several gateways may share one store (PostgreSQL): a job is worked by the gateway holding its **lease**
(owner id + expiry). The holder renews its leases with a heartbeat; a gateway that dies stops renewing, its
leases expire and another gateway acquires the jobs and resumes them from their stored stage outputs.
Implementations: :mod:`gateway.store_sqlite` (one host, the default) and :mod:`gateway.store_postgres`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc

from gateway.errors import JobError
from services.common.stage_runtime import error_info, retry_info
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


class StoreUnavailable(JobError):
    """The job store cannot be reached (database down, network, timeout): UNAVAILABLE (HTTP 503) with retry
    advice for a client whose request needed it."""

    def __init__(self, message: str) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE,
            f"{message}; retry in a few seconds",
            retry_info(2.0),
            error_info("JOB_STORE_UNAVAILABLE"),
        )


class LeaseLost(Exception):
    """A write fenced by a lease found the job leased to another gateway (or no longer existing)."""


@dataclass(frozen=True)
class LeaseRenewal:
    """Outcome of a heartbeat: ``held``: ids of the jobs still leased to the caller (the others were lost);
    ``cancel``: those of them a client asked (on any gateway) to cancel.
    """

    held: frozenset[str]
    cancel: frozenset[str]


class JobStore(Protocol):
    """Where jobs and their events live. Implementations must be safe to call from several threads.

    Lease durations are seconds; expiry is judged by the store's clock (PostgreSQL: the server's), so
    gateways with skewed clocks agree.
    """

    def create(self, job: Job, event: Event, lease_owner: str = "", lease_s: float = 0.0) -> tuple[Job, bool]:
        """Insert ``job`` with its first event, leased to ``lease_owner`` for ``lease_s`` when given; when its
        idempotency key is taken, return that job and False.
        """

    def save(self, job: Job, event: Event | None = None, lease_owner: str = "") -> None:
        """Replace the stored ``job`` and append ``event`` (if any) atomically. With ``lease_owner``, only
        while the job is leased to it (else :class:`LeaseLost`, nothing written).
        """

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
        """Jobs not in a terminal state, oldest first."""

    def count_by_state(self) -> dict[int, int]:
        """Number of jobs per state."""

    def delete(self, job_id: str) -> bool:
        """Remove a job and its events; False when there was no such job."""

    def finished_before(self, create_ns: int, limit: int) -> list[str]:
        """Ids of finished jobs created before ``create_ns`` (ns since the epoch), oldest first."""

    def acquire(self, owner: str, lease_s: float, limit: int) -> list[Job]:
        """Lease up to ``limit`` unfinished jobs that nobody holds (never leased, released or expired) to
        ``owner`` for ``lease_s``, oldest first; jobs another caller is acquiring at the same moment are
        skipped, never handed out twice.
        """

    def claim(self, owner: str, job_id: str, lease_s: float) -> Job | None:
        """Lease one unfinished job to ``owner`` when nobody holds it (never leased, released or expired);
        None otherwise (also when ``owner`` itself holds it: someone there is working on it).
        """

    def renew(self, owner: str, lease_s: float) -> LeaseRenewal:
        """Heartbeat: extend the leases of ``owner``'s unfinished jobs by ``lease_s`` from now, expired ones
        included as long as no other gateway has taken them (taking a job is the only way its owner changes,
        so a job still recorded as ``owner``'s was not worked on elsewhere).
        """

    def release(self, owner: str, job_id: str) -> None:
        """Give up ``owner``'s lease of the job (no-op when it holds none)."""

    def release_all(self, owner: str) -> int:
        """Give up every lease of ``owner`` (a gateway starting under the id of its previous, dead self);
        returns how many there were."""

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
    if not url:
        from gateway.store_sqlite import SqliteJobStore

        return SqliteJobStore(data_dir / "jobs.sqlite3")
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "sqlite":
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
