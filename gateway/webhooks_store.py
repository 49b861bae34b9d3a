"""The webhook outbox of the job store: table ``webhook_deliveries`` (schema version 4), one row per ended job
that carries a callback URL, written in the same transaction as the job's ``finished`` event (so an ended
job's event is never lost, whatever happens to the gateway next).

A row holds the ``WebhookDelivery`` message (URL, event id, attempts so far), the final ``Job`` (the event's
data, kept even when the job is deleted before its event is delivered), ``done`` (delivered or abandoned),
``run_after`` (the next attempt's due time, in the store's clock) and a lease (``lease_owner``,
``lease_expires``) exactly like the jobs' queue: a gateway claims a due row for the length of one attempt
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL), records the attempt fenced by its lease, and sets the next due
time. A gateway that dies mid-attempt stops holding the row when the lease expires; any gateway of the store
then sends the event again (at least once; the event id, the same on every attempt, lets receivers drop
duplicates).

:class:`WebhookOutbox` is mixed into :class:`gateway.store_sql.SqlJobStore`; it uses the store's dialect
fragments, so SQLite and PostgreSQL share these statements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.store import Job
from synchuman.v1 import reconstruction_pb2

if TYPE_CHECKING:  # gateway.store_sql mixes this class in
    from gateway.store_sql import Dialect, Session

WebhookDelivery = reconstruction_pb2.WebhookDelivery


def event_id(job_id: str) -> str:
    """The webhook id of a job's end event (the ``webhook-id`` header): one event per job, so stable
    across attempts and gateways."""
    return f"msg_{job_id}"


@dataclass(frozen=True)
class DueDelivery:
    """A claimed delivery: ``delivery`` (URL, id, attempts so far) and ``job``, the ended job to send."""

    delivery: reconstruction_pb2.WebhookDelivery
    job: Job


class WebhookOutbox:
    """Statements on ``webhook_deliveries`` (see the module docstring). Expects the host class to set
    ``_dialect`` and the lease fragments ``_free`` / ``_lease_until`` / ``_unleased`` (written for columns
    named ``lease_owner`` and the dialect's ``lease_expires``, which this table shares with ``jobs``)."""

    _dialect: Dialect
    _free: str
    _lease_until: str
    _unleased: str
    #: One read / one ``... RETURNING`` write in its own transaction (the host class's).
    _rows: Callable[..., list[Any]]
    _write: Callable[..., list[Any]]

    @staticmethod
    def _enqueue_webhook(session: Session, job: Job) -> None:
        """In the transaction that records ``job``'s end: queue its event when it has a callback URL (due
        now; a second end of the same job, which cannot happen, would add nothing)."""
        if not job.webhook.url:
            return
        delivery = WebhookDelivery(url=job.webhook.url, event_id=event_id(job.id))
        session.execute(
            "INSERT INTO webhook_deliveries (id, job_id, delivery, job) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO NOTHING",
            (delivery.event_id, job.id, delivery.SerializeToString(), job.SerializeToString()),
        )

    def claim_webhooks(self, owner: str, lease_s: float, limit: int) -> list[DueDelivery]:
        """Lease up to ``limit`` due, undone deliveries nobody holds to ``owner`` for ``lease_s`` seconds,
        longest waiting first; rows another gateway is claiming at the same moment are skipped."""
        d = self._dialect
        rows = self._write(
            f"UPDATE webhook_deliveries SET lease_owner = ?, {self._lease_until} WHERE id IN ("
            f"SELECT id FROM webhook_deliveries WHERE NOT done AND {self._free} AND {d.run_after} <= {d.now} "
            f"ORDER BY {d.run_after}, id LIMIT ?{d.skip_locked}) RETURNING delivery, job",
            (owner, lease_s, limit),
        )
        return [
            DueDelivery(WebhookDelivery.FromString(bytes(r[0])), Job.FromString(bytes(r[1]))) for r in rows
        ]

    def record_webhook_attempt(
        self, owner: str, delivery: reconstruction_pb2.WebhookDelivery, retry_in_s: float | None
    ) -> bool:
        """Store ``delivery`` (with its new attempt) and give up ``owner``'s lease: due again in
        ``retry_in_s`` seconds, or done when None (delivered or abandoned). False when the lease was lost
        (another gateway holds the row now; nothing written)."""
        d = self._dialect
        due, delay = (d.later, (retry_in_s,)) if retry_in_s is not None else (d.never, ())
        with d.transaction() as session:
            return (
                session.execute(
                    f"UPDATE webhook_deliveries SET delivery = ?, done = ?, {self._unleased}, "
                    f"{d.run_after} = {due} WHERE id = ? AND lease_owner = ?",
                    (delivery.SerializeToString(), retry_in_s is None, *delay, delivery.event_id, owner),
                ).rowcount
                == 1
            )

    def release_webhooks(self, owner: str) -> int:
        """Give up every delivery lease of ``owner`` (a gateway starting under the id of its dead self);
        how many there were."""
        rows = self._write(
            f"UPDATE webhook_deliveries SET {self._unleased} WHERE lease_owner = ? RETURNING id", (owner,)
        )
        return len(rows)

    def webhook_delivery(self, job_id: str) -> reconstruction_pb2.WebhookDelivery | None:
        """The delivery of ``job_id``'s event (None before the job ended, or without a callback URL)."""
        rows = self._rows("SELECT delivery FROM webhook_deliveries WHERE job_id = ?", (job_id,))
        return WebhookDelivery.FromString(bytes(rows[0][0])) if rows else None

    def webhook_backlog(self) -> int:
        """Events not delivered yet and not abandoned."""
        (row,) = self._rows("SELECT COUNT(*) FROM webhook_deliveries WHERE NOT done")
        return int(row[0])

    def next_webhook_due_s(self) -> float | None:
        """Seconds until the earliest undone delivery nobody holds is due (0 when one is due now; None when
        there is none)."""
        d = self._dialect
        first = f"MIN({d.run_after})"  # "never" (due now) is no time to subtract from on PostgreSQL
        (row,) = self._rows(
            f"SELECT CASE WHEN {first} <= {d.now} THEN 0 ELSE {d.seconds_until(first)} END "
            f"FROM webhook_deliveries WHERE NOT done AND {self._free}"
        )
        return None if row[0] is None else max(0.0, float(row[0]))

    def sweep_webhooks(self) -> int:
        """Remove the done deliveries of jobs that no longer exist (deleted, or expired by retention); how
        many."""
        sql = "DELETE FROM webhook_deliveries WHERE done AND job_id NOT IN (SELECT id FROM jobs) RETURNING id"
        return len(self._write(sql))
