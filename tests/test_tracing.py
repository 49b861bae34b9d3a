"""Tracing off and misconfigured (:mod:`services.common.tracing`). The trace of a job across the four real
services, exported to a real OTLP receiver, is checked by ``test_e2e_services`` on its deployment (one stack
for both; the receiver and the check are in ``tests/otlp_receiver.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.common import tracing
from services.common.arguments import CommandLineError


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
