"""Tenants: who a call comes from (its bearer token) and the jobs it may see, for both front ends.

:meth:`TenantAccess.authenticate` turns the ``authorization`` value of a call (gRPC metadata or HTTP header)
into a :class:`Tenant`:

* the gateway's shared token (``--auth-token``) is the **admin**: it sees and manages every job, as the one
  tenant of a deployment without API keys;
* an API key (:mod:`gateway.api_keys`, made by ``synchuman keys create``) is its own tenant, or an admin
  when created with ``--admin``; a revoked or unknown key is UNAUTHENTICATED;
* no token: UNAUTHENTICATED once a shared token is configured or any API key was ever created; on a gateway
  with neither, every call is the admin, exactly as before keys existed.

:class:`TenantJobs` is the manager as one tenant sees it: a job of another key is NOT_FOUND on every
operation (get, watch, download, cancel, delete) with the very answer an unknown id gets, the job list holds
only the tenant's jobs, and submissions belong to the key and count against its :class:`~gateway.api_keys.
Quota`: over a limit, RESOURCE_EXHAUSTED (HTTP 429) with ``QuotaFailure``, ``ErrorInfo`` and, when waiting
helps, ``RetryInfo`` (HTTP ``Retry-After``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2

from gateway.api_keys import ApiKey, QuotaExceeded, key_id_of, key_sha256
from gateway.artifacts import ArtifactStore
from gateway.errors import JobError
from gateway.manager import JobManager, job_not_found
from gateway.metrics import AUTH_REFUSALS, QUOTA_REFUSALS
from gateway.request_fields import check_job_id
from gateway.store import Event, Job
from services.common.auth import GATEWAY_TOKEN_HINT
from services.common.rpc_status import error_info, retry_info
from synchuman.v1 import common_pb2, reconstruction_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tenant:
    """The caller: ``key`` (None: the shared token, or an open gateway) and whether it sees every job."""

    key: ApiKey | None = None
    admin: bool = True


#: The shared token's tenant (and every caller of a gateway without token and keys).
ADMIN = Tenant()


def _unauthenticated(reason: str, message: str) -> JobError:
    """UNAUTHENTICATED, counted by ``reason`` (``no_token``, ``wrong_token``, ``revoked_key``)."""
    AUTH_REFUSALS.labels(reason).inc()
    return JobError(grpc.StatusCode.UNAUTHENTICATED, message, error_info(reason.upper()))


def quota_error(exc: QuotaExceeded) -> JobError:
    """A key's refused quota as RESOURCE_EXHAUSTED: ``QuotaFailure`` naming the key and the limit,
    ``ErrorInfo`` ``QUOTA_EXCEEDED`` and, when waiting helps (``retry_s`` > 0), ``RetryInfo``."""
    violation = error_details_pb2.QuotaFailure.Violation(
        subject=f"api_key:{exc.key_id}",
        description=str(exc),
        quota_metric=exc.metric,
        quota_id=f"{exc.metric}-per-key",
        quota_value=exc.limit,
    )
    advice = f"; retry in {exc.retry_s:.0f} s" if exc.retry_s else "; send a smaller photo"
    details = [error_details_pb2.QuotaFailure(violations=[violation])]
    if exc.retry_s:
        details.append(retry_info(exc.retry_s))
    details.append(error_info("QUOTA_EXCEEDED", key_id=exc.key_id, metric=exc.metric, limit=str(exc.limit)))
    return JobError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc) + advice, *details)


class TenantAccess:
    """Authenticates calls against the shared token and the manager's key store (every call looks its key
    up: a revocation holds at once, on every gateway of the store)."""

    def __init__(self, manager: JobManager, shared_token: str = "") -> None:
        self.manager = manager
        self._shared = shared_token.encode()
        self._keys_seen = False  # keys are never deleted: once seen, always there

    def _keys_exist(self) -> bool:
        self._keys_seen = self._keys_seen or self.manager.store.api_keys.exist()
        return self._keys_seen

    def authenticate(self, authorization: str) -> Tenant:
        """The tenant of a call's ``authorization`` value ("" when absent); UNAUTHENTICATED otherwise."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if self._shared and secrets.compare_digest(token.encode(), self._shared):
            return ADMIN
        if not self._shared and not self._keys_exist():
            return ADMIN  # an open gateway without keys: as before keys existed (any token is ignored)
        if not authorization:
            raise _unauthenticated(
                "no_token",
                f"no token: send 'authorization: Bearer <token>' with an API key or {GATEWAY_TOKEN_HINT}"
            )
        key_id = key_id_of(token)
        key = self.manager.store.api_keys.find(key_id) if key_id else None
        if key is None or not secrets.compare_digest(key.sha256, key_sha256(token)):
            raise _unauthenticated(
                "wrong_token",
                f"wrong token: send 'authorization: Bearer <token>' with an API key or {GATEWAY_TOKEN_HINT}"
            )
        if key.revoked:
            raise _unauthenticated(
                "revoked_key", f"API key {key.key_id} was revoked; ask the operator for a new one"
            )
        return Tenant(key, key.admin)

    def jobs(self, authorization: str) -> TenantJobs:
        """The jobs of the tenant of ``authorization`` (:meth:`authenticate`)."""
        return TenantJobs(self.manager, self.authenticate(authorization))


class TenantJobs:
    """The :class:`~gateway.manager.JobManager`'s requests as ``tenant`` may make them (see the module
    docstring); the same methods and answers, plus NOT_FOUND for other keys' jobs and the key's quota."""

    def __init__(self, manager: JobManager, tenant: Tenant) -> None:
        self.manager = manager
        self.tenant = tenant

    @property
    def artifacts(self) -> ArtifactStore:
        """The artifact store (read after :meth:`get` or :meth:`artifact_pieces` checked the job)."""
        return self.manager.artifacts

    def _visible(self, job_id: str) -> None:
        """NOT_FOUND unless the tenant sees the job (INVALID_ARGUMENT for a malformed id, as for anyone)."""
        key = self.tenant.key
        if self.tenant.admin or key is None:
            return
        if self.manager.store.get_owned(check_job_id(job_id), key.key_id) is None:
            raise job_not_found(job_id)

    def submit(
        self, image: bytes, options: common_pb2.JobOptions, idempotency_key: str = "", callback_url: str = ""
    ) -> tuple[Job, bool]:
        """:meth:`JobManager.submit` as this tenant's job: RESOURCE_EXHAUSTED over its key's quota."""
        key = self.tenant.key
        try:
            limit = key.quota.max_upload_bytes if key else 0
            if key is not None and limit and len(image) > limit:
                raise QuotaExceeded(key.key_id, "max_upload_bytes", limit, len(image), 0.0)
            return self.manager.submit(image, options, idempotency_key, key, callback_url)
        except QuotaExceeded as exc:
            QUOTA_REFUSALS.labels(exc.metric).inc()
            log.info("quota refused a job", extra={"key_id": exc.key_id, "metric": exc.metric})
            raise quota_error(exc) from None

    def get(self, job_id: str) -> Job:
        self._visible(job_id)
        return self.manager.get(job_id)

    def list(self, page_size: int = 0, page_token: str = "", state: int = 0) -> tuple[list[Job], str]:
        """The tenant's jobs (every job for an admin)."""
        key = self.tenant.key
        owner = None if self.tenant.admin or key is None else key.key_id
        return self.manager.list(page_size, page_token, state, owner)

    def cancel(self, job_id: str) -> Job:
        self._visible(job_id)
        return self.manager.cancel(job_id)

    def delete(self, job_id: str) -> int:
        self._visible(job_id)
        return self.manager.delete(job_id)

    def artifact_pieces(self, job_id: str, name: str) -> tuple[common_pb2.BlobHeader, Iterator[bytes]]:
        self._visible(job_id)
        return self.manager.artifact_pieces(job_id, name)

    def watch(self, job_id: str, after_sequence: int, is_active: Callable[[], bool]) -> Iterator[Event]:
        """A generator: the check runs at the first event asked for (the HTTP bridge asks from a worker
        thread)."""
        self._visible(job_id)
        yield from self.manager.watch(job_id, after_sequence, is_active)

    def profiles(self) -> reconstruction_pb2.ListProfilesResponse:
        return self.manager.profiles()
