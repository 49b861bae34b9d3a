"""SIGTERM stops stage 1 mid-request (issue 17, "Cancel and deadlines stop the work"), on a CPU.

A real stage-1 service process on tiny random checkpoints, started with a 1 s grace period, gets SIGTERM
while a GenerateViews request is in its sampler loop (200 steps: minutes of work on a CPU). The process must
exit within the grace period + 2 s (+ 1 s for the interpreter to exit), leave no process of its session
behind, and the client's call must end with an error instead of hanging.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
import pytest
from stage_doubles import stage1_inputs, stage1_requests
from test_stage2_cancel_cpu import read_progress_until, wait_until_serving

from services.launcher import free_port
from synchuman.v1 import common_pb2, stage1_pb2_grpc

pytestmark = pytest.mark.slow

GRACE_S = 1.0


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> str:
    from synchuman.checkpoints.dinov2_config import TINY_DINOV2_CONFIG
    from synchuman.checkpoints.layout import CheckpointLayout
    from synchuman.checkpoints.tiny_common import write_model_folder
    from synchuman.checkpoints.tiny_stage1 import write_tiny_stage1

    root = tmp_path_factory.mktemp("ckpts")
    layout = CheckpointLayout(root)
    write_model_folder(layout.dinov2, TINY_DINOV2_CONFIG, 0, layout.dinov2_weights.name, pickle=True)
    write_tiny_stage1(root, 0)
    return str(root)


def session_alive(session: int) -> bool:
    """Whether any process of process group ``session`` (the service started its own session) still runs."""
    try:
        os.killpg(session, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_mid_request_stops_stage1_within_the_grace_period(ckpts):
    address = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "synchuman_cli", "serve", "stage1", "--address", address, "--ckpts", ckpts]
    argv += ["--device", "cpu", "--grace", str(GRACE_S)]
    process = subprocess.Popen(argv, env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        wait_until_serving(process, address, "synchuman.v1.Stage1Service")
        stub = stage1_pb2_grpc.Stage1ServiceStub(grpc.insecure_channel(address))
        options = common_pb2.MultiviewOptions(steps=200)
        responses = stub.GenerateViews(stage1_requests(stage1_inputs(), options), timeout=600)
        assert read_progress_until(responses, lambda progress: progress.step >= 1), "no sampler step"
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        process.wait(timeout=60)
        took = time.monotonic() - sent
        assert took < GRACE_S + 2.0 + 1.0, f"exited {took:.1f} s after SIGTERM (grace {GRACE_S} s)"
        assert process.returncode == 0, f"exit status {process.returncode}"
        assert not session_alive(process.pid), "a process of the service's session still runs"
        with pytest.raises(grpc.RpcError) as ended:
            for _ in responses:
                pass
        assert ended.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
