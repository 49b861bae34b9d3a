"""The job loop: a queue of job ids and ``workers`` threads, each taking the oldest queued job and walking it
through :data:`gateway.stage_table.STAGE_TABLE` on the stage services.

Every stage's outputs are stored as soon as the stage returns; a stage whose result file is already stored is
skipped, so a job interrupted by a gateway restart resumes at the first stage without one. A failed stage
call is sent again as :class:`gateway.retry.RetryPolicy` says, without re-running earlier stages. Stopping a
job (cancelled, or the gateway shutting down) stops its stage call in flight; a job stopped by a shutdown
keeps its stored state and is queued again by the next :meth:`JobLoop.start`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from google.rpc import code_pb2, status_pb2

from gateway.artifacts import ArtifactStore
from gateway.errors import JobError
from gateway.events import JobEvents
from gateway.metrics import STAGE_RETRIES, STAGE_SECONDS
from gateway.retry import RetryPolicy
from gateway.stage_table import STAGE_TABLE, StageStep, stage_name
from gateway.stages import CallHandle, StageClients, StageFailure, StageOutput
from gateway.store import TERMINAL_STATES, Job, JobStore
from services.common.stage_runtime import error_info, retry_info
from synchuman.v1 import common_pb2, reconstruction_pb2

log = logging.getLogger(__name__)

R = reconstruction_pb2


class _Stopped(Exception):
    """The job's work was stopped (``reason``: "cancelled" or "shutdown")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_stopped(handle: CallHandle) -> None:
    if handle.reason:
        raise _Stopped(handle.reason)


class JobLoop:
    """Queue and workers; see the module docstring. ``max_pending_jobs``: queued + running jobs before
    :meth:`admission` refuses new ones."""

    def __init__(
        self,
        store: JobStore,
        artifacts: ArtifactStore,
        stages: StageClients,
        events: JobEvents,
        retry: RetryPolicy,
        workers: int,
        max_pending_jobs: int,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._stages = stages
        self._events = events
        self._retry = retry
        self._workers = workers
        self._max_pending = max_pending_jobs
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._queue: deque[str] = deque()
        self._active: set[str] = set()
        self._reserved = 0
        self._running: dict[str, CallHandle] = {}
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> int:
        """Queue every unfinished job (oldest first) and start the workers; returns the number resumed."""
        resumed = self._store.unfinished()
        with self._lock:
            for job in resumed:
                self._active.add(job.id)
                self._queue.append(job.id)
        for job in resumed:
            log.info("job resumed", extra={"job_id": job.id, "stage": stage_name(job.stage)})
        for i in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"gateway-job-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return len(resumed)

    def stop(self, timeout_s: float) -> None:
        """Stop the workers and their stage calls (waiting up to ``timeout_s``); running jobs keep their
        stored state."""
        with self._lock:
            self._stopping = True
            handles = list(self._running.values())
            self._work_ready.notify_all()
        for handle in handles:
            handle.stop("shutdown")
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- queue -----------------------------------------------------------------------------------------------

    @contextmanager
    def admission(self) -> Iterator[None]:
        """Hold a pending-job place while a new job is stored; RESOURCE_EXHAUSTED when there is none."""
        with self._lock:
            pending = len(self._active) + self._reserved
            if pending >= self._max_pending:
                raise JobError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{pending} jobs are pending (limit {self._max_pending}); retry later",
                    retry_info(10.0),
                    error_info("TOO_MANY_PENDING_JOBS", pending=str(pending)),
                )
            self._reserved += 1
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= 1

    def enqueue(self, job_id: str) -> None:
        """Queue a stored job behind the others."""
        with self._lock:
            self._active.add(job_id)
            self._queue.append(job_id)
            self._work_ready.notify()

    def withdraw(self, job_id: str) -> bool:
        """Take a queued job out of the queue (True; the caller ends it), or stop a running one's work
        (False; its worker ends it as cancelled)."""
        with self._lock:
            if job_id in self._queue:
                self._queue.remove(job_id)
                self._active.discard(job_id)
                return True
            handle = self._running.get(job_id)
        if handle is not None:
            handle.stop("cancelled")
        return False

    # -- work ------------------------------------------------------------------------------------------------

    def _next_job(self) -> tuple[str, CallHandle] | None:
        """The oldest queued job with the handle that stops its work, or None once stopping."""
        with self._lock:
            while not self._queue and not self._stopping:
                self._work_ready.wait()
            if self._stopping:
                return None
            job_id = self._queue.popleft()
            handle = self._running[job_id] = CallHandle()
            return job_id, handle

    def _work(self) -> None:
        while (taken := self._next_job()) is not None:
            job_id, handle = taken
            finished = True
            try:
                finished = self._run(job_id, handle)
            finally:
                with self._lock:
                    self._running.pop(job_id, None)
                    if finished:
                        self._active.discard(job_id)
                if finished:
                    self._events.forget(job_id)

    def _run(self, job_id: str, handle: CallHandle) -> bool:
        """Work a job to its end; False when the gateway stopped first (the job resumes at the next start)."""
        job = self._store.get(job_id)
        if job is None or job.state in TERMINAL_STATES:
            return True
        try:
            for step in STAGE_TABLE:
                if self._artifacts.has(job_id, step.result_file):
                    step.adopt_outputs(job, self._artifacts)
                    continue
                self._run_step(job, step, handle)
        except _Stopped as stopped:
            if stopped.reason == "shutdown":
                log.info("job interrupted by shutdown", extra={"job_id": job_id})
                return False
            self._events.finish(job, R.JOB_STATE_CANCELLED)
            return True
        except StageFailure as failure:
            self._events.finish(job, R.JOB_STATE_FAILED, failure.status)
            return True
        except Exception as exc:
            log.exception("job failed unexpectedly", extra={"job_id": job_id})
            status = status_pb2.Status(
                code=code_pb2.INTERNAL, message=f"the gateway failed: {type(exc).__name__}: {exc}"
            )
            self._events.finish(job, R.JOB_STATE_FAILED, status)
            return True
        self._events.finish(job, R.JOB_STATE_SUCCEEDED)
        return True

    def _run_step(self, job: Job, step: StageStep, handle: CallHandle) -> None:
        """Run one stage until it succeeds (outputs stored), fails for good (StageFailure) or is stopped."""
        attempt = 0
        while True:
            _check_stopped(handle)
            attempt += 1
            job.attempts[step.name] = job.attempts.get(step.name, 0) + 1
            job.state = R.JOB_STATE_RUNNING
            job.stage = step.stage
            job.progress.CopyFrom(common_pb2.ProgressEvent(stage=step.stage, phase="start"))
            self._events.emit(
                job,
                progress=common_pb2.ProgressEvent(
                    stage=step.stage, phase="start", message=f"attempt {job.attempts[step.name]}"
                ),
            )
            started = time.monotonic()
            try:
                output = self._call(job, step, handle)
            except StageFailure as failure:
                STAGE_SECONDS.labels(step.name, failure.code_name).observe(time.monotonic() - started)
                _check_stopped(handle)
                if self._retry.gives_up(failure, attempt):
                    if failure.retryable:
                        failure.status.message += f" (gave up after {attempt} attempts)"
                    raise
                self._before_retry(job, step, failure, attempt, handle)
                continue
            STAGE_SECONDS.labels(step.name, "OK").observe(time.monotonic() - started)
            step.store_outputs(job, output, self._artifacts)
            self._events.emit(job, stage_completed=step.stage)
            return

    def _call(self, job: Job, step: StageStep, handle: CallHandle) -> StageOutput:
        def progress(event: common_pb2.ProgressEvent) -> None:
            job.progress.CopyFrom(event)
            self._events.emit(job, progress=event)

        return step.call(self._stages, job, step.load_inputs(job.id, self._artifacts), progress, handle)

    def _before_retry(
        self, job: Job, step: StageStep, failure: StageFailure, attempt: int, handle: CallHandle
    ) -> None:
        """Record the failed attempt (metric, log, ``retrying`` event) and wait out the back-off."""
        delay = self._retry.delay(attempt, failure.retry_after_s)
        STAGE_RETRIES.labels(step.name, failure.code_name).inc()
        log.warning(
            "stage failed; retrying",
            extra={
                "job_id": job.id,
                "stage": step.name,
                "attempt": attempt,
                "code": failure.code_name,
                "error": failure.status.message,
                "retry_in_s": round(delay, 2),
            },
        )
        self._events.emit(job, retrying=failure.status)
        self._retry.wait(
            failure,
            delay,
            handle.stopped,
            lambda timeout_s, stop: self._stages.wait_until_back(step.stage, timeout_s, stop),
        )
