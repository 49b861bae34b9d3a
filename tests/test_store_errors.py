"""The one table that answers the job store's exceptions on gRPC and HTTP (gateway/store_errors.py)."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from gateway.errors import JobError
from gateway.store import InvalidJobState, JobNotFound, LeaseLost, StoreError, StoreUnavailable
from gateway.store_errors import as_job_error

CODE = grpc.StatusCode


@pytest.mark.parametrize(
    ("error", "code", "http_status", "reason", "retry"),
    [
        (JobNotFound("j1"), CODE.NOT_FOUND, 404, "JOB_NOT_FOUND", False),
        (InvalidJobState("job j1 running"), CODE.FAILED_PRECONDITION, 409, "JOB_NOT_FINISHED", False),
        (LeaseLost("job j1 is not leased to 'a'"), CODE.ABORTED, 409, "JOB_LEASE_LOST", True),
        (StoreUnavailable("db down"), CODE.UNAVAILABLE, 503, "JOB_STORE_UNAVAILABLE", True),
        (StoreError("odd"), CODE.INTERNAL, 500, "JOB_STORE_ERROR", False),
    ],
)  # fmt: skip
def test_each_store_error_has_one_grpc_and_http_answer(error, code, http_status, reason, retry):
    answer = as_job_error(error)
    assert (answer.code, answer.http_status) == (code, http_status)
    assert answer.message.startswith(str(error)) and ("retry in a few seconds" in answer.message) == retry
    infos = [d for d in answer.details if isinstance(d, error_details_pb2.ErrorInfo)]
    assert [i.reason for i in infos] == [reason]
    assert any(isinstance(d, error_details_pb2.RetryInfo) for d in answer.details) == retry


def test_a_store_error_subclass_answers_as_its_nearest_listed_base_and_job_errors_pass_through():
    class Timeout(StoreUnavailable):
        pass

    assert as_job_error(Timeout("slow")).code == grpc.StatusCode.UNAVAILABLE
    refusal = JobError(grpc.StatusCode.INVALID_ARGUMENT, "bad")
    assert as_job_error(refusal) is refusal
