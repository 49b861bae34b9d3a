"""Errors of the SyncHuman Serve API with the gRPC code and the decoded ``google.rpc`` details.

The gateway reports errors with the gRPC rich error model: a status code, a message a person can act on
and, in the ``grpc-status-details-bin`` trailer, a ``google.rpc.Status`` whose details are
``google.rpc.BadRequest``, ``ErrorInfo``, ``RetryInfo``, ``QuotaFailure`` or the input/output quality
report. A job that fails later carries the same ``google.rpc.Status`` in ``Job.error``:
:meth:`SyncHumanError.from_status` decodes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from synchuman_client._proto import common_pb2

#: Trailer that carries the serialized ``google.rpc.Status`` of a failed call.
STATUS_DETAILS_KEY = "grpc-status-details-bin"
_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class ErrorDetails:
    """The decoded details of one error, each None when the server sent none of that type; ``other``: details
    of types this client does not know, still packed."""

    bad_request: error_details_pb2.BadRequest | None = None
    error_info: error_details_pb2.ErrorInfo | None = None
    retry_info: error_details_pb2.RetryInfo | None = None
    quota_failure: error_details_pb2.QuotaFailure | None = None
    input_quality: common_pb2.InputQualityReport | None = None
    output_quality: common_pb2.OutputQualityReport | None = None
    other: tuple[any_pb2.Any, ...] = field(default=())

    @classmethod
    def decode(cls, details: Iterable[any_pb2.Any]) -> ErrorDetails:
        """Unpack the ``Any`` details of a ``google.rpc.Status`` (the last of each type wins)."""
        found: dict[str, object] = {}
        other: list[any_pb2.Any] = []
        for packed in details:
            for name, message_type in _DETAIL_TYPES.items():
                if packed.Is(message_type.DESCRIPTOR):
                    message = message_type()
                    packed.Unpack(message)
                    found[name] = message
                    break
            else:
                other.append(packed)
        return cls(**found, other=tuple(other))  # type: ignore[arg-type]


_DETAIL_TYPES = {
    "bad_request": error_details_pb2.BadRequest,
    "error_info": error_details_pb2.ErrorInfo,
    "retry_info": error_details_pb2.RetryInfo,
    "quota_failure": error_details_pb2.QuotaFailure,
    "input_quality": common_pb2.InputQualityReport,
    "output_quality": common_pb2.OutputQualityReport,
}


class SyncHumanError(Exception):
    """A failed call or a failed job: gRPC ``code``, the server's ``message`` and the decoded ``details``.

    ``str(error)`` is ``"<CODE NAME>: <message>"``.
    """

    def __init__(self, code: grpc.StatusCode, message: str, details: ErrorDetails | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.details = details or ErrorDetails()

    @property
    def retry_after_s(self) -> float | None:
        """Seconds the server asks to wait before retrying (``RetryInfo``), or None."""
        info = self.details.retry_info
        return None if info is None else info.retry_delay.ToNanoseconds() / 1e9

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> SyncHumanError:
        """The error of a failed job (``Job.error``) or of a decoded status trailer."""
        code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
        return cls(code, status.message, ErrorDetails.decode(status.details))

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> SyncHumanError:
        """Wrap what a gRPC call raised (sync or asyncio): code, message and the status trailer's details."""
        code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
        message = error.details() if callable(getattr(error, "details", None)) else ""
        trailers = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else None
        for key, value in trailers or ():
            if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
                status = status_pb2.Status.FromString(value)
                if status.code == code.value[0]:
                    return cls(code, message or status.message, ErrorDetails.decode(status.details))
        return cls(code, message or str(error) or code.name)


@contextmanager
def rpc_errors() -> Iterator[None]:
    """Re-raise a ``grpc.RpcError`` from the block as a :class:`SyncHumanError` (around awaits too)."""
    try:
        yield
    except grpc.RpcError as exc:
        raise SyncHumanError.from_rpc_error(exc) from exc
