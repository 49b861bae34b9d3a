"""The gateway against stage-service doubles (tests/gateway_doubles.py) over real gRPC.

In-process gateway + doubles where the test is about the job logic; separate processes where it is about
processes (a stage process killed mid-job, the gateway process killed and restarted).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from conftest import REPO_ROOT, require_tool
from gateway_doubles import Behaviour, png, start_doubles
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image

from gateway.retry import RetryPolicy
from gateway.server import Gateway, GatewayConfig
from services.common.stage_io import blob_chunks, blob_header
from services.launcher import free_port
from synchuman.stage_catalog import media_type
from synchuman.v1 import common_pb2, reconstruction_pb2, reconstruction_pb2_grpc

FAST_RETRY = RetryPolicy(max_attempts=60, initial_backoff_s=0.05, multiplier=2.0, max_backoff_s=0.3)
DOUBLES = str(Path(__file__).with_name("gateway_doubles.py"))


def photo() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 4), 128, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(data: bytes, key: str = "", options: common_pb2.JobOptions | None = None):
    start = reconstruction_pb2.SubmitJobStart(
        options=options, idempotency_key=key, image=blob_header("input", "image/png", data)
    )
    yield reconstruction_pb2.SubmitJobRequest(start=start)
    for chunk in blob_chunks("input", data, chunk_bytes=100):
        yield reconstruction_pb2.SubmitJobRequest(chunk=chunk)


def stub_for(address: str) -> reconstruction_pb2_grpc.ReconstructionServiceStub:
    return reconstruction_pb2_grpc.ReconstructionServiceStub(grpc.insecure_channel(address))


def watch_all(stub, job_id: str, timeout: float = 60.0) -> list[reconstruction_pb2.WatchJobResponse]:
    return list(stub.WatchJob(reconstruction_pb2.WatchJobRequest(job_id=job_id), timeout=timeout))


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def download(stub, job_id: str, name: str) -> tuple[common_pb2.BlobHeader, bytes]:
    header, data = None, bytearray()
    for message in stub.GetArtifact(
        reconstruction_pb2.GetArtifactRequest(job_id=job_id, name=name), timeout=30
    ):
        if message.WhichOneof("payload") == "header":
            header = message.header
        else:
            data.extend(message.chunk.data)
    assert header is not None and hashlib.sha256(data).hexdigest() == header.sha256
    return header, bytes(data)


def calls(log: Path, service: str, job_id: str, outcome: str) -> int:
    if not log.exists():
        return 0
    return sum(
        1
        for line in log.read_text().splitlines()
        if line.split()[0::2] == [service, job_id] and line.split()[3] == outcome
    )


class Stack:
    """Doubles of the three stages (in this process, one server each) and a gateway in this process."""

    def __init__(self, tmp: Path, behaviours: dict[str, Behaviour] | None = None, **config) -> None:
        self.log = tmp / "calls.log"
        self.servers, self.doubles, targets = [], {}, {}
        for name in ("preprocess", "stage1", "stage2"):
            behaviour = (behaviours or {}).get(name, Behaviour())
            behaviour.log = self.log
            server, port, doubles = start_doubles("127.0.0.1:0", [name], behaviour)
            self.servers.append(server)
            self.doubles.update(doubles)
            targets[name] = f"127.0.0.1:{port}"
        config.setdefault("retry", FAST_RETRY)
        config.setdefault("http_address", "")
        self.config = GatewayConfig(
            address="127.0.0.1:0",
            preprocess_target=config.pop("preprocess_target", targets["preprocess"]),
            stage1_target=config.pop("stage1_target", targets["stage1"]),
            stage2_target=config.pop("stage2_target", targets["stage2"]),
            data_dir=tmp / "data",
            **config,
        )
        self.gateway = Gateway(self.config)
        self.stub = stub_for(self.gateway.address)

    def close(self) -> None:
        self.gateway.stop(grace_s=0.5)
        for server in self.servers:
            server.stop(grace=None)


@pytest.fixture
def stack_factory(tmp_path):
    stacks: list[Stack] = []

    def make(**kwargs) -> Stack:
        stacks.append(Stack(tmp_path / f"s{len(stacks)}", **kwargs))
        return stacks[-1]

    yield make
    for stack in stacks:
        stack.close()


def test_job_flows_through_the_stages_with_ordered_events(stack_factory):
    stack = stack_factory()
    options = common_pb2.JobOptions()
    options.reconstruction.outputs.append(common_pb2.OUTPUT_FORMAT_GAUSSIAN_PLY)
    job = stack.stub.SubmitJob(upload(photo(), options=options), timeout=30).job
    assert job.state == reconstruction_pb2.JOB_STATE_QUEUED and job.id
    events = watch_all(stack.stub, job.id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "finished" and events[-1].finished.state == reconstruction_pb2.JOB_STATE_SUCCEEDED
    completed = [e.stage_completed for e in events if e.WhichOneof("event") == "stage_completed"]
    assert completed == [
        common_pb2.STAGE_PREPROCESS,
        common_pb2.STAGE_MULTIVIEW,
        common_pb2.STAGE_RECONSTRUCTION,
    ]
    stages = [e.progress.stage for e in events if e.WhichOneof("event") == "progress"]
    assert stages == sorted(stages)
    steps = [
        e.progress.step
        for e in events
        if e.WhichOneof("event") == "progress"
        and e.progress.phase == "sampling"
        and e.progress.stage == common_pb2.STAGE_MULTIVIEW
    ]
    assert steps == [1, 2, 3]
    done = stack.stub.GetJob(reconstruction_pb2.GetJobRequest(job_id=job.id), timeout=10).job
    assert dict(done.attempts) == {"preprocess": 1, "multiview": 1, "reconstruction": 1}
    names = {a.blob.name for a in done.artifacts}
    assert {
        "input",
        "framed.png",
        "conditioning.png",
        "mask.png",
        "input_report.json",
        "voxels.bin",
        "person.glb",
        "gaussians.ply",
        "output_report.json",
        "color_0.png",
        "normal_4.png",
    } <= names
    assert all(a.blob.media_type == media_type(a.blob.name) for a in done.artifacts if a.blob.name != "input")
    assert done.output_report.face_count == 12 and done.input_report.mask_source == "alpha"
    header, glb = download(stack.stub, job.id, "person.glb")
    assert header.media_type == "model/gltf-binary" and glb[:4] == b"glTF"
    assert download(stack.stub, job.id, "color_1.png")[1] == png((20, 0, 235))
    # a watcher that resumes after an event gets exactly the rest
    rest = list(
        stack.stub.WatchJob(reconstruction_pb2.WatchJobRequest(job_id=job.id, after_sequence=3), timeout=10)
    )
    assert [e.sequence for e in rest] == [e.sequence for e in events[3:]]
    listed = stack.stub.ListJobs(
        reconstruction_pb2.ListJobsRequest(state=reconstruction_pb2.JOB_STATE_SUCCEEDED), timeout=10
    ).jobs
    assert [j.id for j in listed] == [job.id]
    with pytest.raises(grpc.RpcError) as err:
        download(stack.stub, job.id, "mesh_obj.zip")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_unavailable_stage_is_retried_without_rerunning_earlier_stages(stack_factory):
    stack = stack_factory(behaviours={"stage1": Behaviour(fail=2)})
    job = stack.stub.SubmitJob(upload(photo()), timeout=30).job
    events = watch_all(stack.stub, job.id)
    assert events[-1].finished.state == reconstruction_pb2.JOB_STATE_SUCCEEDED
    retrying = [e.retrying for e in events if e.WhichOneof("event") == "retrying"]
    assert [r.code for r in retrying] == [grpc.StatusCode.UNAVAILABLE.value[0]] * 2
    assert "temporarily down" in retrying[0].message
    assert dict(events[-1].finished.attempts) == {"preprocess": 1, "multiview": 3, "reconstruction": 1}
    assert calls(stack.log, "preprocess", job.id, "started") == 1
    assert calls(stack.log, "stage1", job.id, "unavailable") == 2
    assert calls(stack.log, "stage1", job.id, "ok") == 1


def test_bad_input_fails_the_job_without_retry(stack_factory):
    stack = stack_factory()
    with pytest.raises(grpc.RpcError) as err:
        stack.stub.SubmitJob(upload(b"not an image at all"), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    options = common_pb2.JobOptions()
    options.multiview.steps = 500
    with pytest.raises(grpc.RpcError) as err:
        stack.stub.SubmitJob(upload(photo(), options=options), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "multiview.steps" in err.value.details()
    options = common_pb2.JobOptions()
    options.reconstruction.bake_mode = 7  # not a BakeMode value (a newer client, a typo in JSON-less code)
    with pytest.raises(grpc.RpcError) as err:
        stack.stub.SubmitJob(upload(photo(), options=options), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bake_mode" in err.value.details() and "BAKE_MODE_FAST" in err.value.details()


def test_idempotency_key_returns_the_same_job(stack_factory):
    stack = stack_factory()
    first = stack.stub.SubmitJob(upload(photo(), key="order-17"), timeout=30)
    second = stack.stub.SubmitJob(upload(photo(), key="order-17"), timeout=30)
    assert not first.deduplicated and second.deduplicated and second.job.id == first.job.id
    assert len(stack.stub.ListJobs(reconstruction_pb2.ListJobsRequest(), timeout=10).jobs) == 1


def test_queue_overflow_gives_resource_exhausted(stack_factory):
    stack = stack_factory(behaviours={"stage1": Behaviour(step_s=0.5, steps=20)}, max_pending_jobs=2)
    jobs = [stack.stub.SubmitJob(upload(photo()), timeout=30).job for _ in range(2)]
    with pytest.raises(grpc.RpcError) as err:
        stack.stub.SubmitJob(upload(photo()), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(err.value)
    info = error_details_pb2.RetryInfo()
    assert any(d.Unpack(info) for d in status.details if d.Is(info.DESCRIPTOR))
    for job in jobs:
        stack.stub.CancelJob(reconstruction_pb2.CancelJobRequest(job_id=job.id), timeout=30)
    stack.stub.SubmitJob(upload(photo()), timeout=30)  # slots are free again


def test_cancel_stops_the_running_stage_call(stack_factory):
    stack = stack_factory(behaviours={"stage1": Behaviour(step_s=0.2, steps=200)})
    job = stack.stub.SubmitJob(upload(photo()), timeout=30).job
    for event in stack.stub.WatchJob(reconstruction_pb2.WatchJobRequest(job_id=job.id), timeout=30):
        if (
            event.WhichOneof("event") == "progress"
            and event.progress.stage == common_pb2.STAGE_MULTIVIEW
            and event.progress.step >= 1
        ):
            break
    started = time.monotonic()
    cancelled = stack.stub.CancelJob(reconstruction_pb2.CancelJobRequest(job_id=job.id), timeout=30).job
    assert cancelled.state == reconstruction_pb2.JOB_STATE_CANCELLED
    assert time.monotonic() - started < 10
    wait_until(lambda: calls(stack.log, "stage1", job.id, "cancelled") == 1, what="stage 1 to see the cancel")
    assert watch_all(stack.stub, job.id)[-1].finished.state == reconstruction_pb2.JOB_STATE_CANCELLED
    # cancelling again is a no-op; an unknown job is NOT_FOUND
    assert (
        stack.stub.CancelJob(reconstruction_pb2.CancelJobRequest(job_id=job.id), timeout=30).job.state
        == reconstruction_pb2.JOB_STATE_CANCELLED
    )
    with pytest.raises(grpc.RpcError) as err:
        stack.stub.GetJob(reconstruction_pb2.GetJobRequest(job_id="nope"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_second_stage1_replica_takes_work(tmp_path, stack_factory):
    second, port, doubles = start_doubles("127.0.0.1:0", ["stage1"], Behaviour())
    try:
        first_port = free_port()
        first, _, first_doubles = start_doubles(f"127.0.0.1:{first_port}", ["stage1"], Behaviour())
        target = f"ipv4:127.0.0.1:{first_port},127.0.0.1:{port}"
        stack = stack_factory(stage1_target=target)
        jobs = [stack.stub.SubmitJob(upload(photo()), timeout=30).job for _ in range(4)]
        for job in jobs:
            assert watch_all(stack.stub, job.id)[-1].finished.state == reconstruction_pb2.JOB_STATE_SUCCEEDED
        assert first_doubles["stage1"].calls >= 1 and doubles["stage1"].calls >= 1
        assert first_doubles["stage1"].calls + doubles["stage1"].calls == 4
        first.stop(grace=None)
    finally:
        second.stop(grace=None)


def _spawn_doubles(address: str, services: str, log: Path, *extra: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, DOUBLES, address, "--services", services, "--log", str(log), *extra]
    )
    from services.supervisor import health_status

    wait_until(lambda: health_status(address) is not None, 30, f"{services} double at {address}")
    return process


def test_stage2_process_killed_mid_job_completes_without_rerunning_stage1(stack_factory, tmp_path):
    log = tmp_path / "stage2.log"
    address = f"127.0.0.1:{free_port()}"
    stage2 = _spawn_doubles(address, "stage2", log, "--step-s", "0.3", "--steps", "20")
    try:
        stack = stack_factory(stage2_target=address)
        job = stack.stub.SubmitJob(upload(photo()), timeout=30).job
        wait_until(lambda: calls(log, "stage2", job.id, "started") == 1, what="stage 2 to start")
        time.sleep(0.5)
        stage2.send_signal(signal.SIGKILL)
        stage2.wait()
        stage2 = _spawn_doubles(address, "stage2", log, "--steps", "2")
        done = watch_all(stack.stub, job.id)[-1].finished
        assert done.state == reconstruction_pb2.JOB_STATE_SUCCEEDED, done.error.message
        assert done.attempts["multiview"] == 1 and done.attempts["reconstruction"] >= 2
        assert calls(stack.log, "stage1", job.id, "ok") == 1
        assert calls(log, "stage2", job.id, "ok") == 1
    finally:
        stage2.kill()
        stage2.wait()


def test_restarted_stage_gets_its_retry_when_healthy_not_after_the_back_off(stack_factory, tmp_path):
    """Stage 2 dies mid-job and comes back ~1 s later; the retry back-off has grown to 20 s by then, yet the
    job resumes as soon as the stage's health turns SERVING."""
    log = tmp_path / "stage2.log"
    address = f"127.0.0.1:{free_port()}"
    stage2 = _spawn_doubles(address, "stage2", log, "--step-s", "0.3", "--steps", "20")
    try:
        slow = RetryPolicy(max_attempts=6, initial_backoff_s=0.2, multiplier=100.0, max_backoff_s=30.0)
        stack = stack_factory(stage2_target=address, retry=slow)
        job = stack.stub.SubmitJob(upload(photo()), timeout=30).job
        wait_until(lambda: calls(log, "stage2", job.id, "started") == 1, what="stage 2 to start")
        stage2.send_signal(signal.SIGKILL)
        stage2.wait()
        time.sleep(1.0)  # attempt 2 fails on the closed port; its back-off is 20 s
        stage2 = _spawn_doubles(address, "stage2", log, "--steps", "2")
        back = time.monotonic()
        done = watch_all(stack.stub, job.id)[-1].finished
        assert done.state == reconstruction_pb2.JOB_STATE_SUCCEEDED, done.error.message
        assert time.monotonic() - back < 8.0  # the plain back-off would wait until ~20 s
        assert done.attempts["reconstruction"] == 3 and done.attempts["multiview"] == 1
    finally:
        stage2.kill()
        stage2.wait()


def _spawn_gateway(address: str, targets: dict[str, str], data: Path, http: str = "off") -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "gateway",
        "--log-level",
        "WARNING",
        "--address",
        address,
        "--http",
        http,
        "--data-dir",
        str(data),
        "--preprocess",
        targets["preprocess"],
        "--stage1",
        targets["stage1"],
        "--stage2",
        targets["stage2"],
    ]
    process = subprocess.Popen(argv, cwd=REPO_ROOT)
    from services.supervisor import health_status

    wait_until(lambda: health_status(address, "synchuman.v1.ReconstructionService") == 1, 30, "the gateway")
    return process


def test_gateway_process_restart_resumes_the_job(tmp_path):
    log = tmp_path / "calls.log"
    servers, targets = [], {}
    for name, behaviour in (
        ("preprocess", Behaviour()),
        ("stage1", Behaviour()),
        ("stage2", Behaviour(step_s=0.3, steps=10)),
    ):
        behaviour.log = log
        server, port, _ = start_doubles("127.0.0.1:0", [name], behaviour)
        servers.append(server)
        targets[name] = f"127.0.0.1:{port}"
    address = f"127.0.0.1:{free_port()}"
    gateway = _spawn_gateway(address, targets, tmp_path / "data")
    try:
        stub = stub_for(address)
        job = stub.SubmitJob(upload(photo()), timeout=30).job
        wait_until(lambda: calls(log, "stage2", job.id, "started") == 1, what="stage 2 to start")
        gateway.send_signal(signal.SIGKILL)
        gateway.wait()
        gateway = _spawn_gateway(address, targets, tmp_path / "data")
        events = watch_all(stub, job.id)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        done = events[-1].finished
        assert done.state == reconstruction_pb2.JOB_STATE_SUCCEEDED, done.error.message
        assert calls(log, "preprocess", job.id, "started") == 1
        assert calls(log, "stage1", job.id, "started") == 1
        assert calls(log, "stage2", job.id, "started") == 2
        assert done.attempts["reconstruction"] == 2
    finally:
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(30) == 0
        for server in servers:
            server.stop(grace=None)


# -- HTTP bridge ---------------------------------------------------------------------------------------


def _sse(response: httpx.Response) -> list[dict]:
    events, current = [], {}
    for line in response.iter_lines():
        if not line:
            if "data" in current:
                events.append(current)
            current = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            current[key] = value
    return events


def test_http_bridge_submit_events_download(stack_factory):
    stack = stack_factory(http_address="127.0.0.1:0")
    with httpx.Client(base_url=f"http://127.0.0.1:{stack.gateway.http_port}", timeout=30) as http:
        options = {"multiview": {"steps": 3}, "reconstruction": {"outputs": ["OUTPUT_FORMAT_GAUSSIAN_PLY"]}}
        reply = http.post(
            "/v1/jobs",
            files={"image": ("me.png", photo(), "image/png")},
            data={"options": json.dumps(options), "idempotency_key": "k1"},
        )
        assert reply.status_code == 201, reply.text
        job = reply.json()["job"]
        assert job["state"] == "JOB_STATE_QUEUED" and job["options"]["multiview"]["steps"] == 3
        again = http.post(
            "/v1/jobs", content=photo(), headers={"Content-Type": "image/png", "Idempotency-Key": "k1"}
        )
        assert (
            again.status_code == 200
            and again.json()["deduplicated"]
            and again.json()["job"]["id"] == job["id"]
        )
        with http.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = _sse(stream)
        assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))
        assert events[-1]["event"] == "finished"
        assert json.loads(events[-1]["data"])["finished"]["state"] == "JOB_STATE_SUCCEEDED"
        resumed = http.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": str(len(events) - 2)})
        assert [int(e["id"]) for e in _sse(resumed)] == [len(events) - 1, len(events)]
        glb = http.get(f"/v1/jobs/{job['id']}/artifacts/person.glb")
        assert glb.status_code == 200 and glb.headers["content-type"] == "model/gltf-binary"
        assert (
            glb.content[:4] == b"glTF"
            and glb.headers["etag"] == f'"{hashlib.sha256(glb.content).hexdigest()}"'
        )
        view = http.get(f"/v1/jobs/{job['id']}/artifacts/color_0.png")
        assert view.headers["content-type"] == "image/png"
        got = http.get(f"/v1/jobs/{job['id']}").json()["job"]
        assert got["state"] == "JOB_STATE_SUCCEEDED" and got["output_report"]["face_count"] == 12
        assert [j["id"] for j in http.get("/v1/jobs", params={"state": "succeeded"}).json()["jobs"]] == [
            job["id"]
        ]
        missing = http.get("/v1/jobs/unknown")
        assert missing.status_code == 404 and "unknown" in missing.json()["error"]["message"]
        bad = http.post("/v1/jobs", content=b"garbage", headers={"Content-Type": "image/png"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_ARGUMENT"
        spec = http.get("/openapi.json").json()
        assert "/v1/jobs/{job_id}/events" in spec["paths"] and "multipart/form-data" in json.dumps(spec)
        assert "synchuman_gateway_stage_seconds" in http.get("/metrics").text


def test_http_bridge_auth_limits_and_overflow(stack_factory):
    stack = stack_factory(
        http_address="127.0.0.1:0",
        auth_token="s3cret",
        max_upload_bytes=200_000,
        max_pending_jobs=1,
        behaviours={"stage1": Behaviour(step_s=0.5, steps=20)},
    )
    with httpx.Client(base_url=f"http://127.0.0.1:{stack.gateway.http_port}", timeout=30) as http:
        anonymous = http.get("/v1/jobs")
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
        assert http.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/healthz").status_code == 200
        auth = {"Authorization": "Bearer s3cret"}
        big = http.post("/v1/jobs", content=b"x" * 400_000, headers={**auth, "Content-Type": "image/png"})
        assert big.status_code == 413 and "limit" in big.json()["error"]["message"]
        assert big.json()["error"]["code"] == "INVALID_ARGUMENT"
        first = http.post("/v1/jobs", content=photo(), headers={**auth, "Content-Type": "image/png"})
        assert first.status_code == 201
        full = http.post("/v1/jobs", content=photo(), headers={**auth, "Content-Type": "image/png"})
        assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
        assert full.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
        job_id = first.json()["job"]["id"]
        cancelled = http.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
        assert cancelled.status_code == 200 and cancelled.json()["job"]["state"] == "JOB_STATE_CANCELLED"


def test_grpc_requires_the_token_except_health_and_reflection(stack_factory):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    from services.common.auth import authorized_channel

    stack = stack_factory(auth_token="s3cret")
    with grpc.insecure_channel(stack.gateway.address) as channel:
        anonymous = reconstruction_pb2_grpc.ReconstructionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            anonymous.ListJobs(reconstruction_pb2.ListJobsRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "no token" in refused.value.details() and "Bearer" in refused.value.details()
        with pytest.raises(grpc.RpcError) as streamed:  # a streaming call is refused the same way
            list(anonymous.WatchJob(reconstruction_pb2.WatchJobRequest(job_id="x"), timeout=10))
        assert streamed.value.code() == grpc.StatusCode.UNAUTHENTICATED
        wrong = reconstruction_pb2_grpc.ReconstructionServiceStub(authorized_channel(channel, "nope"))
        with pytest.raises(grpc.RpcError) as denied:
            wrong.ListJobs(reconstruction_pb2.ListJobsRequest(), timeout=10)
        assert (
            denied.value.code() == grpc.StatusCode.UNAUTHENTICATED and "wrong token" in denied.value.details()
        )
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert "synchuman.v1.ReconstructionService" in services
        allowed = reconstruction_pb2_grpc.ReconstructionServiceStub(authorized_channel(channel, "s3cret"))
        job = allowed.SubmitJob(upload(photo()), timeout=30).job
        assert allowed.GetJob(reconstruction_pb2.GetJobRequest(job_id=job.id), timeout=10).job.id == job.id


def test_delete_removes_a_finished_job_and_refuses_a_running_one(stack_factory):
    stack = stack_factory(http_address="127.0.0.1:0", behaviours={"stage1": Behaviour(step_s=0.3, steps=30)})
    artifacts = stack.config.data_dir / "artifacts"
    running = stack.stub.SubmitJob(upload(photo()), timeout=30).job
    with pytest.raises(grpc.RpcError) as busy:
        stack.stub.DeleteJob(reconstruction_pb2.DeleteJobRequest(job_id=running.id), timeout=10)
    assert (
        busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "cancel it first" in busy.value.details()
    )
    stack.stub.CancelJob(reconstruction_pb2.CancelJobRequest(job_id=running.id), timeout=30)
    assert (artifacts / running.id / "input").is_file()
    deleted = stack.stub.DeleteJob(reconstruction_pb2.DeleteJobRequest(job_id=running.id), timeout=10)
    assert deleted.deleted_artifacts >= 1 and not (artifacts / running.id).exists()
    for call in (
        lambda: stack.stub.GetJob(reconstruction_pb2.GetJobRequest(job_id=running.id), timeout=10),
        lambda: stack.stub.DeleteJob(reconstruction_pb2.DeleteJobRequest(job_id=running.id), timeout=10),
        lambda: list(stack.stub.WatchJob(reconstruction_pb2.WatchJobRequest(job_id=running.id), timeout=10)),
    ):
        with pytest.raises(grpc.RpcError) as gone:
            call()
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    with httpx.Client(base_url=f"http://127.0.0.1:{stack.gateway.http_port}", timeout=30) as http:
        job_id = http.post("/v1/jobs", content=photo(), headers={"Content-Type": "image/png"}).json()["job"][
            "id"
        ]
        conflict = http.delete(f"/v1/jobs/{job_id}")
        assert conflict.status_code == 409 and "cancel it first" in conflict.json()["error"]["message"]
        http.post(f"/v1/jobs/{job_id}/cancel")
        assert http.delete(f"/v1/jobs/{job_id}").json()["deleted_artifacts"] >= 1
        assert http.delete(f"/v1/jobs/{job_id}").status_code == 404


def test_retention_deletes_only_expired_finished_jobs(stack_factory):
    stack = stack_factory(retention_s=3600.0, behaviours={"stage1": Behaviour(step_s=0.3, steps=30)})
    done = stack.stub.SubmitJob(upload(photo(), key="done"), timeout=30).job
    stack.stub.CancelJob(reconstruction_pb2.CancelJobRequest(job_id=done.id), timeout=30)
    busy = stack.stub.SubmitJob(upload(photo(), key="busy"), timeout=30).job
    manager = stack.gateway.manager
    assert manager.delete_expired(now_s=time.time()) == 0  # nothing is an hour old yet
    assert manager.delete_expired(now_s=time.time() + 3601) == 1  # the finished one; the running one stays
    assert stack.stub.GetJob(reconstruction_pb2.GetJobRequest(job_id=busy.id), timeout=10).job.id == busy.id
    with pytest.raises(grpc.RpcError) as gone:
        stack.stub.GetJob(reconstruction_pb2.GetJobRequest(job_id=done.id), timeout=10)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert not (stack.config.data_dir / "artifacts" / done.id).exists()


def test_buf_curl_lists_services_and_checks_health(stack_factory):
    buf = require_tool(REPO_ROOT / "node_modules" / ".bin" / "buf", "buf (npm @bufbuild/buf)")
    stack = stack_factory()
    base = f"http://{stack.gateway.address}"
    env = {**os.environ, "HOME": str(stack.config.data_dir)}
    listed = subprocess.run(
        [str(buf), "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-methods", base],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert listed.returncode == 0, listed.stderr
    assert "synchuman.v1.ReconstructionService/SubmitJob" in listed.stdout
    assert "grpc.health.v1.Health/Check" in listed.stdout
    health = subprocess.run(
        [
            str(buf),
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "-d",
            '{"service": "synchuman.v1.ReconstructionService"}',
            f"{base}/grpc.health.v1.Health/Check",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["status"] == "SERVING"
