"""OpenTelemetry tracing of the four SyncHuman processes: one trace per job, across the gRPC hops.

Off unless configured: :func:`configure` turns it on when an OTLP endpoint is named (``--otlp-endpoint``, else
the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``;
``OTEL_SDK_DISABLED=true`` keeps it off). Only then is the OpenTelemetry SDK imported: a process without
tracing imports nothing of it and every function here is a no-op. Spans go to the endpoint over OTLP/gRPC in
batches (the SDK's ``OTEL_BSP_*`` settings, its sampler ``OTEL_TRACES_SAMPLER`` and the exporter's
``OTEL_EXPORTER_OTLP_*`` settings such as ``..._INSECURE``, ``..._HEADERS``, ``..._CERTIFICATE`` apply); each
process's resource has ``service.name`` ``gateway``, ``preprocess``, ``stage1`` or ``stage2``.

A job's trace (attributes :data:`JOB_ID`, :data:`STAGE`, :data:`PHASE`)::

    gateway   SubmitJob server span (the caller's context from gRPC metadata or HTTP headers, if sent)
    gateway     job                        <- job_span(); its traceparent is stored with the job
    gateway       stage call <stage>       <- stage_call_span() on whichever gateway runs the job,
                                              context injected into the call's metadata
    <stage>         <grpc method>          <- TracingInterceptor (context from the metadata)
    <stage>           <stage> <phase>      <- PhaseSpans, one per progress phase

The context travels as W3C ``traceparent`` / ``tracestate`` (the SDK's default propagators).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import grpc

from services.common.arguments import CommandLineError
from services.common.observability import QUIET_METHODS, wrap_handler

log = logging.getLogger(__name__)

#: Span attributes: the job's id, the stage's catalog name, the progress phase.
JOB_ID, STAGE, PHASE = "synchuman.job_id", "synchuman.stage", "synchuman.phase"
#: The standard variables naming the OTLP endpoint, the more specific first.
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
#: Calls that open no span: health probes and server reflection.
UNTRACED_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


class _State:
    """The process's tracer (None: tracing off); its provider exports what is buffered at interpreter exit."""

    tracer: Any = None


def add_tracing_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--otlp-endpoint`` option of every service process."""
    parser.add_argument(
        "--otlp-endpoint",
        default="",
        metavar="URL",
        help="send OpenTelemetry traces over OTLP/gRPC to URL (e.g. http://otel-collector:4317; http:// is "
        "plaintext, https:// TLS); default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or "
        "$OTEL_EXPORTER_OTLP_ENDPOINT; neither set: tracing off",
    )


def endpoint_from_environment() -> str:
    """The OTLP endpoint the standard variables name ("" when none does, or ``OTEL_SDK_DISABLED=true``)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ""
    return next((os.environ[name] for name in ENDPOINT_VARIABLES if os.environ.get(name)), "")


def checked_endpoint(endpoint: str, source: str) -> str:
    """``endpoint`` when it is an ``http://`` (plaintext) or ``https://`` (TLS) URL with a host;
    :class:`~services.common.arguments.CommandLineError` naming ``source`` (the flag or variable) otherwise
    (a bare ``host:port`` would be tried over TLS and fail at every export)."""
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise CommandLineError(
            f"{source} {endpoint!r}: name the OTLP/gRPC receiver as http://HOST:PORT (plaintext) or "
            "https://HOST:PORT (TLS), e.g. http://otel-collector:4317"
        )
    return endpoint


def configure(service: str, endpoint: str = "") -> bool:
    """Turn tracing on for this process as ``service`` (its ``service.name``) when ``endpoint`` (the
    ``--otlp-endpoint`` value) or the environment names an OTLP endpoint; True when on. Imports the SDK.
    :class:`~services.common.arguments.CommandLineError` for an endpoint that is no http(s) URL."""
    flag = endpoint.strip()
    if flag:
        checked_endpoint(flag, "--otlp-endpoint")
    elif found := endpoint_from_environment():
        checked_endpoint(found, next(name for name in ENDPOINT_VARIABLES if os.environ.get(name)))
    else:
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    # Without the flag the exporter reads the standard variables itself (the traces-specific one first).
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=flag or None)))
    trace.set_tracer_provider(provider)
    _State.tracer = trace.get_tracer("synchuman")
    log.info("tracing on", extra={"service": service, "endpoint": flag or endpoint_from_environment()})
    return True


def enabled() -> bool:
    """Whether :func:`configure` turned tracing on in this process."""
    return _State.tracer is not None


def _attributes(job_id: str = "", stage: str = "", phase: str = "") -> dict[str, str]:
    named = {JOB_ID: job_id, STAGE: stage, PHASE: phase}
    return {key: value for key, value in named.items() if value}


def traceparent() -> str:
    """The current span's context as a W3C ``traceparent`` header value ("" when tracing is off or no span
    is current): what the gateway stores with a job."""
    if _State.tracer is None:
        return ""
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent", "")


@contextmanager
def job_span(job_id: str) -> Iterator[None]:
    """The span of a job's submission (the root of the job's spans, a child of the caller's context when it
    sent one): current inside the block; :func:`traceparent` then names it."""
    if _State.tracer is None:
        yield
        return
    with _State.tracer.start_as_current_span("job", attributes=_attributes(job_id)):
        yield


@contextmanager
def continued(parent: str) -> Iterator[None]:
    """Make the stored ``traceparent`` ``parent`` the current context inside the block (a job's work resumed
    by a worker, maybe on another gateway); nothing when tracing is off or ``parent`` is empty."""
    if _State.tracer is None or not parent:
        yield
        return
    from opentelemetry import context
    from opentelemetry.propagate import extract

    token = context.attach(extract({"traceparent": parent}))
    try:
        yield
    finally:
        context.detach(token)


@contextmanager
def stage_call_span(job_id: str, stage: str) -> Iterator[tuple[tuple[str, str], ...]]:
    """A client span around a gateway's call of a stage service (a child of the current context); yields
    the metadata entries carrying it (``traceparent``, ...) to send with the call (none when off)."""
    if _State.tracer is None:
        yield ()
        return
    from opentelemetry.propagate import inject
    from opentelemetry.trace import SpanKind

    with _State.tracer.start_as_current_span(
        f"stage call {stage}", kind=SpanKind.CLIENT, attributes=_attributes(job_id, stage)
    ):
        carrier: dict[str, str] = {}
        inject(carrier)
        yield tuple(carrier.items())


def annotate(job_id: str, stage: str) -> None:
    """Add the job id and stage to the current span (a stage server span, once the request names its job)."""
    if _State.tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(_attributes(job_id, stage))


class PhaseSpans:
    """One span per progress phase of a stage request, children of the span current where it is made (the
    request's server span); :meth:`entered` is called with every progress report (from any thread), the last
    phase's span ends when the block of ``with`` ends (with the error, if the work raised)."""

    def __init__(self, job_id: str, stage: str) -> None:
        self.job_id, self.stage = job_id, stage
        self._parent: Any = None
        self._span: Any = None
        self._phase = ""
        if _State.tracer is not None:
            from opentelemetry import context

            self._parent = context.get_current()

    def entered(self, phase: str) -> None:
        """A progress report of ``phase``: a new span when the phase changed."""
        if self._parent is None or phase == self._phase:
            return
        self._end()
        self._phase = phase
        self._span = _State.tracer.start_span(
            f"{self.stage} {phase}",
            context=self._parent,
            attributes=_attributes(self.job_id, self.stage, phase),
        )

    def _end(self, error: BaseException | None = None) -> None:
        span, self._span = self._span, None
        if span is None:
            return
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)))
        span.end()

    def __enter__(self) -> PhaseSpans:
        return self

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        self._end(error)


class TracingInterceptor(grpc.ServerInterceptor):
    """A server span per call (health and reflection excluded), a child of the W3C context the caller sent in
    the call's metadata; its status is the call's (ERROR with the details when not OK). Added by
    :class:`services.common.grpc_server.ServiceServer` when tracing is on."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in QUIET_METHODS or method.startswith(UNTRACED_PREFIXES):
            return handler
        return wrap_handler(handler, lambda b: self._unary(b, method), lambda b: self._stream(b, method))

    @staticmethod
    def _start(method: str, context: grpc.ServicerContext) -> Any:
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind

        carrier = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
        service, _, name = method.lstrip("/").rpartition("/")
        return _State.tracer.start_span(
            method.lstrip("/"),
            context=extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )

    @staticmethod
    def _finish(span: Any, context: grpc.ServicerContext, error: BaseException | None) -> None:
        from opentelemetry.trace import Status, StatusCode

        code = context.code() if hasattr(context, "code") else None
        if code is None:
            code = grpc.StatusCode.UNKNOWN if error is not None else grpc.StatusCode.OK
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            details = context.details() if hasattr(context, "details") else None
            if isinstance(details, bytes):
                details = details.decode("utf-8", "replace")
            span.set_status(Status(StatusCode.ERROR, f"{code.name}: {details or error or ''}"))
        span.end()

    def _unary(self, behaviour: Callable[[Any, grpc.ServicerContext], Any], method: str) -> Callable:
        from opentelemetry.trace import use_span

        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            span = self._start(method, context)
            error: BaseException | None = None
            try:
                with use_span(span, record_exception=False, set_status_on_exception=False):
                    return behaviour(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._finish(span, context, error)
                error = None  # the traceback holds this frame: a local naming it would make a cycle

        return handle

    def _stream(
        self, behaviour: Callable[[Any, grpc.ServicerContext], Iterator[Any]], method: str
    ) -> Callable:
        from opentelemetry.trace import use_span

        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            # grpc serves a response stream from one thread: the span stays current between the messages
            span = self._start(method, context)
            error: BaseException | None = None
            try:
                with use_span(span, record_exception=False, set_status_on_exception=False):
                    yield from behaviour(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._finish(span, context, error)
                error = None  # the traceback holds this frame: a local naming it would make a cycle

        return handle


class HttpTraceContext:
    """ASGI middleware: the W3C trace context in a request's headers (``traceparent``, ``tracestate``) is
    the current context while it is handled (a submission's job span then continues the caller's trace). Added
    by the HTTP bridge when tracing is on."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry import context
        from opentelemetry.propagate import extract

        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        token = context.attach(extract(headers))
        try:
            await self.app(scope, receive, send)
        finally:
            context.detach(token)
