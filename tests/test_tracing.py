"""Traces across the hops: the four real services (gateway, preprocess, stage 1, stage 2 as separate processes
on tiny random checkpoints, CPU) export their spans over OTLP/gRPC to a real OTLP trace receiver started
here (the ``opentelemetry-proto`` TraceService); one job, submitted with a client's ``traceparent``, must
yield one trace (the client's) with spans from every process, in the order gateway SubmitJob -> job span ->
stage call span -> stage server span -> phase spans, with job id, stage and phase attributes. Without an
endpoint no OpenTelemetry module is loaded; a malformed endpoint is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from test_e2e_services import small_options

from services.common import tracing
from services.common.arguments import CommandLineError
from services.common.stage_io import blob_header, upload_messages
from services.common.tracing import JOB_ID, PHASE, STAGE
from services.launcher import EmbeddedConfig, start_embedded
from synchuman.stage_catalog import STAGES
from synchuman.v1 import reconstruction_pb2, reconstruction_pb2_grpc

#: The W3C context the test's client sends with its submission: the job's trace continues it.
CLIENT_TRACE, CLIENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

TERMINAL = {
    reconstruction_pb2.JOB_STATE_SUCCEEDED,
    reconstruction_pb2.JOB_STATE_FAILED,
    reconstruction_pb2.JOB_STATE_CANCELLED,
}


@dataclass(frozen=True)
class ReceivedSpan:
    """A span as the receiver got it: its process (``service.name``), ids in hex (``parent`` "" for a
    root) and string attributes."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent: str
    attributes: dict[str, str]


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 - the OTLP service's method name
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: a.value.string_value for a in span.attributes}
                    received.append(
                        ReceivedSpan(
                            resource.get("service.name", ""),
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            attributes,
                        )
                    )
        with self._lock:
            self.spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[TraceReceiver, int]]:
    spans = TraceReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(spans, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield spans, port
    server.stop(None)


@pytest.fixture(scope="module")
def traced_deployment(receiver, tiny_ckpts, tmp_path_factory) -> Iterator[EmbeddedConfig]:
    """The four services under the supervisor, exporting their spans to the receiver every 0.2 s."""
    root = tmp_path_factory.mktemp("traced")
    config = EmbeddedConfig.with_free_ports(
        ckpts=tiny_ckpts, device="cpu", dtype="float32", data_dir=root / "jobs", log_level="WARNING",
        env={
            "OMP_NUM_THREADS": "1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver[1]}",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
    )  # fmt: skip
    supervisor = start_embedded(config, ready_timeout_s=300)
    yield config
    supervisor.stop()


def run_one_job(config: EmbeddedConfig, photo: bytes) -> str:
    """Submit one small job over gRPC with the client's ``traceparent``, wait for it to succeed; its id."""
    stub = reconstruction_pb2_grpc.ReconstructionServiceStub(grpc.insecure_channel(config.address("gateway")))
    start = reconstruction_pb2.SubmitJobStart(
        options=small_options(1, 1), image=blob_header("input", "application/octet-stream", photo)
    )
    requests = upload_messages(reconstruction_pb2.SubmitJobRequest, start, {"input": photo})
    metadata = (("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"),)
    job_id = stub.SubmitJob(requests, timeout=60, metadata=metadata).job.id
    deadline = time.monotonic() + 300
    while True:
        job = stub.GetJob(reconstruction_pb2.GetJobRequest(job_id=job_id), timeout=10).job
        if job.state in TERMINAL:
            break
        assert time.monotonic() < deadline, f"job {job_id} did not end"
        time.sleep(0.5)
    assert job.state == reconstruction_pb2.JOB_STATE_SUCCEEDED, job.error.message
    return job_id


def tree(spans: list[ReceivedSpan]) -> list[str]:
    """The trace as indented lines: ``service  name  {attributes}``, children under their parent."""
    children: dict[str, list[ReceivedSpan]] = {}
    ids = {span.span_id for span in spans}
    for span in spans:
        children.setdefault(span.parent if span.parent in ids else "", []).append(span)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for span in children.get(parent, []):
            shown = {k: v for k, v in span.attributes.items() if k.startswith("synchuman.")}
            lines.append(f"{'  ' * depth}[{span.service}] {span.name} {shown or ''}".rstrip())
            walk(span.span_id, depth + 1)

    walk("", 0)
    return lines


def test_off_without_an_endpoint_loads_no_opentelemetry():
    code = (
        "import sys; import services.common.stage_server, services.common.servicer, gateway.job_loop; "
        "from services.common import tracing; assert not tracing.configure('stage1'); "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    loaded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


def test_an_endpoint_that_is_no_url_is_refused(monkeypatch):
    with pytest.raises(CommandLineError, match=r"--otlp-endpoint 'collector:4317': .*http://HOST:PORT"):
        tracing.configure("gateway", "collector:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4317")
    with pytest.raises(CommandLineError, match="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT 'collector:4317'"):
        tracing.configure("gateway")
    assert not tracing.enabled()


@pytest.mark.slow
def test_one_job_is_one_trace_across_the_four_processes(receiver, traced_deployment, small_photo):
    spans, _ = receiver
    job_id = run_one_job(traced_deployment, small_photo)

    def job_spans() -> list[ReceivedSpan]:
        """The spans naming the job; complete once the job span, the stage calls and the stage servers' spans
        have come (a process exports a server span after its phase spans: they end first)."""
        named = [s for s in spans.spans if s.attributes.get(JOB_ID) == job_id]
        expected = {("gateway", "job")}
        for entry in STAGES:
            expected |= {("gateway", f"stage call {entry.name}"), (entry.service, f"{entry.grpc_service}/")}
        got = {
            (s.service, s.name if s.service == "gateway" else s.name.rpartition("/")[0] + "/") for s in named
        }
        return named if expected <= got else []

    deadline = time.monotonic() + 30
    while not (named := job_spans()):  # the last batches are exported within OTEL_BSP_SCHEDULE_DELAY
        assert time.monotonic() < deadline, "\n".join(tree(spans.spans))
        time.sleep(0.2)
    (job_span,) = [s for s in named if s.name == "job"]
    assert job_span.trace_id == CLIENT_TRACE  # the client's trace, continued from its gRPC metadata
    trace = spans.trace(job_span.trace_id)
    print("\n".join(["", f"trace {job_span.trace_id} of job {job_id}: {len(trace)} spans", *tree(trace)]))

    assert {s.trace_id for s in named} == {job_span.trace_id}  # every span naming the job is in its trace
    assert {s.service for s in trace} == {"gateway", *(entry.service for entry in STAGES)}
    by_id = {s.span_id: s for s in trace}
    submit = by_id[job_span.parent]
    assert job_span.service == "gateway" and submit.name == "synchuman.v1.ReconstructionService/SubmitJob"
    assert submit.parent == CLIENT_SPAN
    for entry in STAGES:
        (call,) = [s for s in trace if s.name == f"stage call {entry.name}"]
        assert (call.service, call.parent) == ("gateway", job_span.span_id)
        assert call.attributes[STAGE] == entry.name and call.attributes[JOB_ID] == job_id
        (server,) = [s for s in trace if s.service == entry.service and s.parent == call.span_id]
        assert server.name.startswith(f"{entry.grpc_service}/"), server.name
        assert server.attributes[JOB_ID] == job_id and server.attributes[STAGE] == entry.name
        phases = [s for s in trace if s.parent == server.span_id]
        order = [s.attributes[PHASE] for s in phases]
        assert order and order == sorted(set(order), key=entry.phases.index), (entry.name, order)
        assert all(
            s.service == entry.service and s.name == f"{entry.name} {s.attributes[PHASE]}" for s in phases
        )
        assert all(s.attributes[JOB_ID] == job_id and s.attributes[STAGE] == entry.name for s in phases)
