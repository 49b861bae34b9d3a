"""The job store's exceptions (:class:`gateway.store.StoreError`) as the gateway's answers: one table,
:data:`STORE_STATUS`, gives each its gRPC status, HTTP status, ``ErrorInfo`` reason and retry advice, and
:func:`as_job_error` turns one into the :class:`~gateway.errors.JobError` both front ends (gRPC and the HTTP
bridge) already answer with.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from gateway.errors import JobError
from gateway.store import InvalidJobState, JobNotFound, LeaseLost, StoreError, StoreUnavailable
from services.common.rpc_status import error_info, retry_info


@dataclass(frozen=True)
class StoreStatus:
    """How one kind of store error is answered: ``code`` (gRPC), ``http_status``, ``reason`` (the
    ``ErrorInfo`` reason) and, when retrying may help, ``retry_s`` (``RetryInfo``; HTTP ``Retry-After``)."""

    code: grpc.StatusCode
    http_status: int
    reason: str
    retry_s: float = 0.0


#: Store error type -> its answer (a subclass not listed answers as its nearest listed base class).
STORE_STATUS: dict[type[StoreError], StoreStatus] = {
    JobNotFound: StoreStatus(grpc.StatusCode.NOT_FOUND, 404, "JOB_NOT_FOUND"),
    InvalidJobState: StoreStatus(grpc.StatusCode.FAILED_PRECONDITION, 409, "JOB_NOT_FINISHED"),
    LeaseLost: StoreStatus(grpc.StatusCode.ABORTED, 409, "JOB_LEASE_LOST", retry_s=1.0),
    StoreUnavailable: StoreStatus(grpc.StatusCode.UNAVAILABLE, 503, "JOB_STORE_UNAVAILABLE", retry_s=2.0),
    StoreError: StoreStatus(grpc.StatusCode.INTERNAL, 500, "JOB_STORE_ERROR"),
}

#: What a front end catches around a request to the manager.
REQUEST_ERRORS = (JobError, StoreError)


class StoreRefusal(JobError):
    """A :class:`~gateway.store.StoreError` as a request's answer (``http_status`` from the table)."""

    def __init__(self, error: StoreError, status: StoreStatus) -> None:
        message = str(error) + ("; retry in a few seconds" if status.retry_s else "")
        details = (retry_info(status.retry_s),) if status.retry_s else ()
        super().__init__(status.code, message, *details, error_info(status.reason))
        self.http_status = status.http_status


def as_job_error(error: JobError | StoreError) -> JobError:
    """``error`` as the front ends answer it: a :class:`JobError` as is, a store error through
    :data:`STORE_STATUS`."""
    if isinstance(error, JobError):
        return error
    kind = next(k for k in type(error).__mro__ if k in STORE_STATUS)
    return StoreRefusal(error, STORE_STATUS[kind])
