"""Cancelling stops stage 1's work in every phase (issue 17), on a CPU, in a real service process.

One stage-1 service runs on tiny random checkpoints. A request is cancelled as soon as the progress event that
marks a phase arrives: ``sampling 0/N`` (sent as the request starts: the encoders run), ``sampling 1/200``
(the sampler loop) and ``sampling N/N`` (after the last step: the VAE decode of the 10 views and the
structure decoder, ~2-4 s on one tiny core, so before the layer checks it kept the CPU busy past 1.5 s).
1.5 s later the service process must be idle (under 5 % of one core over the next 0.5 s) and it then serves
the next request to the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
from stage_doubles import stage1_inputs, stage1_requests
from test_stage2_cancel_cpu import cpu_share, read_progress_until, wait_until_serving

from services.launcher import free_port
from synchuman.v1 import common_pb2, stage1_pb2_grpc

pytestmark = pytest.mark.slow

#: Phase -> (sampler steps of the request, the sampling step whose event marks the phase).
PHASES = {"encode": (1, 0), "sampling": (200, 1), "decode": (1, 1)}


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> Iterator[tuple[subprocess.Popen, stage1_pb2_grpc.Stage1ServiceStub]]:
    from synchuman.checkpoints.dinov2_config import TINY_DINOV2_CONFIG
    from synchuman.checkpoints.layout import CheckpointLayout
    from synchuman.checkpoints.tiny_common import write_model_folder
    from synchuman.checkpoints.tiny_stage1 import write_tiny_stage1

    root = tmp_path_factory.mktemp("ckpts")
    layout = CheckpointLayout(root)
    write_model_folder(layout.dinov2, TINY_DINOV2_CONFIG, 0, layout.dinov2_weights.name, pickle=True)
    write_tiny_stage1(root, 0)
    address = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "synchuman_cli", "serve", "stage1", "--address", address]
    argv += ["--ckpts", str(root), "--device", "cpu"]
    process = subprocess.Popen(argv, env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        wait_until_serving(process, address, "synchuman.v1.Stage1Service")
        yield process, stage1_pb2_grpc.Stage1ServiceStub(grpc.insecure_channel(address))
    finally:
        process.kill()
        process.wait()


def call(stub, steps: int):
    options = common_pb2.MultiviewOptions(steps=steps)
    return stub.GenerateViews(stage1_requests(stage1_inputs(), options), timeout=600)


def run_until(responses, step: int) -> bool:
    """Read progress until the event of sampler step ``step``; False when the call ended first."""
    return read_progress_until(responses, lambda progress: progress.step == step)


@pytest.mark.parametrize("phase", PHASES)
def test_cancel_in_each_phase_idles_the_service_within_2_s_and_it_serves_the_next(stage1, phase):
    process, stub = stage1
    steps, step = PHASES[phase]
    responses = call(stub, steps)
    reached = run_until(responses, step)
    responses.cancel()
    cancelled = time.monotonic()
    time.sleep(1.5)
    share = cpu_share(process.pid, 0.5)
    assert share < 0.05, f"{share:.0%} of a core busy 1.5-2 s after cancelling in {phase} ({reached=})"
    assert time.monotonic() - cancelled < 2.5
    final = list(call(stub, 1))[-1]
    assert final.WhichOneof("payload") == "result"
