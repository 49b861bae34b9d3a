"""A job's events: every change of a job is recorded with one event (``WatchJobResponse``) carrying an
increasing per-job sequence number, stored in the same transaction as the job, so a watcher resumes without
gaps (also after a gateway restart, or on another gateway of the same store: the numbers are the store's).
Watchers in this process are woken on every change here; changes written by other gateways are seen by
polling the store (every second while a watch waits).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from google.protobuf import timestamp_pb2
from google.rpc import status_pb2

from gateway.metrics import JOBS_FINISHED
from gateway.store import TERMINAL_STATES, Event, Job, JobStore
from synchuman.v1 import reconstruction_pb2

log = logging.getLogger(__name__)


def now_timestamp() -> timestamp_pb2.Timestamp:
    """The current time as a protobuf timestamp."""
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


class JobEvents:
    """Records jobs with their events in ``store`` and lets readers wait for the next change. Writes are
    fenced by the lease of :attr:`owner` (this gateway's id, set when the gateway starts): a job leased to
    another gateway is not written (:class:`~gateway.store.LeaseLost`)."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self.owner = ""
        self._changed = threading.Condition(threading.Lock())
        self._version = 0
        self._sequence: dict[str, int] = {}

    def _notify(self) -> None:
        self._version += 1
        self._changed.notify_all()

    def created(self, job_id: str) -> None:
        """A job was stored with its first event (sequence 1); wakes watchers. A worker may already have taken
        the job from the store and recorded later events: their number is kept."""
        with self._changed:
            self._sequence.setdefault(job_id, 1)
            self._notify()

    def emit(self, job: Job, **event: Any) -> None:
        """Record ``job`` (already updated) with one event of it (``event``: the ``WatchJobResponse`` oneof
        field, e.g. ``progress=...``); wakes watchers."""
        now = now_timestamp()
        job.update_time.CopyFrom(now)
        with self._changed:
            if job.id not in self._sequence:
                self._sequence[job.id] = self._store.last_sequence(job.id)
            record = Event(sequence=self._sequence[job.id] + 1, time=now, state=job.state, **event)
            try:
                self._store.save(job, record, lease_owner=self.owner)
            except BaseException:
                self._sequence.pop(job.id, None)  # re-read from the store next time
                raise
            self._sequence[job.id] = record.sequence
            self._notify()

    def finish(self, job: Job, state: int, error: status_pb2.Status | None = None) -> Job:
        """End ``job`` in the terminal ``state`` (with ``error``, if any): its ``finished`` event carries the
        final job."""
        job.state = state
        job.end_time.CopyFrom(now_timestamp())
        if error is not None:
            job.error.CopyFrom(error)
        final = Job()
        final.CopyFrom(job)
        final.update_time.CopyFrom(job.end_time)
        self.emit(job, finished=final)
        name = reconstruction_pb2.JobState.Name(state)
        JOBS_FINISHED.labels(name).inc()
        log.info("job finished", extra={"job_id": job.id, "state": name, "error": job.error.message})
        return job

    def forget(self, job_id: str) -> None:
        """Drop the cached sequence number of a job no longer worked on here."""
        with self._changed:
            self._sequence.pop(job_id, None)

    def wait(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for any job to change."""
        with self._changed:
            self._changed.wait(timeout_s)

    def next_events(self, job_id: str, after_sequence: int, timeout_s: float) -> list[Event]:
        """Events after ``after_sequence``, waiting up to ``timeout_s`` for one when there are none yet."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._changed:
                version = self._version
            events = self._store.events(job_id, after_sequence)
            remaining = deadline - time.monotonic()
            if events or remaining <= 0:
                return events
            with self._changed:
                if self._version == version:
                    self._changed.wait(remaining)

    def watch(
        self, job: Job, after_sequence: int, is_active: Callable[[], bool], reload: Callable[[], Job]
    ) -> Iterator[Event]:
        """Events of ``job`` after ``after_sequence`` until its ``finished`` event (or until ``is_active()``
        is False); ``reload()`` returns the job as stored now."""
        sequence = after_sequence
        while is_active():
            events = self.next_events(job.id, sequence, 1.0)
            for event in events:
                yield event
                sequence = event.sequence
                if event.WhichOneof("event") == "finished":
                    return
            if not events and job.state in TERMINAL_STATES:
                return
            if not events:
                job = reload()
