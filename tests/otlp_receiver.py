"""A real OTLP/gRPC trace receiver for the tracing tests (the ``opentelemetry-proto`` TraceService on a free
port) and the check of one job's trace across the four services.

:func:`otlp_receiver` yields a started :class:`TraceReceiver`; its :meth:`~TraceReceiver.environment` is what
a service process needs to export to it (batches every 0.2 s). :func:`check_job_trace` waits for a job's
spans and asserts the trace's shape; :func:`tree` prints a trace.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from services.common.tracing import JOB_ID, PHASE, STAGE
from synchuman.stage_catalog import STAGES

#: The W3C context a test client sends with its submission (``traceparent`` metadata): the job's trace
#: continues it.
CLIENT_TRACE, CLIENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
CLIENT_METADATA = (("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"),)


@dataclass(frozen=True)
class ReceivedSpan:
    """A span as the receiver got it: its process (``service.name``), ids in hex (``parent`` "" for a
    root), string attributes and duration in seconds."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent: str
    attributes: dict[str, str]
    seconds: float


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver keeping every span it is sent; ``port``: where it listens."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.port = 0
        self._lock = threading.Lock()

    def environment(self) -> dict[str, str]:
        """The variables that make a service export its spans here, a batch every 0.2 s."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }

    def Export(self, request, context):  # noqa: N802 - the OTLP service's method name
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            resource.get("service.name", ""),
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            {a.key: a.value.string_value for a in span.attributes},
                            (span.end_time_unix_nano - span.start_time_unix_nano) / 1e9,
                        )
                    )
        with self._lock:
            self.spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def received(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)


@contextmanager
def otlp_receiver() -> Iterator[TraceReceiver]:
    """A started :class:`TraceReceiver` on a free local port; stopped on exit."""
    receiver = TraceReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    receiver.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield receiver
    finally:
        server.stop(None)


def tree(spans: list[ReceivedSpan]) -> list[str]:
    """The spans as indented lines, ``[service] name seconds {synchuman.* attributes}``, children under their
    parent (a span whose parent was not received is a root)."""
    ids = {span.span_id for span in spans}
    children: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        children.setdefault(span.parent if span.parent in ids else "", []).append(span)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for span in children.get(parent, []):
            shown = {k: v for k, v in span.attributes.items() if k.startswith("synchuman.")}
            lines.append(
                f"{'  ' * depth}[{span.service}] {span.name} {span.seconds:.3f} s {shown or ''}".rstrip()
            )
            walk(span.span_id, depth + 1)

    walk("", 0)
    return lines


def _job_spans(receiver: TraceReceiver, job_id: str) -> list[ReceivedSpan]:
    """The spans naming the job once the job span, every stage call and every stage server span have come (a
    process exports a server span after its phase spans: they end first); [] before."""
    named = [s for s in receiver.received() if s.attributes.get(JOB_ID) == job_id]
    expected = {("gateway", "job")}
    for entry in STAGES:
        expected |= {("gateway", f"stage call {entry.name}"), (entry.service, entry.grpc_service)}
    got = {(s.service, s.name if s.service == "gateway" else s.name.rpartition("/")[0]) for s in named}
    return named if expected <= got else []


def check_job_trace(receiver: TraceReceiver, job_id: str, timeout_s: float = 30.0) -> list[str]:
    """Wait for job ``job_id``'s spans (submitted with :data:`CLIENT_METADATA`) and check its trace: the
    client's trace id; every span naming the job in it; spans from the gateway and the three stage services;
    SubmitJob (child of the client's span) -> job -> ``stage call <stage>`` -> the stage's server span ->
    ``<stage> <phase>`` spans in the catalog's order, with job id, stage and phase attributes. Returns the
    trace as :func:`tree` lines."""
    deadline = time.monotonic() + timeout_s
    while not (named := _job_spans(receiver, job_id)):  # batches come within OTEL_BSP_SCHEDULE_DELAY
        assert time.monotonic() < deadline, "\n".join(tree(receiver.received()))
        time.sleep(0.2)
    (job_span,) = [s for s in named if s.name == "job"]
    trace = [s for s in receiver.received() if s.trace_id == job_span.trace_id]
    lines = [f"trace {job_span.trace_id} of job {job_id}: {len(trace)} spans", *tree(trace)]
    assert job_span.trace_id == CLIENT_TRACE, lines  # the client's trace, continued from its gRPC metadata
    assert {s.trace_id for s in named} == {CLIENT_TRACE}, lines  # every span naming the job is in it
    assert {s.service for s in trace} == {"gateway", *(entry.service for entry in STAGES)}, lines
    by_id = {s.span_id: s for s in trace}
    submit = by_id[job_span.parent]
    assert (submit.service, submit.name) == ("gateway", "synchuman.v1.ReconstructionService/SubmitJob")
    assert submit.parent == CLIENT_SPAN and job_span.service == "gateway"
    for entry in STAGES:
        (call,) = [s for s in trace if s.name == f"stage call {entry.name}"]
        assert (call.service, call.parent) == ("gateway", job_span.span_id), lines
        assert call.attributes[STAGE] == entry.name and call.attributes[JOB_ID] == job_id
        (server,) = [s for s in trace if s.service == entry.service and s.parent == call.span_id]
        assert server.name.startswith(f"{entry.grpc_service}/"), server.name
        assert server.attributes[JOB_ID] == job_id and server.attributes[STAGE] == entry.name
        phases = [s for s in trace if s.parent == server.span_id]
        order = [s.attributes[PHASE] for s in phases]
        assert order and order == sorted(set(order), key=entry.phases.index), (entry.name, order)
        for span in phases:
            assert (span.service, span.name) == (entry.service, f"{entry.name} {span.attributes[PHASE]}")
            assert span.attributes[JOB_ID] == job_id and span.attributes[STAGE] == entry.name
    return lines
