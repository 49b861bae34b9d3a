"""Schemathesis against the gateway's HTTP bridge with every check (issue 17, finding 12): a real gateway
on free ports with the stage doubles of tests/gateway_doubles.py; no 5xx, no response outside the OpenAPI
document, schema-valid requests accepted, schema-invalid ones refused.

Bounded here (``SCHEMATHESIS_MAX_EXAMPLES``, default 15 per operation and phase, about a minute); the longer
run is in the README.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_gateway import Stack

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def stack(tmp_path):
    stack = Stack(tmp_path, http_address="127.0.0.1:0", max_pending_jobs=500)
    yield stack
    stack.close()


def test_schemathesis_finds_no_failure(stack, tmp_path):
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if cli is None:
        pytest.fail("schemathesis is not installed: .venv/bin/pip install -e '.[dev]'")
    examples = os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "15")
    url = f"http://127.0.0.1:{stack.gateway.http_port}/openapi.json"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks", "PYTHONPATH": str(TESTS)}
    command = [
        cli,
        "run",
        url,
        "--checks",
        "all",
        "--max-examples",
        examples,
        "--seed",
        "17",
        "--workers",
        "2",
        "--request-timeout",
        "20",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "report"),
    ]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-12000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated and int(generated[1]) >= 100, output[-3000:]
    # The stateful phase follows the links of POST /v1/jobs to the operations that take a job id.
    links = re.search(r"API Links:\s+(\d+) covered", output)
    scenarios = re.search(r"Stateful \(in [^)]*\)\s+Scenarios:\s+(\d+)", output)
    assert links and int(links[1]) >= 5 and scenarios and int(scenarios[1]) >= 5, output[-3000:]
    print(
        f"schemathesis: {generated[1]} test cases, --checks all, 0 failures; "
        f"stateful: {scenarios[1]} scenarios, {links[1]} links covered"
    )


def test_a_submitted_job_links_to_every_operation_on_its_id(stack):
    """``POST /v1/jobs`` links (OpenAPI ``links``) to get, events, download, cancel and delete with the new
    job's id, by operation ids that exist."""
    import httpx

    document = httpx.get(f"http://127.0.0.1:{stack.gateway.http_port}/openapi.json", timeout=10).json()
    operations = {op["operationId"] for path in document["paths"].values() for op in path.values()}
    for status in ("200", "201"):
        links = document["paths"]["/v1/jobs"]["post"]["responses"][status]["links"]
        targets = {link["operationId"] for link in links.values()}
        assert targets == {"get_job", "job_events", "get_artifact", "cancel_job", "delete_job"}
        assert targets <= operations
        assert all(link["parameters"]["job_id"] == "$response.body#/job/id" for link in links.values())
