"""The one error type of the job manager's requests, mapped to a gRPC status (gRPC) or an HTTP 4xx (HTTP)."""

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
