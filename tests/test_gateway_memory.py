"""The gateway's resident memory stays flat after warm-up (issue 17: "RSS within 10 % over 50 jobs").

A real ``python -m gateway`` process (its RSS is what is measured) in front of the stage doubles of
tests/gateway_doubles.py in this process, with views as large as real ones (10 x ~1.2 MB of random pixels), so
each job moves ~25 MB through the gateway. Every other job is cancelled while stage 2 works on it: a stage
call that ends in an error used to leave its inputs in a reference cycle (the grpc call object is the
exception, its traceback holds the frames that reference it), freed only by a rare full garbage collection,
and the soak's gateway grew +46 % over 30 jobs. RSS is read when no job is in flight (the least of a second's
samples) after every 10 jobs. How much of the freed memory the allocator has handed back when it is read moves
one reading by up to ~10 MiB either way (measured over 130 jobs: 113.8, 103.4, 105.3, 102.7, 104.0, 103.1,
103.6, 104.0, 111.4 MiB, no trend), so the level at the start is the lower of the readings after jobs 10 and
20, the level at the end the lower of those after jobs 50 and 60: a leak raises both of the last two. The
allocator also moves the level in steps of ~12 MiB that stay (on a clean clone: 102.2, 101.9, 114.9, 115.8,
114.6, 116.9 MiB; again 102.0, 107.4, 106.2, 105.9, 108.4, 107.6), which 10 % of ~100 MiB does not hold (CI
failed once at +11 %), so the bound is 15 %: the leak this test was written for grew the gateway 46 % in 30
jobs.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from gateway_doubles import Behaviour, start_doubles
from test_gateway import Stack, photo, stub_for, upload, wait_until
from test_request_memory import cyclic_garbage

from services.launcher import free_port
from services.supervisor import health_status
from synchuman.v1 import common_pb2, reconstruction_pb2

WARM_UP_JOBS, MEASURED_JOBS, IN_FLIGHT = 10, 50, 3
#: RSS is read after every this many jobs.
BATCH = 10
MAX_GROWTH = 0.15
#: Views of real size (stage 1 at 640^2: ~1.2 MB each) and a stage 2 slow enough to be cancelled in.
BEHAVIOUR = Behaviour(steps=3, step_s=0.05, view_size=640)


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def settled_rss_mib(pid: int, seconds: float = 1.0) -> float:
    """The least RSS of ``pid`` over ``seconds`` (sampled every 20 ms) of a gateway with no job in flight."""
    samples, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(rss_mib(pid))
        time.sleep(0.02)
    return min(samples)


def run_job(stub, index: int) -> int:
    """Submit a job and watch it to its end; odd ones are cancelled once stage 2 reports progress. Returns
    the final state."""
    job_id = stub.SubmitJob(upload(photo()), timeout=30).job.id
    request = reconstruction_pb2.WatchJobRequest(job_id=job_id)
    cancel = index % 2 == 1
    for event in stub.WatchJob(request, timeout=60):
        if event.WhichOneof("event") == "finished":
            return event.finished.state
        if cancel and event.progress.stage == common_pb2.STAGE_RECONSTRUCTION and event.progress.step:
            stub.CancelJob(reconstruction_pb2.CancelJobRequest(job_id=job_id), timeout=10)
            cancel = False
    raise AssertionError(f"job {job_id} did not finish")


def run_jobs(stub, first: int, count: int) -> list[int]:
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        return list(pool.map(lambda i: run_job(stub, i), range(first, first + count)))


@pytest.fixture
def gateway_process(tmp_path):
    """(stub, pid) of a gateway process calling the doubles (one server in this process)."""
    server, port, _ = start_doubles("127.0.0.1:0", ["preprocess", "stage1", "stage2"], BEHAVIOUR)
    target, address = f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"
    argv = [
        sys.executable, "-m", "gateway", "--log-level", "WARNING", "--address", address, "--http", "off",
        "--data-dir", str(tmp_path / "data"), "--preprocess", target, "--stage1", target, "--stage2", target,
    ]  # fmt: skip
    env = dict(os.environ, MALLOC_ARENA_MAX="2")  # as services/launcher.py starts it
    process = subprocess.Popen(argv, cwd=REPO_ROOT, env=env)
    try:
        service = "synchuman.v1.ReconstructionService"
        wait_until(lambda: health_status(address, service) == 1, 60, "the gateway")
        yield stub_for(address), process.pid
    finally:
        process.terminate()
        process.wait(30)
        server.stop(grace=None)


def test_gateway_rss_is_flat_over_50_jobs_after_warm_up(gateway_process) -> None:
    stub, pid = gateway_process
    run_jobs(stub, 0, WARM_UP_JOBS)
    readings, states = [settled_rss_mib(pid)], []
    for first in range(WARM_UP_JOBS, WARM_UP_JOBS + MEASURED_JOBS, BATCH):
        states += run_jobs(stub, first, BATCH)
        readings.append(settled_rss_mib(pid))
    warm, end = min(readings[:2]), min(readings[-2:])
    print("gateway RSS readings (MiB):", [round(r, 1) for r in readings])
    cancelled = states.count(reconstruction_pb2.JOB_STATE_CANCELLED)
    assert states.count(reconstruction_pb2.JOB_STATE_SUCCEEDED) + cancelled == MEASURED_JOBS
    assert cancelled >= MEASURED_JOBS // 4  # the cancels landed (in stage 2)
    print(f"gateway RSS {warm:.1f} -> {end:.1f} MiB ({cancelled} of {MEASURED_JOBS} cancelled)")
    assert end <= warm * (1 + MAX_GROWTH), (
        f"gateway RSS {warm:.1f} MiB after {WARM_UP_JOBS} jobs -> {end:.1f} MiB after {MEASURED_JOBS} more "
        f"(+{end / warm - 1:.0%}; {cancelled} cancelled)"
    )


def test_a_cancelled_stage_call_leaves_no_frames_in_reference_cycles(tmp_path) -> None:
    """The mechanism behind the growth, without timing: the frames of a stage call stopped mid-stream (they
    hold its inputs) must be freed by reference counting, not left to the cyclic collector."""
    stack = Stack(tmp_path, behaviours={"stage2": Behaviour(steps=20, step_s=0.05)})
    try:
        run_job(stack.stub, 0)  # first-use state (channels, lazy imports) stays out
        with cyclic_garbage() as garbage:
            assert run_job(stack.stub, 1) == reconstruction_pb2.JOB_STATE_CANCELLED
            time.sleep(0.2)  # the worker finishes the job's bookkeeping after its last event
        frames = [o.f_code.co_name for o in garbage if type(o).__name__ == "frame"]
        assert frames == [], f"frames only reachable from cycles: {frames}"
    finally:
        stack.close()
        gc.collect()

