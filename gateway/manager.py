"""The job manager: the one code path behind both front ends (gRPC and HTTP).

A submitted job is stored (record + photo) before the call returns and queued; ``workers`` threads take jobs
in order and run preprocess -> multiview -> reconstruction on the stage services. Every stage's outputs are
stored as soon as the stage returns; a stage is skipped when its outputs are already stored, so a job that
was interrupted (gateway restart) resumes at the first stage whose output is missing. A stage call that fails
with UNAVAILABLE, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED (or whose answer was corrupted) is sent again after
an exponential back-off, without re-running earlier stages. Cancelling a job stops its stage call in flight.

Every change is an event (``WatchJobResponse``) with an increasing per-job sequence number, stored in the
same transaction as the job, so watchers can resume without gaps.
"""

from __future__ import annotations

import base64
import io
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format, timestamp_pb2
from google.rpc import code_pb2, status_pb2

from gateway.artifacts import ArtifactStore, media_type
from gateway.metrics import JOB_STATES, JOBS_FINISHED, JOBS_SUBMITTED, STAGE_RETRIES, STAGE_SECONDS
from gateway.stages import CallHandle, StageClients, StageFailure, StageOutput
from gateway.store import TERMINAL_STATES, Event, Job, JobStore
from services.common.stage_io import blob_header
from services.common.stage_runtime import bad_request, error_info, retry_info
from synchuman.v1 import common_pb2, reconstruction_pb2

log = logging.getLogger(__name__)

S = common_pb2
R = reconstruction_pb2

#: Stage -> the name used in ``Job.attempts``, logs and metrics.
STAGE_NAMES = {
    S.STAGE_PREPROCESS: "preprocess",
    S.STAGE_MULTIVIEW: "multiview",
    S.STAGE_RECONSTRUCTION: "reconstruction",
}
VIEW_NAMES = tuple(f"{kind}_{i}.png" for kind in ("color", "normal") for i in range(5))
#: Files a stage stores; the last one is written last and marks the stage as complete.
STAGE_FILES = {
    S.STAGE_PREPROCESS: ("framed.png", "conditioning.png", "mask.png", "input_report.json"),
    S.STAGE_MULTIVIEW: (*VIEW_NAMES, "voxels.bin"),
    S.STAGE_RECONSTRUCTION: ("person.glb", "gaussians.ply", "mesh_obj.zip", "output_report.json"),
}
IMAGE_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "GIF": "image/gif",
    "MPO": "image/jpeg",
}
MAX_KEY_CHARS = 128


class JobError(Exception):
    """A request the manager refuses: gRPC ``code``, a message a user can act on, ``google.rpc`` details."""

    def __init__(self, code: grpc.StatusCode, message: str, *details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class _Stopped(Exception):
    """The job's work was stopped (``reason``: "cancelled" or "shutdown")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failed stage call is sent again: ``max_attempts`` in all, waiting
    ``initial_backoff_s * multiplier**(n-1)`` (at most ``max_backoff_s``, at least the stage's RetryInfo).
    """

    max_attempts: int = 20
    initial_backoff_s: float = 0.5
    multiplier: float = 2.0
    max_backoff_s: float = 15.0

    def delay(self, attempt: int, hint_s: float = 0.0) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        backoff = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return max(backoff, min(hint_s, self.max_backoff_s))


@dataclass(frozen=True)
class ManagerSettings:
    """``max_pending_jobs``: queued + running jobs before submissions get RESOURCE_EXHAUSTED; ``workers``:
    jobs worked on at once (each waits in the stage services' own queues); ``max_upload_bytes``: photo limit;
    ``retention_s``: finished jobs (record, events, files, the photo included) are deleted this many seconds
    after their creation (0: kept until deleted with ``DeleteJob``).
    """

    max_pending_jobs: int = 64
    workers: int = 8
    max_upload_bytes: int = 32 << 20
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retention_s: float = 7 * 24 * 3600.0


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def _check_range(field_name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise JobError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{field_name} is {value:g}; use a value from {low:g} to {high:g}",
            bad_request(field_name, f"must be in [{low:g}, {high:g}]"),
        )


def validate_options(options: common_pb2.JobOptions) -> None:
    """INVALID_ARGUMENT (naming the field and the allowed range) for an out-of-range option."""
    mv, rc = options.multiview, options.reconstruction
    checks = [
        (mv, "multiview", "steps", 1, 200),
        (mv, "multiview", "guidance_scale", 1, 20),
        (rc, "reconstruction", "steps", 1, 200),
        (rc, "reconstruction", "guidance_scale", 1, 20),
        (rc, "reconstruction", "texture_size", 256, 4096),
        (rc, "reconstruction", "simplify_ratio", 0, 0.99),
        (rc, "reconstruction", "bake_steps", 0, 5000),
        (rc, "reconstruction", "visibility_views", 8, 4000),
    ]
    for message, group, name, low, high in checks:
        if message.HasField(name):
            _check_range(f"options.{group}.{name}", getattr(message, name), low, high)
    if rc.bake_mode not in common_pb2.BakeMode.values():
        known = ", ".join(common_pb2.BakeMode.keys()[1:])
        raise JobError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"options.reconstruction.bake_mode {rc.bake_mode} is unknown; use one of {known}",
            bad_request("options.reconstruction.bake_mode", f"must be one of {known}"),
        )


def _image_media_type(data: bytes) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format or ""
    except (UnidentifiedImageError, OSError) as exc:
        raise JobError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "the upload is not a readable image; send a JPEG, PNG or WebP photo",
            bad_request("image", str(exc)),
        ) from exc
    return IMAGE_TYPES.get(kind, "application/octet-stream")


def _page_token(job: Job) -> str:
    raw = f"{job.create_time.seconds * 1_000_000_000 + job.create_time.nanos}:{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _parse_page_token(token: str) -> tuple[int, str]:
    try:
        ns, job_id = base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)
        return int(ns), job_id
    except Exception as exc:
        raise JobError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token is not a token this server issued; pass next_page_token of the previous page",
            bad_request("page_token", "malformed"),
        ) from exc


class JobManager:
    """Owns the job store, the artifact store and the stage clients; see the module docstring."""

    def __init__(
        self, store: JobStore, artifacts: ArtifactStore, stages: StageClients, settings: ManagerSettings
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.stages = stages
        self.settings = settings
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._version = 0
        self._queue: deque[str] = deque()
        self._active: set[str] = set()
        self._reserved = 0
        self._running: dict[str, CallHandle] = {}
        self._sequence: dict[str, int] = {}
        self._stopping = False
        self._threads: list[threading.Thread] = []
        for state, gauge in JOB_STATES.items():
            gauge.set_function(lambda state=state: self.store.count_by_state().get(state, 0))

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> int:
        """Queue every unfinished job (oldest first) and start the workers; returns the number resumed."""
        resumed = self.store.unfinished()
        with self._lock:
            for job in resumed:
                self._active.add(job.id)
                self._queue.append(job.id)
        for job in resumed:
            log.info("job resumed", extra={"job_id": job.id, "stage": STAGE_NAMES.get(job.stage, "")})
        for i in range(self.settings.workers):
            thread = threading.Thread(target=self._work, name=f"gateway-job-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.settings.retention_s > 0:
            sweeper = threading.Thread(target=self._sweep, name="gateway-retention", daemon=True)
            sweeper.start()
            self._threads.append(sweeper)
        return len(resumed)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the workers; running jobs keep their stored state and resume at the next start."""
        with self._lock:
            self._stopping = True
            handles = list(self._running.values())
            self._changed.notify_all()
        for handle in handles:
            handle.stop("shutdown")
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.stages.close()

    # -- requests --------------------------------------------------------------------------------------------

    def submit(
        self, image: bytes, options: common_pb2.JobOptions, idempotency_key: str = ""
    ) -> tuple[Job, bool]:
        """Store and queue a job; returns ``(job, deduplicated)``. See ``ReconstructionService.SubmitJob``."""
        if len(idempotency_key) > MAX_KEY_CHARS or not idempotency_key.isprintable():
            raise JobError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the idempotency key must be at most {MAX_KEY_CHARS} printable characters",
                bad_request("idempotency_key", "too long or not printable"),
            )
        if idempotency_key:
            existing = self.store.find_by_key(idempotency_key)
            if existing is not None:
                return existing, True
        validate_options(options)
        if not image:
            raise JobError(
                grpc.StatusCode.INVALID_ARGUMENT, "the photo is empty", bad_request("image", "no bytes sent")
            )
        if len(image) > self.settings.max_upload_bytes:
            raise JobError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the photo is {len(image)} bytes; the limit is {self.settings.max_upload_bytes}",
                bad_request("image", "too large"),
            )
        media = _image_media_type(image)
        with self._lock:
            pending = len(self._active) + self._reserved
            if pending >= self.settings.max_pending_jobs:
                raise JobError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{pending} jobs are pending (limit {self.settings.max_pending_jobs}); retry later",
                    retry_info(10.0),
                    error_info("TOO_MANY_PENDING_JOBS", pending=str(pending)),
                )
            self._reserved += 1
        try:
            return self._create(image, media, options, idempotency_key)
        finally:
            with self._lock:
                self._reserved -= 1

    def _create(self, image: bytes, media: str, options: common_pb2.JobOptions, key: str) -> tuple[Job, bool]:
        job_id = secrets.token_urlsafe(12)
        now = _now()
        header = self.artifacts.put(job_id, "input", image, media)
        job = Job(
            id=job_id,
            state=R.JOB_STATE_QUEUED,
            options=options,
            idempotency_key=key,
            create_time=now,
            update_time=now,
            artifacts=[R.Artifact(blob=header, create_time=now)],
        )
        event = Event(sequence=1, time=now, state=R.JOB_STATE_QUEUED)
        stored, created = self.store.create(job, event)
        if not created:
            self.artifacts.remove_job(job_id)
            return stored, True
        with self._lock:
            self._sequence[job_id] = 1
            self._active.add(job_id)
            self._queue.append(job_id)
            self._notify()
        JOBS_SUBMITTED.inc()
        log.info("job submitted", extra={"job_id": job_id, "bytes": len(image), "media_type": media})
        return job, False

    def get(self, job_id: str) -> Job:
        """The job, or NOT_FOUND."""
        job = self.store.get(job_id)
        if job is None:
            raise JobError(
                grpc.StatusCode.NOT_FOUND, f"no job with id {job_id!r}", error_info("JOB_NOT_FOUND")
            )
        return job

    def list(self, page_size: int = 0, page_token: str = "", state: int = 0) -> tuple[list[Job], str]:
        """One page of jobs, newest first, and the token of the next page ("" on the last page)."""
        if page_size > 1000:
            raise JobError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"page_size is {page_size}; use 1 to 1000",
                bad_request("page_size", "must be in [1, 1000]"),
            )
        size = page_size or 50
        before = _parse_page_token(page_token) if page_token else None
        jobs = self.store.list(size + 1, state, before)
        more = len(jobs) > size
        jobs = jobs[:size]
        return jobs, _page_token(jobs[-1]) if more else ""

    def cancel(self, job_id: str, wait_s: float = 30.0) -> Job:
        """Cancel a queued or running job (a finished job is returned as is)."""
        with self._lock:
            job = self.get(job_id)
            if job.state in TERMINAL_STATES:
                return job
            if job_id in self._queue:
                self._queue.remove(job_id)
                self._active.discard(job_id)
                return self._finish(job, R.JOB_STATE_CANCELLED)
            handle = self._running.get(job_id)
        if handle is not None:
            handle.stop("cancelled")
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            job = self.get(job_id)
            if job.state in TERMINAL_STATES:
                return job
            with self._lock:
                self._changed.wait(0.2)
        return self.get(job_id)

    def delete(self, job_id: str) -> int:
        """Delete a finished job with its events and files; returns the number of files removed.
        FAILED_PRECONDITION while the job is queued or running, NOT_FOUND for an unknown id."""
        with self._lock:
            job = self.get(job_id)
            if job.state not in TERMINAL_STATES:
                raise JobError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"job {job_id} is {R.JobState.Name(job.state)}; cancel it first (CancelJob), "
                    "then delete it",
                    error_info("JOB_NOT_FINISHED"),
                )
            self.store.delete(job_id)
            self._sequence.pop(job_id, None)
        removed = self.artifacts.remove_job(job_id)
        log.info("job deleted", extra={"job_id": job_id, "files": removed})
        return removed

    def delete_expired(self, now_s: float | None = None, batch: int = 100) -> int:
        """Delete the finished jobs created more than ``retention_s`` before ``now_s``; returns how many."""
        cutoff_ns = int(((time.time() if now_s is None else now_s) - self.settings.retention_s) * 1e9)
        deleted = 0
        while ids := self.store.finished_before(cutoff_ns, batch):
            for job_id in ids:
                try:
                    self.delete(job_id)
                    deleted += 1
                except JobError:  # deleted meanwhile by a client
                    continue
            if len(ids) < batch:
                break
        return deleted

    def _sweep(self) -> None:
        """Delete expired jobs now and then until the manager stops."""
        interval_s = min(600.0, max(1.0, self.settings.retention_s / 10))
        while True:
            try:
                count = self.delete_expired()
                if count:
                    log.info("expired jobs deleted", extra={"jobs": count})
            except Exception:  # keep sweeping; the next pass retries
                log.exception("retention sweep failed")
            with self._lock:
                if self._changed.wait_for(lambda: self._stopping, timeout=interval_s):
                    return

    def artifact(self, job_id: str, name: str) -> tuple[common_pb2.BlobHeader, bytes]:
        """A stored file of a job listed in ``Job.artifacts`` (header, bytes), or NOT_FOUND."""
        job = self.get(job_id)
        for artifact in job.artifacts:
            if artifact.blob.name == name:
                try:
                    return artifact.blob, self.artifacts.get(job_id, name)
                except FileNotFoundError:
                    break
        names = ", ".join(a.blob.name for a in job.artifacts)
        raise JobError(
            grpc.StatusCode.NOT_FOUND,
            f"job {job_id} has no file {name!r} (yet); it has: {names}",
            error_info("ARTIFACT_NOT_FOUND"),
        )

    def next_events(self, job_id: str, after_sequence: int, timeout_s: float) -> list[Event]:
        """Events after ``after_sequence``, waiting up to ``timeout_s`` for one when there are none yet."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                version = self._version
            events = self.store.events(job_id, after_sequence)
            remaining = deadline - time.monotonic()
            if events or remaining <= 0:
                return events
            with self._lock:
                if self._version == version:
                    self._changed.wait(remaining)

    def watch(self, job_id: str, after_sequence: int, is_active: Callable[[], bool]) -> Iterator[Event]:
        """Events after ``after_sequence`` until the job's ``finished`` event (or until ``is_active()``
        is False).
        """
        job = self.get(job_id)
        sequence = after_sequence
        while is_active():
            events = self.next_events(job_id, sequence, 1.0)
            for event in events:
                yield event
                sequence = event.sequence
                if event.WhichOneof("event") == "finished":
                    return
            if not events and job.state in TERMINAL_STATES:
                return
            if not events:
                job = self.get(job_id)

    # -- work ------------------------------------------------------------------------------------------------

    def _notify(self) -> None:
        self._version += 1
        self._changed.notify_all()

    def _emit(self, job: Job, **event: Any) -> None:
        """Record ``job`` (already updated) and one event of it; wakes watchers."""
        now = _now()
        job.update_time.CopyFrom(now)
        with self._lock:
            if job.id not in self._sequence:
                self._sequence[job.id] = self.store.last_sequence(job.id)
            self._sequence[job.id] += 1
            record = Event(sequence=self._sequence[job.id], time=now, state=job.state, **event)
            self.store.save(job, record)
            self._notify()

    def _finish(self, job: Job, state: int, error: status_pb2.Status | None = None) -> Job:
        job.state = state
        job.end_time.CopyFrom(_now())
        if error is not None:
            job.error.CopyFrom(error)
        final = Job()
        final.CopyFrom(job)
        final.update_time.CopyFrom(job.end_time)
        self._emit(job, finished=final)
        JOBS_FINISHED.labels(R.JobState.Name(state)).inc()
        log.info(
            "job finished",
            extra={"job_id": job.id, "state": R.JobState.Name(state), "error": job.error.message},
        )
        return job

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._changed.wait()
                if self._stopping:
                    return
                job_id = self._queue.popleft()
                handle = CallHandle()
                self._running[job_id] = handle
            finished = True
            try:
                finished = self._run(job_id, handle)
            finally:
                with self._lock:
                    self._running.pop(job_id, None)
                    if finished:
                        self._active.discard(job_id)
                        self._sequence.pop(job_id, None)

    def _run(self, job_id: str, handle: CallHandle) -> bool:
        """Work a job to its end; False when the gateway stopped first (the job resumes at the next start)."""
        job = self.get(job_id)
        if job.state in TERMINAL_STATES:
            return True
        try:
            for stage in STAGE_NAMES:
                if self.artifacts.has(job_id, STAGE_FILES[stage][-1]):
                    self._adopt_outputs(job, stage)
                    continue
                self._run_stage(job, stage, handle)
        except _Stopped as stopped:
            if stopped.reason == "shutdown":
                log.info("job interrupted by shutdown", extra={"job_id": job_id})
                return False
            self._finish(job, R.JOB_STATE_CANCELLED)
            return True
        except StageFailure as failure:
            self._finish(job, R.JOB_STATE_FAILED, failure.status)
            return True
        except Exception as exc:
            log.exception("job failed unexpectedly", extra={"job_id": job_id})
            status = status_pb2.Status(
                code=code_pb2.INTERNAL, message=f"the gateway failed: {type(exc).__name__}: {exc}"
            )
            self._finish(job, R.JOB_STATE_FAILED, status)
            return True
        self._finish(job, R.JOB_STATE_SUCCEEDED)
        return True

    def _check_stopped(self, handle: CallHandle) -> None:
        if handle.reason:
            raise _Stopped(handle.reason)

    def _run_stage(self, job: Job, stage: int, handle: CallHandle) -> None:
        name = STAGE_NAMES[stage]
        policy = self.settings.retry
        attempt = 0
        while True:
            self._check_stopped(handle)
            attempt += 1
            job.attempts[name] = job.attempts.get(name, 0) + 1
            job.state = R.JOB_STATE_RUNNING
            job.stage = stage
            job.progress.CopyFrom(common_pb2.ProgressEvent(stage=stage, phase="start"))
            self._emit(
                job,
                progress=common_pb2.ProgressEvent(
                    stage=stage, phase="start", message=f"attempt {job.attempts[name]}"
                ),
            )
            started = time.monotonic()
            try:
                output = self._call(job, stage, handle)
            except StageFailure as failure:
                STAGE_SECONDS.labels(name, failure.code_name).observe(time.monotonic() - started)
                self._check_stopped(handle)
                if not failure.retryable or attempt >= policy.max_attempts:
                    if failure.retryable:
                        failure.status.message += f" (gave up after {attempt} attempts)"
                    raise
                delay = policy.delay(attempt, failure.retry_after_s)
                STAGE_RETRIES.labels(name, failure.code_name).inc()
                log.warning(
                    "stage failed; retrying",
                    extra={
                        "job_id": job.id,
                        "stage": name,
                        "attempt": attempt,
                        "code": failure.code_name,
                        "error": failure.status.message,
                        "retry_in_s": round(delay, 2),
                    },
                )
                self._emit(job, retrying=failure.status)
                if failure.status.code == code_pb2.UNAVAILABLE:  # down or restarting: retry once it is back
                    if not handle.stopped.wait(min(delay, policy.initial_backoff_s)):
                        self.stages.wait_until_back(stage, delay - policy.initial_backoff_s, handle.stopped)
                else:
                    handle.stopped.wait(delay)
                continue
            STAGE_SECONDS.labels(name, "OK").observe(time.monotonic() - started)
            self._store_outputs(job, stage, output)
            self._emit(job, stage_completed=stage)
            return

    def _call(self, job: Job, stage: int, handle: CallHandle) -> StageOutput:
        def progress(event: common_pb2.ProgressEvent) -> None:
            job.progress.CopyFrom(event)
            self._emit(job, progress=event)

        get = self.artifacts.get
        if stage == S.STAGE_PREPROCESS:
            return self.stages.preprocess(
                job.id, get(job.id, "input"), job.options.preprocess, progress, handle
            )
        if stage == S.STAGE_MULTIVIEW:
            inputs = {name: get(job.id, name) for name in ("framed.png", "conditioning.png")}
            return self.stages.multiview(job.id, inputs, job.options.multiview, progress, handle)
        inputs = {name: get(job.id, name) for name in ("conditioning.png", *VIEW_NAMES)}
        structure = common_pb2.VoxelStructure.FromString(get(job.id, "voxels.bin"))
        return self.stages.reconstruct(
            job.id, structure, inputs, job.options.reconstruction, progress, handle
        )

    def _store_outputs(self, job: Job, stage: int, output: StageOutput) -> None:
        """Write the stage's files (its marker file last) and list them in the job."""
        files = dict(output.blobs)
        media = dict(output.media)
        if stage == S.STAGE_PREPROCESS:
            job.input_report.CopyFrom(output.result.report)
            files["input_report.json"] = json_format.MessageToJson(output.result.report).encode()
        elif stage == S.STAGE_MULTIVIEW:
            files["voxels.bin"] = output.result.structure.SerializeToString()
        else:
            job.output_report.CopyFrom(output.result.report)
            files["output_report.json"] = json_format.MessageToJson(output.result.report).encode()
        marker = STAGE_FILES[stage][-1]
        now = _now()
        for name in sorted(files, key=lambda n: n == marker):
            header = self.artifacts.put(job.id, name, files[name], media.get(name, ""))
            self._list_artifact(job, R.Artifact(blob=header, stage=stage, create_time=now))

    def _adopt_outputs(self, job: Job, stage: int) -> None:
        """List a stage's already stored files in the job (after a restart between writing and recording)."""
        listed = {a.blob.name for a in job.artifacts}
        now = _now()
        for name in STAGE_FILES[stage]:
            if name not in listed and self.artifacts.has(job.id, name):
                header = blob_header(name, media_type(name), self.artifacts.get(job.id, name))
                self._list_artifact(job, R.Artifact(blob=header, stage=stage, create_time=now))
        if stage == S.STAGE_PREPROCESS and not job.HasField("input_report"):
            json_format.Parse(self.artifacts.get(job.id, "input_report.json"), job.input_report)
        if stage == S.STAGE_RECONSTRUCTION and not job.HasField("output_report"):
            json_format.Parse(self.artifacts.get(job.id, "output_report.json"), job.output_report)

    @staticmethod
    def _list_artifact(job: Job, artifact: R.Artifact) -> None:
        for i, existing in enumerate(job.artifacts):
            if existing.blob.name == artifact.blob.name:
                job.artifacts[i].CopyFrom(artifact)
                return
        job.artifacts.append(artifact)
