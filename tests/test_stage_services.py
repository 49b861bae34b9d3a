"""Stage1Service / Stage2Service over real gRPC (in-process server) with fake backends."""

from __future__ import annotations

import hashlib
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stage_doubles import (
    FakeStage1,
    FakeStage2,
    channel,
    collect_blobs,
    details,
    png,
    stage1_inputs,
    stage1_requests,
    stage2_requests,
    start_server,
)

from services.common.stage_io import voxels_to_proto
from services.common.stage_runtime import StageLimits
from synchuman.v1 import common_pb2, stage1_pb2, stage1_pb2_grpc, stage2_pb2_grpc


@pytest.fixture
def stage1():
    backend = FakeStage1(step_s=0.0)
    server = start_server("stage1", backend, StageLimits(concurrency=1, max_queue=1, grace_s=0.5))
    yield server, backend, stage1_pb2_grpc.Stage1ServiceStub(channel(server))
    server.stop()


def stage2_inputs() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    blobs = {"conditioning.png": png(rng.integers(0, 256, (518, 518, 3), dtype=np.uint8))}
    for kind in ("color", "normal"):
        for i in range(5):
            blobs[f"{kind}_{i}.png"] = png(rng.integers(0, 256, (768, 768, 3), dtype=np.uint8))
    return blobs


STRUCTURE = voxels_to_proto(np.array([[1, 2, 3], [0, 0, 0], [10, 20, 30]]), 64)


def test_stage1_streams_progress_views_and_voxels(stage1):
    server, backend, stub = stage1
    options = common_pb2.MultiviewOptions(steps=7, seed=5)
    responses = list(stub.GenerateViews(stage1_requests(stage1_inputs(), options), timeout=30))
    steps = [r.progress.step for r in responses if r.WhichOneof("payload") == "progress"]
    assert steps == list(range(1, 8))
    progress = [r.progress for r in responses if r.WhichOneof("payload") == "progress"]
    assert all(p.total_steps == 7 and p.stage == common_pb2.STAGE_MULTIVIEW for p in progress)
    assert [p.elapsed_seconds for p in progress] == sorted(p.elapsed_seconds for p in progress)
    result = responses[-1].result
    blobs = collect_blobs(responses)
    assert sorted(blobs) == sorted(
        [f"color_{i}.png" for i in range(5)] + [f"normal_{i}.png" for i in range(5)]
    )
    for header in result.views:
        assert hashlib.sha256(blobs[header.name]).hexdigest() == header.sha256
    coords = np.frombuffer(result.structure.coords_xyz_u16le, dtype="<u2").reshape(-1, 3)
    assert coords.tolist() == [[1, 0, 0], [1, 2, 3], [3, 2, 1], [63, 63, 63]]  # sorted (x, y, z)
    assert result.structure.count == 4 and result.structure.resolution == 64
    assert result.effective_options.seed == 5 and result.effective_options.guidance_scale == pytest.approx(
        3.0
    )
    framed, conditioning, settings = backend.seen[0]
    assert framed.shape == (768, 768, 4) and conditioning.shape == (518, 518, 3)
    assert (settings.seed, settings.steps) == (5, 7)
    info = stub.GetInfo(stage1_pb2.Stage1ServiceGetInfoRequest()).info
    assert (info.concurrency, info.max_queue, info.weights) == (1, 1, "test double")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda blobs, opts: blobs.pop("conditioning.png"), "start.inputs"),
        (
            lambda blobs, opts: blobs.update({"framed.png": png(np.zeros((512, 512, 4), np.uint8))}),
            "framed.png",
        ),
        (
            lambda blobs, opts: blobs.update({"framed.png": png(np.zeros((768, 768, 3), np.uint8))}),
            "framed.png",
        ),
        (lambda blobs, opts: blobs.update({"framed.png": b"not a png"}), "framed.png"),
        (lambda blobs, opts: opts.__setattr__("steps", 0), "start.options.steps"),
        (lambda blobs, opts: opts.__setattr__("guidance_scale", 50.0), "start.options.guidance_scale"),
    ],
)
def test_stage1_rejects_bad_input_with_the_field(stage1, mutate, field):
    _, backend, stub = stage1
    blobs = stage1_inputs()
    options = common_pb2.MultiviewOptions()
    mutate(blobs, options)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.GenerateViews(stage1_requests(blobs, options), timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = details(err.value)["BadRequest"].field_violations
    assert violations[0].field == field
    assert backend.record.started == 0


def test_stage1_rejects_a_corrupted_chunk(stage1):
    _, _, stub = stage1
    requests = list(stage1_requests(stage1_inputs()))
    requests[1].chunk.data = requests[1].chunk.data[:-1] + bytes([requests[1].chunk.data[-1] ^ 1])
    with pytest.raises(grpc.RpcError) as err:
        list(stub.GenerateViews(iter(requests), timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "SHA-256" in err.value.details()


def first_progress(call: grpc.Call, n: int = 1) -> list:
    """Read responses until ``n`` progress events arrived."""
    got = []
    for response in call:
        got.append(response)
        if sum(r.WhichOneof("payload") == "progress" for r in got) >= n:
            return got
    raise AssertionError("the stream ended before enough progress arrived")


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_queue_overflow_gives_resource_exhausted_with_retry_info():
    backend = FakeStage1(step_s=0.05)
    server = start_server("stage1", backend, StageLimits(concurrency=1, max_queue=1, grace_s=0.1))
    try:
        stub = stage1_pb2_grpc.Stage1ServiceStub(channel(server))
        options = common_pb2.MultiviewOptions(steps=200)
        running = stub.GenerateViews(stage1_requests(stage1_inputs(), options), timeout=60)
        first_progress(running)
        queued = stub.GenerateViews(stage1_requests(stage1_inputs(), options), timeout=60)
        wait_until(lambda: server.runtime.limiter.waiting == 1)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.GenerateViews(stage1_requests(stage1_inputs(), options), timeout=60))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = details(err.value)
        assert info["RetryInfo"].retry_delay.seconds >= 1
        assert info["ErrorInfo"].reason == "QUEUE_FULL"
        running.cancel()
        queued.cancel()
        wait_until(lambda: server.runtime.limiter.running == 0 and server.runtime.limiter.waiting == 0)
        assert backend.record.max_running == 1
    finally:
        server.stop()


def test_cancel_stops_the_work_between_steps_and_frees_the_slot():
    backend = FakeStage1(step_s=0.05)
    server = start_server("stage1", backend, StageLimits(concurrency=1, max_queue=2, grace_s=0.1))
    try:
        stub = stage1_pb2_grpc.Stage1ServiceStub(channel(server))
        call = stub.GenerateViews(stage1_requests(stage1_inputs(), common_pb2.MultiviewOptions(steps=200)))
        first_progress(call, 3)
        call.cancel()
        wait_until(lambda: backend.record.stopped == 1)
        assert backend.record.steps < 50
        assert backend.record.finished == 0
        wait_until(lambda: server.runtime.limiter.running == 0)
        # the slot is free again: a new request runs to the end
        done = list(
            stub.GenerateViews(stage1_requests(stage1_inputs(), common_pb2.MultiviewOptions(steps=2)))
        )
        assert done[-1].WhichOneof("payload") == "result"
    finally:
        server.stop()


def test_deadline_stops_the_work():
    backend = FakeStage1(step_s=0.05)
    server = start_server("stage1", backend, StageLimits(concurrency=1, max_queue=2, grace_s=0.1))
    try:
        stub = stage1_pb2_grpc.Stage1ServiceStub(channel(server))
        with pytest.raises(grpc.RpcError) as err:
            list(
                stub.GenerateViews(
                    stage1_requests(stage1_inputs(), common_pb2.MultiviewOptions(steps=200)), timeout=1.0
                )
            )
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: backend.record.stopped == 1)
        assert backend.record.steps < 100
    finally:
        server.stop()


def test_cancel_while_queued_never_runs():
    backend = FakeStage1(step_s=0.05)
    server = start_server("stage1", backend, StageLimits(concurrency=1, max_queue=2, grace_s=0.1))
    try:
        stub = stage1_pb2_grpc.Stage1ServiceStub(channel(server))
        running = stub.GenerateViews(stage1_requests(stage1_inputs(), common_pb2.MultiviewOptions(steps=200)))
        first_progress(running)
        queued = stub.GenerateViews(stage1_requests(stage1_inputs(), common_pb2.MultiviewOptions(steps=2)))
        wait_until(lambda: server.runtime.limiter.waiting == 1)
        queued.cancel()
        wait_until(lambda: server.runtime.limiter.waiting == 0)
        running.cancel()
        wait_until(lambda: server.runtime.limiter.running == 0)
        assert backend.record.started == 1
    finally:
        server.stop()


def test_health_is_not_serving_until_loaded_and_requests_wait_for_it():
    backend = FakeStage1()
    server = start_server("stage1", backend, StageLimits(), load=False)
    try:
        ch = channel(server)
        health = health_pb2_grpc.HealthStub(ch)
        request = health_pb2.HealthCheckRequest(service="synchuman.v1.Stage1Service")
        assert health.Check(request).status == health_pb2.HealthCheckResponse.NOT_SERVING
        stub = stage1_pb2_grpc.Stage1ServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.GenerateViews(stage1_requests(stage1_inputs()), timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert details(err.value)["ErrorInfo"].reason == "NOT_READY"
        server.load()
        assert health.Check(request).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop()


def test_shutdown_rejects_queued_work_and_stops_running_work_after_the_grace_period():
    backend = FakeStage1(step_s=0.05)
    server = start_server("stage1", backend, StageLimits(concurrency=1, max_queue=2, grace_s=0.3))
    stub = stage1_pb2_grpc.Stage1ServiceStub(channel(server))
    running = stub.GenerateViews(stage1_requests(stage1_inputs(), common_pb2.MultiviewOptions(steps=200)))
    first_progress(running)
    queued = stub.GenerateViews(stage1_requests(stage1_inputs(), common_pb2.MultiviewOptions(steps=2)))
    wait_until(lambda: server.runtime.limiter.waiting == 1)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    for call in (queued, running):
        with pytest.raises(grpc.RpcError) as err:
            list(call)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert details(err.value)["ErrorInfo"].reason == "SHUTTING_DOWN"
    stopper.join(10)
    assert not stopper.is_alive()
    assert backend.record.started == 1 and backend.record.stopped == 1


def test_shutdown_lets_running_work_finish_within_the_grace_period():
    backend = FakeStage1(step_s=0.02)
    server = start_server("stage1", backend, StageLimits(concurrency=1, max_queue=2, grace_s=20))
    stub = stage1_pb2_grpc.Stage1ServiceStub(channel(server))
    running = stub.GenerateViews(stage1_requests(stage1_inputs(), common_pb2.MultiviewOptions(steps=20)))
    first_progress(running)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    rest = list(running)
    assert rest[-1].WhichOneof("payload") == "result"
    stopper.join(10)
    assert backend.record.finished == 1


@pytest.fixture
def stage2():
    backend = FakeStage2(step_s=0.0)
    server = start_server("stage2", backend, StageLimits(concurrency=1, max_queue=1, grace_s=0.5))
    yield server, backend, stage2_pb2_grpc.Stage2ServiceStub(channel(server))
    server.stop()


def test_stage2_streams_progress_then_the_glb_in_chunks_and_the_report(stage2):
    _, backend, stub = stage2
    options = common_pb2.ReconstructionOptions(
        steps=4,
        texture_size=512,
        bake_steps=10,
        visibility_views=16,
        simplify_ratio=0.5,
        outputs=[common_pb2.OUTPUT_FORMAT_GAUSSIAN_PLY, common_pb2.OUTPUT_FORMAT_MULTIVIEW_PNG],
    )
    responses = list(stub.Reconstruct(stage2_requests(stage2_inputs(), STRUCTURE, options), timeout=30))
    progress = [
        (r.progress.phase, r.progress.step) for r in responses if r.WhichOneof("payload") == "progress"
    ]
    assert progress == [("sampling", i) for i in range(1, 5)] + [
        ("decode", 0),
        ("bake", 0),
        ("export", 0),
    ]
    blobs = collect_blobs(responses)
    assert sorted(blobs) == ["gaussians.ply", "person.glb"]
    chunks = [r for r in responses if r.WhichOneof("payload") == "chunk" and r.chunk.name == "person.glb"]
    assert len(chunks) == 3  # 2.5 MB in <= 1 MiB chunks
    result = responses[-1].result
    glb_header = next(h for h in result.outputs if h.name == "person.glb")
    assert glb_header.media_type == "model/gltf-binary"
    assert hashlib.sha256(blobs["person.glb"]).hexdigest() == glb_header.sha256
    assert result.report.face_count == 1000 and result.report.glb_size_bytes == 2_500_000
    effective = result.effective_options
    assert (effective.steps, effective.texture_size, effective.bake_steps, effective.visibility_views) == (
        4,
        512,
        10,
        16,
    )
    assert effective.seed == 43 and effective.guidance_scale == pytest.approx(5.0)
    assert effective.bake_mode == common_pb2.BAKE_MODE_FAST  # the default, sent back explicitly
    inputs, opts = backend.seen[0]
    assert inputs.coords.tolist() == [[0, 0, 0], [1, 2, 3], [10, 20, 30]]
    assert opts.simplify_ratio == pytest.approx(0.5) and opts.outputs == ("gaussians.ply",)
    assert len(inputs.colors) == 5 and inputs.normals[4].shape == (768, 768, 3)


@pytest.mark.parametrize(
    ("wire", "mode", "steps"),
    [
        (common_pb2.ReconstructionOptions(), "fast", 100),
        (common_pb2.ReconstructionOptions(bake_mode=common_pb2.BAKE_MODE_OPTIMIZE), "opt", 1000),
        (common_pb2.ReconstructionOptions(bake_mode=common_pb2.BAKE_MODE_OPTIMIZE, bake_steps=0), "opt", 0),
        (common_pb2.ReconstructionOptions(bake_mode=common_pb2.BAKE_MODE_FAST, bake_steps=30), "fast", 30),
    ],
)
def test_stage2_bake_mode_defaults_its_steps(wire, mode, steps):
    from services.common.conversions import stage2_options_from_proto, stage2_options_to_proto

    options = stage2_options_from_proto(wire)
    assert (options.bake_mode, options.bake_steps) == (mode, steps)
    echoed = stage2_options_from_proto(stage2_options_to_proto(options))  # the effective options round-trip
    assert (echoed.bake_mode, echoed.bake_steps) == (mode, steps)


def test_stage2_unusable_output_fails_with_failed_precondition():
    backend = FakeStage2(faces=3)
    server = start_server("stage2", backend, StageLimits())
    try:
        stub = stage2_pb2_grpc.Stage2ServiceStub(channel(server))
        with pytest.raises(grpc.RpcError) as err:
            list(
                stub.Reconstruct(
                    stage2_requests(stage2_inputs(), STRUCTURE, common_pb2.ReconstructionOptions(steps=1)),
                    timeout=30,
                )
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "TINY_MESH" in err.value.details()
        assert details(err.value)["ErrorInfo"].reason == "TINY_MESH"
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("options", "structure", "field"),
    [
        (common_pb2.ReconstructionOptions(texture_size=100), STRUCTURE, "start.options.texture_size"),
        (common_pb2.ReconstructionOptions(simplify_ratio=1.5), STRUCTURE, "start.options.simplify_ratio"),
        (common_pb2.ReconstructionOptions(visibility_views=2), STRUCTURE, "start.options.visibility_views"),
        (common_pb2.ReconstructionOptions(bake_mode=9), STRUCTURE, "start.options.bake_mode"),
        (
            common_pb2.ReconstructionOptions(),
            common_pb2.VoxelStructure(resolution=64),
            "start.structure.count",
        ),
        (
            common_pb2.ReconstructionOptions(),
            voxels_to_proto(np.zeros((1, 3), int), 32),
            "start.structure.resolution",
        ),
        (
            common_pb2.ReconstructionOptions(),
            common_pb2.VoxelStructure(resolution=64, count=2, coords_xyz_u16le=b"\0" * 6),
            "start.structure.coords_xyz_u16le",
        ),
    ],
)
def test_stage2_rejects_bad_options_and_structures(stage2, options, structure, field):
    _, backend, stub = stage2
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Reconstruct(stage2_requests(stage2_inputs(), structure, options), timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(err.value)["BadRequest"].field_violations[0].field == field
    assert backend.record.started == 0


def test_stage2_cancel_mid_sampling_stops_the_work():
    backend = FakeStage2(step_s=0.05)
    server = start_server("stage2", backend, StageLimits())
    try:
        stub = stage2_pb2_grpc.Stage2ServiceStub(channel(server))
        call = stub.Reconstruct(
            stage2_requests(stage2_inputs(), STRUCTURE, common_pb2.ReconstructionOptions(steps=200))
        )
        first_progress(call, 2)
        call.cancel()
        wait_until(lambda: backend.record.stopped == 1)
        assert backend.record.steps < 100
    finally:
        server.stop()
