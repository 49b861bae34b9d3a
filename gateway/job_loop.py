"""The job loop: ``workers`` threads, each taking the oldest unfinished job nobody works on from the job store
(the queue is the store, shared by every gateway on it) and walking it through
:data:`gateway.stage_table.STAGE_TABLE` on the stage services.

A job is worked by one gateway at a time: taking it leases it to this gateway (:class:`LeaseSettings`), a
heartbeat renews the leases every ``lease_s / 3``, and every write of the job is fenced by the lease. A
gateway that dies stops renewing; once its leases expire another gateway takes the jobs. Every stage's
outputs are stored as soon as the stage returns and a stage whose result file is already stored is skipped,
so the next gateway (or this one after a restart) resumes a job at the first stage without one. A failed
stage call is sent again as :class:`gateway.retry.RetryPolicy` says, without re-running earlier stages: the
job is released to the store with its back-off as ``run_after`` (a waiting job holds no lease and no worker;
any gateway takes it once due; a stage that was down makes its waiting jobs due as soon as it is back, see
:mod:`gateway.stage_comeback`).

Idle workers wait for work: woken at once by a submission here, by the store's notifications (PostgreSQL's
``LISTEN/NOTIFY``: a job submitted or released on any gateway) and otherwise when the earliest waiting job is
due or every ``poll_s``, whichever comes first (the fallback, and SQLite's only way). Stopping a job
(cancelled here or, through the store's cancel flag, on another gateway; the gateway shutting down; its lease
lost) stops its stage call in flight; a job stopped by a shutdown is released at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from google.rpc import code_pb2, status_pb2

from gateway.api_keys import ApiKey
from gateway.artifacts import ArtifactStore
from gateway.errors import JobError
from gateway.events import JobEvents
from gateway.job_dispatch import WorkerDispatch
from gateway.metrics import STAGE_RETRIES, STAGE_SECONDS
from gateway.retry import RetryPolicy, stage_down
from gateway.stage_capacity import StageCapacity
from gateway.stage_comeback import StageComeback
from gateway.stage_table import STAGE_TABLE, StageStep, stage_name
from gateway.stages import CallHandle, StageClients, StageFailure, StageOutput
from gateway.store import TERMINAL_STATES, Event, Job, JobStore, LeaseLost, Listener, StoreUnavailable
from services.common import tracing
from services.common.conversions import progress_event
from services.common.rpc_status import error_info, retry_info
from services.common.worker import release_heap
from synchuman.v1 import common_pb2, reconstruction_pb2

log = logging.getLogger(__name__)


#: Why a job's work stops (``CallHandle.stop`` reasons), and how a worker's turn with a job ended.
CANCELLED, SHUTDOWN, LEASE_LOST, FINISHED = "cancelled", "shutdown", "lease lost", "finished"


@dataclass(frozen=True)
class LeaseSettings:
    """``lease_s``: how long a job stays leased to this gateway without a heartbeat (seconds; a dead gateway's
    jobs wait this long before another takes them); ``poll_s``: how often an idle worker looks for jobs
    without being woken (a submission here, a store notification or a waiting job's due time wakes one
    sooner): the only way to see jobs left by a dead gateway, and on SQLite those submitted elsewhere."""

    lease_s: float = 30.0
    poll_s: float = 1.0

    @property
    def heartbeat_s(self) -> float:
        """Seconds between two renewals of this gateway's leases."""
        return self.lease_s / 3


class _Backoff(Exception):
    """The stage call failed and is retried in ``delay_s``: the job goes back to the store until then;
    ``stage``: a stage that was down, whose comeback makes the job due early (None: wait the whole delay)."""

    def __init__(self, delay_s: float, stage: int | None) -> None:
        super().__init__(f"retry in {delay_s:.2f} s")
        self.delay_s = delay_s
        self.stage = stage


class _Stopped(Exception):
    """The job's work was stopped (``reason``: :data:`CANCELLED`, :data:`SHUTDOWN` or :data:`LEASE_LOST`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_stopped(handle: CallHandle) -> None:
    if handle.reason:
        raise _Stopped(handle.reason)


class JobLoop:
    """Workers and heartbeat; see the module docstring. ``max_pending_jobs``: unfinished jobs in the store
    (all gateways) before :meth:`admission` refuses new ones."""

    def __init__(
        self,
        store: JobStore,
        artifacts: ArtifactStore,
        stages: StageClients,
        events: JobEvents,
        retry: RetryPolicy,
        workers: int,
        max_pending_jobs: int,
        leases: LeaseSettings,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._stages = stages
        self._capacity = StageCapacity(stages.capacity)
        self._events = events
        self._retry = retry
        self._workers = workers
        self._max_pending = max_pending_jobs
        self._leases = leases
        self._owner = ""
        self._lock = threading.Lock()
        self._dispatch = WorkerDispatch(self._lock)
        self._listener: Listener | None = None
        self._comeback = StageComeback(
            lambda stage, timeout_s, stop: stages.wait_until_back(stage, timeout_s, stop),
            self._make_due,
            retry.initial_backoff_s,
        )
        self._reserved = 0
        self._running: dict[str, CallHandle] = {}
        self._taken_at: dict[str, float] = {}
        self._claimed: set[str] = set()
        self._cancel_on_take: set[str] = set()
        self._unused: frozenset[str] = frozenset()  # held leases no worker here used at the last heartbeat
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self, owner: str) -> int:
        """Start the workers and the heartbeat as gateway ``owner`` (its id in the store: unique among live
        gateways, the same across restarts of one), after releasing the leases a previous life of ``owner``
        left; returns the number of unfinished jobs (in any gateway's hands) found."""
        self._owner = owner
        released = self._store.release_all(owner)
        unfinished = self._store.unfinished()
        for job in unfinished:
            log.info("job unfinished at start", extra={"job_id": job.id, "stage": stage_name(job.stage)})
        if released:
            log.info("leases of the previous run released", extra={"owner": owner, "jobs": released})
        for i in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"gateway-job-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        heartbeat = threading.Thread(target=self._heartbeat, name="gateway-lease-heartbeat", daemon=True)
        heartbeat.start()
        self._threads.append(heartbeat)
        self._listener = self._store.listen(self._dispatch.wake)
        return len(unfinished)

    def stop(self, timeout_s: float) -> None:
        """Stop the workers and their stage calls (waiting up to ``timeout_s``); running jobs keep their
        stored state."""
        self._dispatch.stop()
        with self._lock:  # a job taken from here on is stopped as it is registered
            handles = list(self._running.values())
        self._stopped.set()
        if self._listener is not None:
            self._listener.close()
        for handle in handles:
            handle.stop(SHUTDOWN)
        deadline = time.monotonic() + timeout_s
        self._comeback.stop(timeout_s)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- queue -----------------------------------------------------------------------------------------------

    @contextmanager
    def admission(self) -> Iterator[None]:
        """Hold a pending-job place while a new job is stored; RESOURCE_EXHAUSTED when there is none."""
        counts = self._store.count_by_state()
        unfinished = sum(n for state, n in counts.items() if state not in TERMINAL_STATES)
        with self._lock:
            pending = unfinished + self._reserved
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

    def create(
        self, job: Job, event: Event, trace_context: str = "", owner: ApiKey | None = None
    ) -> tuple[Job, bool]:
        """Store a new job with its first event, ``trace_context`` and ``owner`` (the API key it belongs to;
        see :meth:`gateway.store.JobStore.create`): leased to this gateway and handed to a worker here when
        one is idle, else queued for any gateway (the store notifies them); see
        :mod:`gateway.job_dispatch`."""

        def store(keep: bool) -> tuple[Job, bool]:
            lease_owner = self._owner if keep else ""
            return self._store.create(
                job, event, lease_owner, self._leases.lease_s, trace_context=trace_context, owner=owner
            )

        return self._dispatch.create(store)

    def _make_due(self, job_ids: list[str]) -> None:
        """Jobs waiting for a stage that is back: due now (see :mod:`gateway.stage_comeback`)."""
        try:
            self._store.make_due(job_ids)
        except StoreUnavailable as exc:
            log.warning("could not make jobs due early", extra={"jobs": job_ids, "error": str(exc)})
        self._dispatch.wake()

    def withdraw(self, job_id: str) -> bool:
        """For a cancellation: lease a job nobody works on to this gateway (True; the caller ends it and
        :meth:`release` s it), or have its work stopped (False): here directly, on another gateway through
        the store's cancel flag, which that gateway's next heartbeat sees; its worker ends it as cancelled."""
        with self._lock:  # a worker here registers a job it took under this lock: see _next_job
            handle = self._running.get(job_id)
            if handle is None:
                if self._store.claim(self._owner, job_id, self._leases.lease_s) is not None:
                    self._claimed.add(job_id)
                    return True
                if self._store.lease_owner(job_id) == self._owner:  # a worker here is registering it
                    self._cancel_on_take.add(job_id)
                    return False
        if handle is not None:
            handle.stop(CANCELLED)
            return False
        if self._store.request_cancel(job_id):
            log.info("cancel requested from the gateway holding the job", extra={"job_id": job_id})
        return False

    def release(self, job_id: str) -> None:
        """Give up this gateway's lease of a job (after :meth:`withdraw` returned True)."""
        try:
            self._release_quietly(job_id)
        finally:
            with self._lock:
                self._claimed.discard(job_id)

    # -- work ------------------------------------------------------------------------------------------------

    def _next_job(self) -> tuple[Job, CallHandle] | None:
        """A job submitted here, else the oldest due job nobody works on, leased to this gateway, with the
        handle that stops its work; None once stopping. Waits for one (see :mod:`gateway.job_dispatch`)."""
        return self._dispatch.next(self._look, self._register)

    def _register(self, job: Job) -> tuple[Job, CallHandle]:
        """Record a job a worker here took (under the lock); the handle that stops its work."""
        handle = self._running[job.id] = CallHandle()
        self._taken_at[job.id] = time.monotonic()
        if self._dispatch.stopping:
            handle.stop(SHUTDOWN)
        elif job.id in self._cancel_on_take:
            handle.stop(CANCELLED)
        self._cancel_on_take.discard(job.id)
        return job, handle

    def _look(self) -> tuple[Job | None, float]:
        """Acquire one due job; with none, the seconds to sleep before looking again (until the next waiting
        job is due, at most ``poll_s``)."""
        try:
            taken = self._store.acquire(self._owner, self._leases.lease_s, 1)
            due_s = None if taken else self._store.next_due_s()
        except StoreUnavailable as exc:
            log.warning("job store unreachable; will look for jobs again", extra={"error": str(exc)})
            return None, self._leases.poll_s
        if taken:
            return taken[0], 0.0
        return None, self._leases.poll_s if due_s is None else min(due_s, self._leases.poll_s)

    def _work(self) -> None:
        while (taken := self._next_job()) is not None:
            job, handle = taken
            self._events.forget(job.id)  # its events may have been written by another gateway
            outcome: str | _Backoff = LEASE_LOST
            try:
                outcome = self._run(job, handle)
            finally:
                with self._lock:
                    self._running.pop(job.id, None)
                    self._taken_at.pop(job.id, None)
                self._events.forget(job.id)
                if isinstance(outcome, _Backoff):
                    self._back_off(job.id, outcome)
                elif outcome != LEASE_LOST:
                    self._release_quietly(job.id)

    def _back_off(self, job_id: str, backoff: _Backoff) -> None:
        """Hand a job whose stage call failed back to the store, due after its back-off (watching its stage's
        comeback when it was down); the worker looking for its next job sleeps until then at most."""
        if self._release_quietly(job_id, backoff.delay_s) and backoff.stage is not None:
            self._comeback.watch(backoff.stage, job_id, backoff.delay_s)

    def _release_quietly(self, job_id: str, run_after_s: float = 0.0) -> bool:
        """Release a lease (the job due in ``run_after_s``); if the store cannot be reached, the lease simply
        expires (False)."""
        try:
            self._store.release(self._owner, job_id, run_after_s)
        except StoreUnavailable as exc:
            log.warning("could not release a lease", extra={"job_id": job_id, "error": str(exc)})
            return False
        return True

    def _heartbeat(self) -> None:
        """Renew this gateway's leases every ``heartbeat_s``; stop the work of jobs lost to another gateway
        and of jobs a client cancelled elsewhere; release leases no worker here uses (left by a release
        that failed while the store was unreachable)."""
        while not self._stopped.wait(self._leases.heartbeat_s):
            started = time.monotonic()
            try:
                renewal = self._store.renew(self._owner, self._leases.lease_s)
            except StoreUnavailable as exc:
                log.warning("job store unreachable; leases not renewed", extra={"error": str(exc)})
                continue
            with self._lock:
                # A job whose end is being written (no longer in _taken_at) has left the renewal's ``held``
                # set on its own, not lost its lease.
                running = [
                    (i, h) for i, h in self._running.items() if self._taken_at.get(i, started) < started
                ]
                unused = renewal.held - set(self._running) - self._claimed - self._dispatch.handed_off()
            # A lease a worker acquired but has not registered yet looks unused for a moment: release only
            # those unused at two heartbeats in a row.
            stale, self._unused = unused & self._unused, unused
            for job_id in stale:
                self._release_quietly(job_id)
            for job_id, handle in running:
                if job_id in renewal.cancel:
                    handle.stop(CANCELLED)
                elif job_id not in renewal.held:
                    log.warning("lease lost to another gateway; stopping here", extra={"job_id": job_id})
                    handle.stop(LEASE_LOST)

    def _run(self, job: Job, handle: CallHandle) -> str | _Backoff:
        """Work a job to its end (returns :data:`FINISHED`), or until a stage call must be retried later (the
        :class:`_Backoff`), or until it is stopped by a shutdown or an unreachable store (:data:`SHUTDOWN`) or
        by the loss of its lease (:data:`LEASE_LOST`); either way its stored state lets any gateway resume
        it."""
        job_id = job.id
        if job.state in TERMINAL_STATES:
            return FINISHED
        try:
            # the stage calls are traced as children of the job's span (stored with it by the submission)
            with tracing.continued(self._store.trace_context(job_id) if tracing.enabled() else ""):
                for step in STAGE_TABLE:
                    if self._artifacts.has(job_id, step.result_file):
                        step.adopt_outputs(job, self._artifacts)
                        continue
                    self._run_step(job, step, handle)
                return self._end(job, reconstruction_pb2.JOB_STATE_SUCCEEDED)
        except _Backoff as backoff:
            with self._lock:  # from here on the heartbeat does not take the released lease for a lost one
                self._taken_at.pop(job_id, None)
            return backoff
        except _Stopped as stopped:
            if stopped.reason in (SHUTDOWN, LEASE_LOST):
                log.info("job work stopped", extra={"job_id": job_id, "reason": stopped.reason})
                return stopped.reason
            return self._end(job, reconstruction_pb2.JOB_STATE_CANCELLED)
        except LeaseLost:
            log.warning("lease lost to another gateway; leaving the job to it", extra={"job_id": job_id})
            return LEASE_LOST
        except StoreUnavailable as exc:
            log.warning("store unreachable; job left for later", extra={"job_id": job_id, "error": str(exc)})
            return SHUTDOWN
        except StageFailure as failure:
            return self._end(job, reconstruction_pb2.JOB_STATE_FAILED, failure.status)
        except Exception as exc:
            log.exception("job failed unexpectedly", extra={"job_id": job_id})
            status = status_pb2.Status(
                code=code_pb2.INTERNAL, message=f"the gateway failed: {type(exc).__name__}: {exc}"
            )
            return self._end(job, reconstruction_pb2.JOB_STATE_FAILED, status)

    def _end(self, job: Job, state: int, error: status_pb2.Status | None = None) -> str:
        """Record the job's end; :data:`FINISHED`, or :data:`LEASE_LOST` (left to the new holder)."""
        release_heap()  # the job's stage outputs passed through memory: give the freed pages back
        with self._lock:  # from here on the heartbeat does not take the ended job's lease for a lost one
            self._taken_at.pop(job.id, None)
        try:
            self._events.finish(job, state, error)
        except LeaseLost:
            return LEASE_LOST
        return FINISHED

    def _run_step(self, job: Job, step: StageStep, handle: CallHandle) -> None:
        """Run one attempt of a stage: it succeeds (outputs stored), fails for good (StageFailure), must be
        retried later (:class:`_Backoff`) or is stopped. Attempts are counted in the job (``attempts``), so
        the retry limit holds whichever gateways made them."""
        _check_stopped(handle)
        attempt = job.attempts[step.name] = job.attempts.get(step.name, 0) + 1
        job.state = reconstruction_pb2.JOB_STATE_RUNNING
        job.stage = step.stage
        job.progress.CopyFrom(progress_event(step.stage, phase="start"))
        message = f"attempt {attempt} on gateway {self._owner}"
        self._events.emit(job, progress=progress_event(step.stage, phase="start", message=message))
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
            raise self._backoff(job, step, failure, attempt) from failure
        STAGE_SECONDS.labels(step.name, "OK").observe(time.monotonic() - started)
        step.store_outputs(job, output, self._artifacts)
        self._events.emit(job, stage_completed=step.stage)

    def _call(self, job: Job, step: StageStep, handle: CallHandle) -> StageOutput:
        def progress(event: common_pb2.ProgressEvent) -> None:
            job.progress.CopyFrom(event)
            self._events.emit(job, progress=event)

        with self._capacity.slot(step.stage, handle.stopped):  # wait here while the stage is full
            _check_stopped(handle)
            return step.call(self._stages, job, step.load_inputs(job.id, self._artifacts), progress, handle)

    def _backoff(self, job: Job, step: StageStep, failure: StageFailure, attempt: int) -> _Backoff:
        """Record the failed attempt (metric, log, ``retrying`` event); the back-off to wait in the store."""
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
        return _Backoff(delay, step.stage if stage_down(failure) else None)
