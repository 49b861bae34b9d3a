"""The gateway client of the deployment benches: submit photos as jobs, follow every job's event stream
into a :class:`JobRecord`, and the stage-2 kill test (:class:`KillTest`)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from services.common.endpoints import HEALTH_SERVICES, STAGE_SERVICES
from services.common.stage_io import blob_header, upload_messages
from services.supervisor import Supervisor, health_status
from synchuman.v1 import common_pb2, reconstruction_pb2, reconstruction_pb2_grpc

#: Stage enum value of a progress event -> stage name ("preprocess", "stage1", "stage2").
STAGES = {stage: name for name, stage in STAGE_SERVICES.items()}
TERMINAL = {
    reconstruction_pb2.JOB_STATE_SUCCEEDED,
    reconstruction_pb2.JOB_STATE_FAILED,
    reconstruction_pb2.JOB_STATE_CANCELLED,
}


@dataclass
class JobRecord:
    """What one job did: submit time, the gateway's events (wall-clock seconds), the final job."""

    index: int
    submitted: float
    job_id: str = ""
    #: (time, kind, stage, work start): for service progress events the wall-clock moment the service started
    #: working (event time - elapsed_seconds); None for other events and the gateway's own "start" marker.
    events: list[tuple[float, str, str, float | None]] = field(default_factory=list)
    final: reconstruction_pb2.Job | None = None
    error: str = ""

    def first(self, kind: str, stage: str) -> float | None:
        """Time of the first ``kind`` event of ``stage`` (None when there is none)."""
        return next((t for t, k, s, _ in self.events if k == kind and s == stage), None)

    def span(self, stage: str) -> tuple[float, float] | None:
        """(start, end) of a stage's successful run: when its service started working on the request (after
        the last failed attempt), up to its ``stage_completed`` event."""
        end = self.first("completed", stage)
        if end is None:
            return None
        retried = [t for t, k, _, _ in self.events if k == "retrying" and t <= end]
        after = max(retried, default=-1.0)
        starts = [w for t, k, s, w in self.events if k == "progress" and s == stage and t >= after and w]
        return (max(after, starts[0]) if starts else end), end

    @property
    def finished(self) -> float | None:
        """Time of the job's ``finished`` event."""
        return self.first("finished", "")


#: ``on_event(record, kind, stage, working)`` after every event a job's watcher records.
OnEvent = Callable[[JobRecord, str, str, bool], None]


def _seconds(stamp: object) -> float:
    return stamp.seconds + stamp.nanos * 1e-9  # type: ignore[attr-defined]


def submit(
    stub: reconstruction_pb2_grpc.ReconstructionServiceStub,
    record: JobRecord,
    photo: bytes,
    options: common_pb2.JobOptions,
    deadline: float,
) -> None:
    """Submit one photo (retrying while the gateway says RESOURCE_EXHAUSTED/UNAVAILABLE until ``deadline``,
    ``time.monotonic()``); sets ``record.job_id``."""
    start = reconstruction_pb2.SubmitJobStart(options=options, image=blob_header("input", "image/png", photo))
    while True:
        try:
            requests = upload_messages(reconstruction_pb2.SubmitJobRequest, start, {"input": photo})
            reply = stub.SubmitJob(requests, timeout=120)
            record.job_id = reply.job.id
            return
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE) or (
                time.monotonic() > deadline
            ):
                raise
            time.sleep(1.0)


def watch(
    stub: reconstruction_pb2_grpc.ReconstructionServiceStub,
    record: JobRecord,
    deadline: float,
    on_event: OnEvent,
) -> None:
    """Follow one job's events to its end (resuming after gateway hiccups); fills ``record``."""
    sequence = 0
    state = reconstruction_pb2.JOB_STATE_QUEUED
    try:
        while state not in TERMINAL:
            try:
                for event in stub.WatchJob(
                    reconstruction_pb2.WatchJobRequest(job_id=record.job_id, after_sequence=sequence),
                    timeout=max(1.0, deadline - time.monotonic()),
                ):
                    sequence = event.sequence
                    state = event.state
                    kind = event.WhichOneof("event")
                    stage, work_start = "", None
                    if kind == "progress":
                        stage = STAGES.get(event.progress.stage, "?")
                        if event.progress.phase != "start":  # the gateway's dispatch marker
                            work_start = _seconds(event.time) - event.progress.elapsed_seconds
                    elif kind == "stage_completed":
                        kind, stage = "completed", STAGES.get(event.stage_completed, "?")
                    elif kind == "finished":
                        record.final = event.finished
                    record.events.append((_seconds(event.time), kind or "", stage, work_start))
                    on_event(record, kind or "", stage, work_start is not None)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
        if record.final is None:
            record.final = stub.GetJob(reconstruction_pb2.GetJobRequest(job_id=record.job_id), timeout=30).job
    except grpc.RpcError as exc:
        record.error = f"{exc.code().name}: {exc.details()}"


class KillTest:
    """SIGKILLs stage 2 once, when the stage-2 service first reports work on job ``job_index`` (not when the
    gateway merely dispatches it, which may be while the job still waits in the service's queue), after
    ``delay_s``; times the restart until stage 2 at ``address`` is SERVING again."""

    def __init__(self, supervisor: Supervisor, job_index: int, address: str, delay_s: float) -> None:
        self.supervisor = supervisor
        self.job_index = job_index
        self.address = address
        self.delay_s = delay_s
        self.killed_at: float | None = None
        self.killed_pid = 0
        self.serving_again_s: float | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def stop(self) -> None:
        """End the wait for stage 2's return (the bench is over)."""
        self._stopped.set()

    def on_event(self, record: JobRecord, kind: str, stage: str, working: bool) -> None:
        """An :data:`OnEvent`: starts the kill at the chosen job's first stage-2 work event."""
        if record.index != self.job_index or kind != "progress" or stage != "stage2" or not working:
            return
        with self._lock:
            if self.killed_at is not None:
                return
            self.killed_at = -1.0
        threading.Thread(target=self._kill, name="kill-stage2", daemon=True).start()

    def _kill(self) -> None:
        time.sleep(self.delay_s)
        self.killed_pid = self.supervisor.kill_child("stage2")
        self.killed_at = time.time()
        print(
            f"kill test: SIGKILL stage2 (pid {self.killed_pid}) during job {self.job_index}", file=sys.stderr
        )
        while not self._stopped.is_set():
            if health_status(self.address, HEALTH_SERVICES["stage2"]) == 1:
                self.serving_again_s = time.time() - self.killed_at
                return
            self._stopped.wait(0.25)


def run_jobs(
    gateway: str,
    photo: bytes,
    jobs: int,
    options: common_pb2.JobOptions,
    kill: KillTest | None,
    deadline: float,
) -> list[JobRecord]:
    """Submit ``jobs`` copies of ``photo`` to ``gateway`` back to back, watch them all concurrently, return
    their records.

    At ``deadline`` (``time.monotonic()``) the jobs still running are cancelled and recorded as unfinished.
    """
    records = [JobRecord(i + 1, 0.0) for i in range(jobs)]
    on_event: OnEvent = kill.on_event if kill else (lambda *_: None)
    with grpc.insecure_channel(gateway) as channel:
        stub = reconstruction_pb2_grpc.ReconstructionServiceStub(channel)
        watchers = []
        for record in records:
            record.submitted = time.time()
            submit(stub, record, photo, options, deadline)
            thread = threading.Thread(target=watch, args=(stub, record, deadline, on_event), daemon=True)
            thread.start()
            watchers.append(thread)
        for thread in watchers:
            thread.join()
        for record in records:
            if record.job_id and (record.final is None or record.final.state not in TERMINAL):
                try:
                    stub.CancelJob(reconstruction_pb2.CancelJobRequest(job_id=record.job_id), timeout=10)
                except grpc.RpcError:
                    pass  # the summary reports the job as unfinished either way
    return records
