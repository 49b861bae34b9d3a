"""The lease heartbeat of :class:`gateway.job_loop.JobLoop` against a real SQLite job store.

A job's terminal write takes it out of the store's lease renewal (``renew`` only renews unfinished jobs). A
heartbeat that ran between that write and the worker letting go of the job used to log "lease lost to
another gateway" for a job that had simply ended, and stop its (finished) work as if it had been taken over.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from google.rpc import code_pb2, status_pb2

from gateway.artifacts_file import FileArtifactStore
from gateway.events import JobEvents
from gateway.job_loop import JobLoop, LeaseSettings
from gateway.retry import RetryPolicy
from gateway.stages import StageFailure
from gateway.store import Event, Job
from gateway.store_sqlite import SqliteJobStore
from synchuman.v1 import reconstruction_pb2

LEASES = LeaseSettings(lease_s=0.15, poll_s=0.05)  # a heartbeat every 50 ms


class RefusingStages:
    """Stage clients whose preprocess refuses every photo for good (the job fails at once)."""

    def capacity(self, stage: int) -> int | None:
        return None

    def call(self, *args: object) -> None:
        refusal = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="no person")
        raise StageFailure(refusal, retryable=False)

    preprocess = call  # the stage clients' call of the preprocess stage, by its entry or by its name


class SlowToLetGoEvents(JobEvents):
    """Real events; after writing a job's end, the worker holds on to it for several heartbeats."""

    def finish(self, job: Job, state: int, error: status_pb2.Status | None = None) -> Job:
        ended = super().finish(job, state, error)
        time.sleep(6 * LEASES.heartbeat_s)
        return ended


def test_a_job_that_ended_is_not_taken_for_a_lost_lease(tmp_path: Path, caplog) -> None:
    store = SqliteJobStore(tmp_path / "jobs.db")
    artifacts = FileArtifactStore(tmp_path / "artifacts")
    events = SlowToLetGoEvents(store)
    events.owner = "gw-test"
    loop = JobLoop(store, artifacts, RefusingStages(), events, RetryPolicy(), 1, 4, LEASES)  # type: ignore[arg-type]
    job = Job(id="job1", state=reconstruction_pb2.JOB_STATE_QUEUED)
    job.create_time.FromNanoseconds(time.time_ns())
    artifacts.put(job.id, "input", b"\x89PNG not a real photo", "image/png")
    store.create(job, Event(sequence=1, state=reconstruction_pb2.JOB_STATE_QUEUED))
    caplog.set_level(logging.INFO, logger="gateway.job_loop")
    loop.start("gw-test")
    try:
        deadline = time.monotonic() + 20.0
        while store.get(job.id).state != reconstruction_pb2.JOB_STATE_FAILED:
            assert time.monotonic() < deadline, "the job did not fail"
            time.sleep(0.02)
        time.sleep(8 * LEASES.heartbeat_s)  # the worker lets go of the job within this
    finally:
        loop.stop(5.0)
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "lease lost" in m], messages
    assert store.get(job.id).error.message == "no person"
