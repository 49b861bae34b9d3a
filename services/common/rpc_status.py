"""Rich gRPC errors (``google.rpc.Status`` with details), built and read the same way by the gateway and the
stage services: the detail builders (:func:`bad_request`, :func:`error_info`, :func:`retry_info`),
:func:`abort` to fail a call with them, and :func:`retry_delay_s` to read a RetryInfo back.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

#: ``ErrorInfo.domain`` of every error this project sends.
ERROR_DOMAIN = "synchuman.serve"


class Aborted(Exception):
    """The call was failed with a status already (raised by :func:`abort`)."""


def retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    """A RetryInfo detail asking the client to wait ``seconds``."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def bad_request(field: str, message: str) -> error_details_pb2.BadRequest:
    """A BadRequest detail naming one field."""
    return error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=message)]
    )


def error_info(reason: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    """An ErrorInfo detail with a stable ``reason`` code."""
    return error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def abort(
    context: grpc.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    *details: Any,
) -> NoReturn:
    """Fail the call with ``code``, ``message`` and a ``google.rpc.Status`` carrying ``details``."""
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=message, details=[_pack(d) for d in details]
    )
    try:
        context.abort_with_status(rpc_status.to_status(status))
    except Exception as exc:  # grpc raises a bare Exception after recording the status
        raise Aborted(message) from exc
    raise Aborted(message)


def retry_delay_s(status: status_pb2.Status) -> float:
    """The wait a ``status``'s RetryInfo detail asks for, in seconds (0 without one)."""
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToTimedelta().total_seconds())
    return 0.0
