"""Event sequence numbers of a job stay increasing when a worker records events before the submitting thread
has announced the job (a burst of submissions: a worker takes the job from the store at once)."""

from __future__ import annotations

from gateway.events import JobEvents
from gateway.store import Event, Job, open_job_store
from synchuman.v1 import common_pb2, reconstruction_pb2


def test_an_announcement_after_a_workers_events_keeps_their_numbers(tmp_path):
    store = open_job_store(f"sqlite:///{tmp_path}/jobs.sqlite3", tmp_path)
    try:
        events = JobEvents(store)
        job = Job(id="job-1", state=reconstruction_pb2.JOB_STATE_QUEUED)
        store.create(job, Event(sequence=1, state=reconstruction_pb2.JOB_STATE_QUEUED))
        job.state = reconstruction_pb2.JOB_STATE_RUNNING
        events.emit(job, progress=common_pb2.ProgressEvent(phase="start"))  # the worker, first
        events.created(job.id)  # the submitting thread, late
        events.emit(job, progress=common_pb2.ProgressEvent(phase="start"))
        assert [event.sequence for event in store.events(job.id, 0)] == [1, 2, 3]
    finally:
        store.close()
