"""Tracing off and misconfigured (:mod:`services.common.tracing`), and an HTTP submission continuing the
caller's trace (a real OTLP receiver, ``tests/otlp_receiver.py``). The trace of a job across the four real
services, exported to a real OTLP receiver, is checked by ``test_e2e_services`` on its deployment (one stack
for both; the receiver and the check are in ``tests/otlp_receiver.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from otlp_receiver import CLIENT_METADATA, CLIENT_SPAN, CLIENT_TRACE, otlp_receiver

from services.common import tracing
from services.common.arguments import CommandLineError
from services.common.tracing import JOB_ID


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


HTTP_SUBMISSION = """
import sys
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from services.common import tracing

assert tracing.configure("gateway", sys.argv[1])


def submit() -> str:  # what the bridge's submission runs in the thread pool (gateway.manager)
    with tracing.job_span("http-job"):
        return tracing.traceparent()


async def endpoint(request):
    return PlainTextResponse(await run_in_threadpool(submit))


app = Starlette(routes=[Route("/v1/jobs", endpoint, methods=["POST"])])
app.add_middleware(tracing.HttpTraceContext)
print(TestClient(app).post("/v1/jobs", headers={"traceparent": sys.argv[2]}).text)
"""


def test_an_http_submission_continues_the_callers_trace():
    """The bridge's middleware makes the request's ``traceparent`` the parent of the job span built in the
    thread pool; the process exports it at exit."""
    with otlp_receiver() as receiver:
        traceparent = dict(CLIENT_METADATA)["traceparent"]
        argv = [sys.executable, "-c", HTTP_SUBMISSION, f"http://127.0.0.1:{receiver.port}", traceparent]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=True)
        stored = done.stdout.strip()  # what the gateway stores with the job
        (span,) = receiver.received()
    assert (span.service, span.name, span.attributes) == ("gateway", "job", {JOB_ID: "http-job"})
    assert (span.trace_id, span.parent) == (CLIENT_TRACE, CLIENT_SPAN)
    assert stored == f"00-{CLIENT_TRACE}-{span.span_id}-01"
