"""The one error type of the job manager's requests, mapped to a gRPC status (gRPC) or an HTTP 4xx (HTTP), and
its INVALID_ARGUMENT kind."""

from __future__ import annotations

from typing import Any

import grpc


class JobError(Exception):
    """A request the manager refuses: gRPC ``code``, a message a user can act on, ``google.rpc`` details."""

    def __init__(self, code: grpc.StatusCode, message: str, *details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class InvalidArgument(JobError, ValueError):
    """A malformed request field (INVALID_ARGUMENT; built by :func:`gateway.request_fields.invalid`). Also a
    ``ValueError``, the error the artifact stores raise for a malformed key: they check job ids with the same
    :func:`gateway.request_fields.check_job_id` as the request handlers."""
