"""SIGTERM to a real stage server process: running work finishes within the grace period or is rejected
explicitly with UNAVAILABLE; the process exits 0 either way."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from stage_doubles import details, stage1_inputs, stage1_requests

from services.launcher import free_port
from services.supervisor import health_status
from synchuman.v1 import common_pb2, stage1_pb2_grpc

SCRIPT = str(Path(__file__).with_name("fake_stage_process.py"))


def start(grace_s: float, step_s: float) -> tuple[subprocess.Popen, str]:
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [sys.executable, SCRIPT, address, str(grace_s), str(step_s)], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while health_status(address, "synchuman.v1.Stage1Service") != 1:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the stage process did not become SERVING"
        time.sleep(0.1)
    return process, address


def running_call(address: str, steps: int):
    stub = stage1_pb2_grpc.Stage1ServiceStub(grpc.insecure_channel(address))
    call = stub.GenerateViews(
        stage1_requests(stage1_inputs(), common_pb2.MultiviewOptions(steps=steps)), timeout=60
    )
    first = next(call)
    assert first.WhichOneof("payload") == "progress"
    return call


def test_sigterm_stops_running_work_after_the_grace_period_and_says_so():
    process, address = start(grace_s=0.3, step_s=0.05)
    try:
        call = running_call(address, steps=200)
        process.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as err:
            list(call)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert details(err.value)["ErrorInfo"].reason == "SHUTTING_DOWN"
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert health_status(address, timeout_s=0.5) is None


def test_sigterm_lets_running_work_finish_within_the_grace_period():
    process, address = start(grace_s=30, step_s=0.02)
    try:
        call = running_call(address, steps=30)
        process.send_signal(signal.SIGTERM)
        rest = list(call)
        assert rest[-1].WhichOneof("payload") == "result"
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
