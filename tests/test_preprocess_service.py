"""PreprocessService over real gRPC: health, reflection, a streamed call, rich errors, admission, shutdown."""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import signal
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
from conftest import REPO_ROOT
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_status import rpc_status
from PIL import Image

from services.common.stage_runtime import StageLimits
from services.common.stage_server import StageServer
from services.preprocess import backend as preprocess_backend
from services.preprocess import main as preprocess_main
from synchuman.v1 import common_pb2, preprocess_pb2, preprocess_pb2_grpc

SERVICE = "synchuman.v1.PreprocessService"


def start(segmenter_dir, limits: StageLimits = StageLimits(concurrency=1, max_queue=2)) -> StageServer:
    parser = argparse.ArgumentParser()
    preprocess_main.add_arguments(parser)
    args = parser.parse_args(["--segmentation-dir", str(segmenter_dir)])
    server = StageServer(preprocess_main.build_spec(args), "127.0.0.1:0", limits)
    server.load()
    return server


@pytest.fixture(scope="module")
def server(segmenter_dir):
    server = start(segmenter_dir)
    yield server
    server.stop()


@pytest.fixture()
def stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield preprocess_pb2_grpc.PreprocessServiceStub(channel)


def encode(rgba: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format=fmt)
    return buf.getvalue()


def cutout() -> bytes:
    rgba = np.zeros((900, 600, 4), np.uint8)
    rng = np.random.default_rng(0)
    rgba[100:800, 150:450, :3] = rng.integers(0, 256, (700, 300, 3))
    rgba[100:800, 150:450, 3] = 255
    return encode(rgba)


def requests(data: bytes, chunk: int = 1 << 16, options=None, sha256: str | None = None, name: str = "input"):
    header = common_pb2.BlobHeader(
        name=name, media_type="image/png", size_bytes=len(data),
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
    )
    yield preprocess_pb2.PreprocessRequest(
        start=preprocess_pb2.PreprocessStart(request_id="test", options=options, image=header)
    )
    for offset in range(0, len(data), chunk):
        yield preprocess_pb2.PreprocessRequest(
            chunk=common_pb2.BlobChunk(name=name, offset=offset, data=data[offset : offset + chunk])
        )


def details(error: grpc.RpcError) -> dict[str, object]:
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no google.rpc.Status"
    out: dict[str, object] = {}
    kinds = (error_details_pb2.BadRequest, error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo,
             common_pb2.InputQualityReport)
    for packed in status.details:
        for cls in kinds:
            if packed.Is(cls.DESCRIPTOR):
                value = cls()
                packed.Unpack(value)
                out[cls.__name__] = value
    return out


def test_health(server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
        descriptor = database.FindFileContainingSymbol(SERVICE)
        names = {(s.name, m.name) for s in descriptor.service for m in s.method}
        assert ("PreprocessService", "Preprocess") in names


def test_streamed_call(stub) -> None:
    data = cutout()
    responses = list(stub.Preprocess(requests(data), timeout=60))
    kinds = [r.WhichOneof("payload") for r in responses]
    phases = [r.progress.phase for r in responses if r.WhichOneof("payload") == "progress"]
    assert phases == ["decode", "segment", "frame"]
    assert kinds.index("report") > kinds.index("progress") and kinds[-1] == "result"
    blobs: dict[str, bytearray] = {}
    headers = {}
    for r in responses:
        if r.WhichOneof("payload") == "blob":
            headers[r.blob.name] = r.blob
            blobs[r.blob.name] = bytearray()
        elif r.WhichOneof("payload") == "chunk":
            assert r.chunk.offset == len(blobs[r.chunk.name]) and len(r.chunk.data) <= 1 << 20
            blobs[r.chunk.name].extend(r.chunk.data)
    assert list(blobs) == ["framed.png", "conditioning.png", "mask.png"]
    for name, blob in blobs.items():
        assert headers[name].size_bytes == len(blob)
        assert headers[name].sha256 == hashlib.sha256(blob).hexdigest()
    framed = Image.open(io.BytesIO(blobs["framed.png"]))
    assert framed.size == (768, 768) and framed.mode == "RGBA"
    assert Image.open(io.BytesIO(blobs["conditioning.png"])).size == (518, 518)
    mask = Image.open(io.BytesIO(blobs["mask.png"]))
    assert mask.size == (600, 900) and mask.mode == "L"
    result = responses[-1].result
    assert result.report.mask_source == "alpha" and result.report.width == 600
    assert [h.name for h in result.blobs] == list(blobs) and result.seconds > 0


def test_segmented_photo_in_megabyte_chunks(stub, images_dir) -> None:
    person = np.asarray(Image.open(images_dir / "person_002.png").convert("RGBA")).astype(np.float32)
    photo = np.full((person.shape[0] + 200, person.shape[1] + 200, 3), 110, np.float32)
    alpha = person[:, :, 3:] / 255
    photo[100:-100, 100:-100] = person[:, :, :3] * alpha + 110 * (1 - alpha)
    data = encode(photo.astype(np.uint8))
    assert len(data) > 1 << 20  # several upload chunks
    responses = list(stub.Preprocess(requests(data, chunk=1 << 20), timeout=60))
    report = responses[-1].result.report
    assert report.mask_source == "segmenter:u2netp" and report.person_components == 1
    assert 0.1 < report.mask_coverage < 0.6 and not report.touched_edges


def call_error(stub, generator, timeout: float = 60) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Preprocess(generator, timeout=timeout))
    return info.value


def test_truncated_photo_is_invalid_argument_with_details(stub, images_dir) -> None:
    error = call_error(stub, requests((images_dir / "photo_truncated.jpeg").read_bytes()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "truncated" in error.details()
    found = details(error)
    assert found["ErrorInfo"].reason == "TRUNCATED_IMAGE" and found["ErrorInfo"].domain == "synchuman.serve"
    assert found["BadRequest"].field_violations[0].field == "image"


def test_empty_mask_carries_the_report(stub) -> None:
    rgba = np.zeros((300, 200, 4), np.uint8)
    rgba[150, 100] = 255
    error = call_error(stub, requests(encode(rgba)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = details(error)
    assert found["ErrorInfo"].reason == "EMPTY_MASK"
    report = found["InputQualityReport"]
    assert report.mask_source == "alpha" and report.issues[0].severity == common_pb2.SEVERITY_ERROR


def test_upload_errors(stub) -> None:
    data = cutout()
    error = call_error(stub, requests(data, sha256="0" * 64))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "SHA-256" in error.details()
    assert details(error)["BadRequest"].field_violations[0].field == "start.image"
    error = call_error(stub, requests(data, name="photo"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    chunk_first = preprocess_pb2.PreprocessRequest(chunk=common_pb2.BlobChunk(name="input"))
    error = call_error(stub, iter([chunk_first]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "start" in error.details()
    error = call_error(stub, requests(b""))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty" in error.details()


def test_unknown_segmenter(stub) -> None:
    photo = np.full((64, 64, 3), 90, np.uint8)
    options = common_pb2.PreprocessOptions(segmenter="birefnet-portrait")
    error = call_error(stub, requests(encode(photo), options=options))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = details(error)
    assert found["ErrorInfo"].reason == "SEGMENTER_NOT_FOUND"
    assert found["BadRequest"].field_violations[0].field == "options.segmenter"


def test_capacity_and_deadline(segmenter_dir, monkeypatch) -> None:
    """One slot and no queue: a second call is refused with RetryInfo; a call past its deadline stops."""
    release = threading.Event()
    entered = threading.Event()
    real = preprocess_backend.preprocess

    def slow(data, options, progress=None):
        entered.set()
        release.wait(30)
        return real(data, options, progress)

    monkeypatch.setattr(preprocess_backend, "preprocess", slow)
    server = start(segmenter_dir, StageLimits(concurrency=1, max_queue=0, typical_job_s=2.0))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = preprocess_pb2_grpc.PreprocessServiceStub(channel)
            first = stub.Preprocess(requests(cutout()), timeout=60)
            results: list = []
            worker = threading.Thread(target=lambda: results.append(list(first)))
            worker.start()
            assert entered.wait(10)
            error = call_error(stub, requests(cutout()))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details(error)["RetryInfo"].retry_delay.ToNanoseconds() > 0
            release.set()
            worker.join(30)
            assert results and results[0][-1].WhichOneof("payload") == "result"
            release.clear()
            entered.clear()
            threading.Timer(1.5, release.set).start()
            error = call_error(stub, requests(cutout()), timeout=0.5)
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        release.set()
        server.stop()


def reported_address(process: subprocess.Popen) -> str:
    """The address a ``serve preprocess`` process logs once it is serving ("... serving on ADDRESS")."""
    for line in process.stderr:
        if "serving on" in line:
            return line.rsplit(" ", 1)[-1].strip()
    raise AssertionError("the preprocess service did not report it was serving")


def test_serve_command_starts_and_stops_on_sigterm(segmenter_dir) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "synchuman_cli", "serve", "preprocess", "--address", "127.0.0.1:0",
         "--segmentation-dir", str(segmenter_dir)],
        cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        with grpc.insecure_channel(reported_address(process)) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_metrics_and_logs_per_call(stub, caplog) -> None:
    from prometheus_client import REGISTRY

    method = "/synchuman.v1.PreprocessService/Preprocess"

    def count(code: str) -> float:
        labels = {"server": "preprocess", "method": method, "code": code}
        return REGISTRY.get_sample_value("synchuman_rpc_requests_total", labels) or 0.0

    ok, invalid = count("OK"), count("INVALID_ARGUMENT")
    caplog.set_level("INFO", logger="services.common.observability")
    list(stub.Preprocess(requests(cutout()), timeout=60, metadata=(("x-request-id", "job-42"),)))
    call_error(stub, requests(b"not an image"))
    assert count("OK") == ok + 1 and count("INVALID_ARGUMENT") == invalid + 1
    finished = [r for r in caplog.records if r.getMessage() == "rpc finished" and r.method == method]
    assert [r.code for r in finished[-2:]] == ["OK", "INVALID_ARGUMENT"]
    assert finished[-2].request_id == "job-42" and "not an image" in finished[-1].details
