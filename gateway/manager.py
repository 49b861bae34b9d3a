"""The job manager: the one code path behind both front ends (gRPC and HTTP).

A submitted job is checked (:mod:`gateway.upload_checks`, :mod:`gateway.option_validation`), stored (record,
first event and photo) before the call returns, and queued on the :class:`~gateway.job_loop.JobLoop`, which
runs it through the stage services. Its changes are events (:mod:`gateway.events`) that watchers follow; the
job list is paged (:mod:`gateway.paging`); finished jobs expire (:mod:`gateway.retention`).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from gateway.api_keys import ApiKey
from gateway.artifacts import ArtifactCorrupted, ArtifactStore
from gateway.errors import JobError
from gateway.events import JobEvents, now_timestamp
from gateway.job_loop import JobLoop, LeaseSettings
from gateway.metrics import JOB_STATES, JOBS_SUBMITTED
from gateway.option_validation import validate_options
from gateway.paging import list_page
from gateway.profile_file import DEFAULT_FILE, load_profiles
from gateway.profiles import Profiles
from gateway.readiness import ReadinessMonitor, StageReadiness
from gateway.request_fields import check_artifact_name, check_job_id, check_sequence
from gateway.retention import RetentionSweeper, delete_expired
from gateway.retry import RetryPolicy
from gateway.stage_deadlines import StageDeadlines
from gateway.stages import StageClients
from gateway.store import TERMINAL_STATES, Event, Job, JobStore, StoreError, StoreUnavailable
from gateway.upload_checks import check_idempotency_key, checked_photo_media_type
from gateway.webhooks import WebhookDispatcher, WebhookSettings
from gateway.webhooks_policy import WebhookRefused
from services.common import tracing
from services.common.rpc_status import bad_request, error_info
from services.common.worker import release_heap
from synchuman.v1 import common_pb2, reconstruction_pb2

log = logging.getLogger(__name__)


def job_not_found(job_id: str) -> JobError:
    """NOT_FOUND for a job id: the same answer whether no job has it or another API key's job does."""
    return JobError(grpc.StatusCode.NOT_FOUND, f"no job with id {job_id!r}", error_info("JOB_NOT_FOUND"))


@dataclass(frozen=True)
class ManagerSettings:
    """``max_pending_jobs``: queued + running jobs before submissions get RESOURCE_EXHAUSTED; ``workers``:
    jobs worked on at once (each waits in the stage services' own queues); ``max_upload_bytes``: photo limit;
    ``retention_s``: finished jobs (record, events, files, the photo included) are deleted this many seconds
    after their creation (0: kept until deleted with ``DeleteJob``); ``leases``: how jobs are shared with
    the other gateways of the store; ``profiles``: the named output profiles jobs may name (default: the
    shipped ``gateway/profiles.toml``); ``webhooks``: signing secret, SSRF policy and retry schedule of the
    jobs' callback URLs (default: off, callback URLs refused).
    """

    max_pending_jobs: int = 64
    workers: int = 8
    max_upload_bytes: int = 32 << 20
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retention_s: float = 7 * 24 * 3600.0
    leases: LeaseSettings = field(default_factory=LeaseSettings)
    profiles: Profiles = field(default_factory=lambda: load_profiles(DEFAULT_FILE))
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)


class JobManager:
    """Owns the job store, the artifact store and the stage clients; see the module docstring."""

    def __init__(
        self, store: JobStore, artifacts: ArtifactStore, stages: StageClients, settings: ManagerSettings
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.stages = stages
        self.deadlines = StageDeadlines(stages.device, stages.call_timeout_s)
        stages.deadline_s = self.deadlines.deadline_s
        self.readiness = ReadinessMonitor(StageReadiness(stages), store)
        self.settings = settings
        self.events = JobEvents(store)
        self.loop = JobLoop(
            store,
            artifacts,
            stages,
            self.events,
            settings.retry,
            settings.workers,
            settings.max_pending_jobs,
            settings.leases,
        )
        self._sweeper = RetentionSweeper(self.delete_expired, settings.retention_s)
        self.webhooks = WebhookDispatcher(store, settings.webhooks)  # type: ignore[arg-type]  # SqlJobStore
        for state, gauge in JOB_STATES.items():
            gauge.set_function(lambda state=state: self._count(state))

    def _count(self, state: int) -> float:
        """Stored jobs in ``state`` for the metrics; NaN while the job store is unreachable (the scrape
        still answers, with the gateway's other metrics)."""
        try:
            return self.store.count_by_state().get(state, 0)
        except StoreUnavailable:
            return float("nan")

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self, owner: str) -> int:
        """Start the workers (as gateway ``owner``: see :meth:`gateway.job_loop.JobLoop.start`) and the
        retention sweep; returns the number of unfinished jobs found."""
        self.events.owner = owner
        resumed = self.loop.start(owner)
        self.webhooks.start(owner)
        if self.settings.retention_s > 0:
            self._sweeper.start()
        return resumed

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the workers; running jobs keep their stored state and resume at the next start."""
        deadline = time.monotonic() + timeout_s
        self.loop.stop(timeout_s)
        self.webhooks.stop(max(0.0, deadline - time.monotonic()))
        self._sweeper.stop(max(0.0, deadline - time.monotonic()))
        self.stages.close()

    # -- requests --------------------------------------------------------------------------------------------

    def submit(
        self,
        image: bytes,
        options: common_pb2.JobOptions,
        idempotency_key: str = "",
        owner: ApiKey | None = None,
        callback_url: str = "",
    ) -> tuple[Job, bool]:
        """Store and queue a job; returns ``(job, deduplicated)``. See ``ReconstructionService.SubmitJob``.
        The job's options are laid over its profile's (:meth:`~gateway.profiles.Profiles.apply`), and stored
        so. With ``owner``, the job belongs to that API key (its idempotency keys are its own) and counts
        against its quota (:class:`gateway.api_keys.QuotaExceeded`)."""
        check_idempotency_key(idempotency_key)
        self._check_callback(callback_url)
        # before the key's job is looked up: a bad request is refused, not replayed
        validate_options(options)  # the job's own fields, named as sent (e.g. both face-count fields set)
        options = self.settings.profiles.apply(options)
        validate_options(options)
        media = checked_photo_media_type(image, self.settings.max_upload_bytes)
        release_heap()  # the photo was decoded in full: give the decoder's freed buffers back
        if idempotency_key:
            existing = self.store.find_by_key(idempotency_key, owner.key_id if owner else "")
            if existing is not None:
                return existing, True
        self.readiness.stages.require_ready()
        self.deadlines.check_fits(options)  # options that cannot finish on the stages' devices: refused now
        with self.loop.admission():
            return self._create(image, media, options, idempotency_key, owner, callback_url)

    def _check_callback(self, callback_url: str) -> None:
        """INVALID_ARGUMENT for a callback URL the webhook policy refuses (see
        :mod:`gateway.webhooks_policy`), webhooks off included."""
        if not callback_url:
            return
        policy = self.settings.webhooks.policy if self.settings.webhooks.enabled else None
        try:
            if policy is None:
                raise WebhookRefused(
                    "this gateway sends no webhooks (its operator configured no webhook secret or allowed "
                    "no callback host); submit without callback_url"
                )
            policy.check_submitted(callback_url)
        except WebhookRefused as refused:
            raise JobError(
                grpc.StatusCode.INVALID_ARGUMENT,
                str(refused),
                bad_request("callback_url", str(refused)),
                error_info("CALLBACK_URL_REFUSED"),
            ) from None

    def _create(
        self,
        image: bytes,
        media: str,
        options: common_pb2.JobOptions,
        key: str,
        owner: ApiKey | None,
        callback_url: str,
    ) -> tuple[Job, bool]:
        job_id = secrets.token_urlsafe(12)
        now = now_timestamp()
        header = self.artifacts.put(job_id, "input", image, media)
        job = Job(
            id=job_id,
            state=reconstruction_pb2.JOB_STATE_QUEUED,
            options=options,
            effective_options=common_pb2.JobOptions(profile=options.profile),
            idempotency_key=key,
            create_time=now,
            update_time=now,
            artifacts=[reconstruction_pb2.Artifact(blob=header, create_time=now)],
            webhook=reconstruction_pb2.WebhookDelivery(url=callback_url) if callback_url else None,
        )
        first = Event(sequence=1, time=now, state=reconstruction_pb2.JOB_STATE_QUEUED)
        with tracing.job_span(job_id):  # the root of the job's spans; its context is stored with the job
            try:
                stored, created = self.loop.create(job, first, tracing.traceparent(), owner)
            except StoreError:  # e.g. over the key's quota: the photo goes with the refused job
                self.artifacts.remove_job(job_id)
                raise
        if not created:
            self.artifacts.remove_job(job_id)
            return stored, True
        self.events.created(job_id)
        JOBS_SUBMITTED.inc()
        about = {"job_id": job_id, "bytes": len(image), "media_type": media}
        log.info("job submitted", extra={**about, "key_id": owner.key_id if owner else ""})
        return job, False

    def get(self, job_id: str) -> Job:
        """The job, or NOT_FOUND (INVALID_ARGUMENT for a malformed id)."""
        job = self.store.get(check_job_id(job_id))
        if job is None:
            raise job_not_found(job_id)
        if job.webhook.url:
            delivery = self.store.webhook_delivery(job.id)  # type: ignore[attr-defined]  # SqlJobStore
            if delivery is not None:
                job.webhook.CopyFrom(delivery)
        return job

    def profiles(self) -> reconstruction_pb2.ListProfilesResponse:
        """The named output profiles with their effective options (``ListProfiles``)."""
        return self.settings.profiles.to_proto()

    def list(
        self, page_size: int = 0, page_token: str = "", state: int = 0, owner_key: str | None = None
    ) -> tuple[list[Job], str]:
        """One page of jobs (only the API key ``owner_key``'s unless None), newest first, and the token of
        the next page ("" on the last page)."""
        return list_page(self.store, page_size, page_token, state, owner_key)

    def cancel(self, job_id: str, wait_s: float = 30.0) -> Job:
        """Cancel a queued or running job (a finished job is returned as is); waits up to ``wait_s`` for a
        running job's stage call to stop."""
        job = self.get(job_id)
        if job.state in TERMINAL_STATES:
            return job
        if self.loop.withdraw(job_id):  # nobody worked on it: leased to this call now
            try:
                job = self.get(job_id)
                if job.state not in TERMINAL_STATES:
                    self.events.finish(job, reconstruction_pb2.JOB_STATE_CANCELLED)
            finally:
                self.events.forget(job_id)
                self.loop.release(job_id)
            return job
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            job = self.get(job_id)
            if job.state in TERMINAL_STATES:
                return job
            self.events.wait(0.2)
        return self.get(job_id)

    def delete(self, job_id: str) -> int:
        """Delete a finished job with its events and files; returns the number of files removed.
        FAILED_PRECONDITION while the job is queued or running, NOT_FOUND for an unknown id."""
        job = self.get(job_id)
        if job.state not in TERMINAL_STATES:
            raise JobError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"job {job_id} is {reconstruction_pb2.JobState.Name(job.state)}; "
                "cancel it first (CancelJob), then delete it",
                error_info("JOB_NOT_FINISHED"),
            )
        self.store.delete(job_id)
        self.events.forget(job_id)
        removed = self.artifacts.remove_job(job_id)
        log.info("job deleted", extra={"job_id": job_id, "files": removed})
        return removed

    def delete_expired(self, now_s: float | None = None, batch: int = 100) -> int:
        """Delete the finished jobs created more than ``retention_s`` before ``now_s`` (default: now);
        returns how many."""
        now = time.time() if now_s is None else now_s
        return delete_expired(self.store, self.delete, self.settings.retention_s, now, batch)

    def artifact_pieces(self, job_id: str, name: str) -> tuple[common_pb2.BlobHeader, Iterator[bytes]]:
        """A stored file of a job listed in ``Job.artifacts``: its header and its bytes as pieces read from
        the store while they are consumed (a large GLB is never held whole), or NOT_FOUND; DATA_LOSS when
        the stored bytes fail their checksum (after the last piece)."""
        return self._stored(job_id, name, self.artifacts.chunks)

    def _stored(
        self, job_id: str, name: str, read: Callable[[str, str], Any]
    ) -> tuple[common_pb2.BlobHeader, Any]:
        """The listed file's header and ``read(job_id, name)``; errors as :meth:`artifact_pieces`."""
        job = self.get(job_id)
        check_artifact_name(name)
        for artifact in job.artifacts:
            if artifact.blob.name == name:
                try:
                    return artifact.blob, read(job_id, name)
                except FileNotFoundError:
                    break
                except ArtifactCorrupted as exc:
                    raise JobError(
                        grpc.StatusCode.DATA_LOSS,
                        f"{exc}: the stored file is damaged; run the job again",
                        error_info("ARTIFACT_CORRUPTED"),
                    ) from exc
        names = ", ".join(a.blob.name for a in job.artifacts)
        raise JobError(
            grpc.StatusCode.NOT_FOUND,
            f"job {job_id} has no file {name!r} (yet); it has: {names}",
            error_info("ARTIFACT_NOT_FOUND"),
        )

    def watch(self, job_id: str, after_sequence: int, is_active: Callable[[], bool]) -> Iterator[Event]:
        """Events after ``after_sequence`` until the job's ``finished`` event (or until ``is_active()``
        is False); NOT_FOUND for an unknown id, INVALID_ARGUMENT for a cursor out of range."""
        check_sequence(after_sequence)
        job = self.get(job_id)
        yield from self.events.watch(job, after_sequence, is_active, lambda: self.get(job_id))
