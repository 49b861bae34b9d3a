"""Per-RPC structured logs, Prometheus metrics and deadline checks for every SyncHuman gRPC server.

Add :class:`ObservabilityInterceptor` to a server (``grpc.server(..., interceptors=[...])``; the stage
servers do it in :class:`services.common.stage_server.StageServer`) and expose the metrics with
:func:`start_metrics_server`. For every call it

* rejects a call whose deadline has already passed (or leaves less than ``min_deadline_s``) with
  DEADLINE_EXCEEDED before the handler runs, so no work starts that cannot finish;
* counts calls in flight (``synchuman_rpc_in_flight``), finished calls by status code
  (``synchuman_rpc_requests_total``) and their latency (``synchuman_rpc_duration_seconds``), labelled with the
  server name and the RPC method;
* logs one JSON line per finished call: method, status code, seconds, peer, and the caller's request id
  (``x-request-id`` metadata) when sent.

Works for all four RPC shapes; a streaming response is measured until the stream ends.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from services.common.endpoints import DEFAULT_HOST

log = logging.getLogger(__name__)

REQUESTS = Counter(
    "synchuman_rpc_requests_total", "Finished RPCs by status code.", ["server", "method", "code"]
)
DURATION = Histogram(
    "synchuman_rpc_duration_seconds",
    "RPC wall time from the first request message to the last response message.",
    ["server", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
IN_FLIGHT = Gauge("synchuman_rpc_in_flight", "RPCs being handled now.", ["server", "method"])

#: Methods that are not logged per call (health probes arrive every few seconds).
QUIET_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


def start_metrics_server(port: int, address: str = "") -> None:
    """Serve Prometheus metrics at ``http://address:port/metrics`` (a daemon thread); port 0 = off.
    ``address`` empty: ``$SYNCHUMAN_METRICS_HOST``, else 127.0.0.1 (set ``0.0.0.0`` where a Prometheus in
    another container or pod scrapes it, e.g. Kubernetes)."""
    address = address or os.environ.get("SYNCHUMAN_METRICS_HOST", DEFAULT_HOST)
    if port:
        start_http_server(port, addr=address)
        log.info("metrics served", extra={"address": f"{address}:{port}"})


def _request_id(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return str(value)
    return ""


Wrap = Callable[[Callable[..., Any]], Callable[..., Any]]


def wrap_handler(handler: grpc.RpcMethodHandler, unary: Wrap, stream: Wrap) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour wrapped (what a server interceptor returns): by ``unary`` when the
    response is one message (unary-unary, stream-unary), by ``stream`` when it is a stream (the wrapper is
    then a generator); the (de)serializers kept."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **serializers)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **serializers)
    return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **serializers)


class ObservabilityInterceptor(grpc.ServerInterceptor):
    """Deadline check, metrics and one log line per RPC (see the module docstring).

    ``server``: the label of this server in metrics and logs (e.g. "preprocess"). ``min_deadline_s``: calls
    with less time left than this are refused at once.
    """

    def __init__(self, server: str, min_deadline_s: float = 0.0) -> None:
        self.server = server
        self.min_deadline_s = min_deadline_s

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return wrap_handler(
            handler, lambda b: self._wrap_unary(b, method), lambda b: self._wrap_stream(b, method)
        )

    def _check_deadline(self, context: grpc.ServicerContext) -> None:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= self.min_deadline_s:
            context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"{self.server}: the call's deadline leaves {max(remaining, 0.0):.3f} s, too little to "
                "start; send it with a longer deadline",
            )

    def _begin(self, method: str) -> float:
        IN_FLIGHT.labels(self.server, method).inc()
        return time.perf_counter()

    def _end(
        self, method: str, context: grpc.ServicerContext, started: float, error: BaseException | None
    ) -> None:
        seconds = time.perf_counter() - started
        code = context.code() if hasattr(context, "code") else None
        if code is None and (isinstance(error, GeneratorExit) or not context.is_active()):
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        elif code is None:
            code = grpc.StatusCode.UNKNOWN if error is not None else grpc.StatusCode.OK
        IN_FLIGHT.labels(self.server, method).dec()
        REQUESTS.labels(self.server, method, code.name).inc()
        DURATION.labels(self.server, method).observe(seconds)
        quiet = method in QUIET_METHODS  # polled by health checkers: NOT_FOUND while starting is normal
        if quiet and code is grpc.StatusCode.OK:
            return
        fields = {
            "server": self.server,
            "method": method,
            "code": code.name,
            "seconds": round(seconds, 4),
            "peer": context.peer(),
        }
        request_id = _request_id(context)
        if request_id:
            fields["request_id"] = request_id
        details = context.details() if hasattr(context, "details") else None
        if details and code is not grpc.StatusCode.OK:
            fields["details"] = details if isinstance(details, str) else details.decode("utf-8", "replace")
        level = logging.DEBUG if quiet else logging.INFO if code is grpc.StatusCode.OK else logging.WARNING
        log.log(level, "rpc finished", extra=fields)

    def _wrap_unary(self, behaviour: Callable[[Any, grpc.ServicerContext], Any], method: str) -> Callable:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            started = self._begin(method)
            error: BaseException | None = None
            try:
                self._check_deadline(context)
                return behaviour(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._end(method, context, started, error)
                error = None  # the traceback holds this frame: a local naming it would make a cycle

        return handle

    def _wrap_stream(
        self, behaviour: Callable[[Any, grpc.ServicerContext], Iterator[Any]], method: str
    ) -> Callable:
        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = self._begin(method)
            error: BaseException | None = None
            try:
                self._check_deadline(context)
                yield from behaviour(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._end(method, context, started, error)
                error = None  # the traceback holds this frame: a local naming it would make a cycle

        return handle
