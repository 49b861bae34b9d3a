"""The real stage-2 service as its own process (tiny random checkpoints, CPU) over real gRPC.

What a gateway relies on: a GLB comes back with progress in order; the process can be killed mid-job and,
once the supervisor has restarted it, the same request (the stored stage-1 outputs) completes; cancelling
frees the slot; a full queue answers RESOURCE_EXHAUSTED at once.
"""

from __future__ import annotations

import io
import sys
import time

import grpc
import numpy as np
import pytest
from stage_doubles import collect_blobs, details, png, stage2_requests

from services.common.stage_io import voxels_to_proto
from services.launcher import free_port
from services.supervisor import ChildSpec, Supervisor
from synchuman.v1 import common_pb2, stage2_pb2_grpc

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stage2(tmp_path_factory):
    from synchuman.checkpoints.dinov2_config import TINY_DINOV2_CONFIG
    from synchuman.checkpoints.layout import CheckpointLayout
    from synchuman.checkpoints.tiny_common import write_model_folder
    from synchuman.checkpoints.tiny_stage2 import write_tiny_stage2

    root = tmp_path_factory.mktemp("ckpts")
    layout = CheckpointLayout(root)
    write_model_folder(layout.dinov2, TINY_DINOV2_CONFIG, 0, layout.dinov2_weights.name, pickle=True)
    write_tiny_stage2(root, 0, int(TINY_DINOV2_CONFIG["args"]["embed_dim"]))
    address = f"127.0.0.1:{free_port()}"
    argv = (
        sys.executable,
        "-m",
        "synchuman_cli",
        "serve",
        "stage2",
        "--address",
        address,
        "--ckpts",
        str(root),
        "--device",
        "cpu",
        "--max-queue",
        "1",
        "--grace",
        "1",
    )
    supervisor = Supervisor(
        [ChildSpec("stage2", argv, address, "synchuman.v1.Stage2Service", {"OMP_NUM_THREADS": "1"})]
    )
    supervisor.start()
    supervisor.run_in_background()
    assert supervisor.wait_ready(180), supervisor.failed
    yield supervisor, address
    supervisor.stop()


def job_blobs() -> tuple[dict[str, bytes], common_pb2.VoxelStructure]:
    """Stored stage-1 outputs of one job: 10 views, the conditioning crop and a small voxel blob."""
    rng = np.random.default_rng(7)
    blobs = {"conditioning.png": png(rng.integers(0, 256, (518, 518, 3), dtype=np.uint8))}
    for kind in ("color", "normal"):
        for i in range(5):
            view = np.full((768, 768, 3), 255, np.uint8)
            view[100:700, 250:520] = rng.integers(0, 200, 3, dtype=np.uint8)
            blobs[f"{kind}_{i}.png"] = png(view)
    grid = np.stack(np.meshgrid(*[np.arange(20, 44)] * 3, indexing="ij"), -1).reshape(-1, 3)
    coords = grid[np.linalg.norm((grid - 31.5) * [1.0, 1.0, 0.5], axis=1) < 6]
    return blobs, voxels_to_proto(coords, 64)


def options(steps: int) -> common_pb2.ReconstructionOptions:
    return common_pb2.ReconstructionOptions(
        steps=steps, texture_size=256, bake_steps=5, visibility_views=8, simplify_ratio=0.95
    )


def stub(address: str) -> stage2_pb2_grpc.Stage2ServiceStub:
    return stage2_pb2_grpc.Stage2ServiceStub(grpc.insecure_channel(address))


def test_glb_out_with_progress_in_order(stage2):
    import trimesh

    _, address = stage2
    blobs, structure = job_blobs()
    responses = list(stub(address).Reconstruct(stage2_requests(blobs, structure, options(3)), timeout=240))
    progress = [r.progress for r in responses if r.WhichOneof("payload") == "progress"]
    first = [(p.phase, p.step) for p in progress[:5]]
    assert first == [("condition", 0), ("sampling", 0), ("sampling", 1), ("sampling", 2), ("sampling", 3)]
    assert [p.elapsed_seconds for p in progress] == sorted(p.elapsed_seconds for p in progress)
    assert progress[-1].phase == "export"
    glb = collect_blobs(responses)["person.glb"]
    scene = trimesh.load(io.BytesIO(glb), file_type="glb", force="scene")
    assert sum(len(g.faces) for g in scene.geometry.values()) == responses[-1].result.report.face_count > 0


def test_killed_mid_job_then_restarted_the_same_request_completes(stage2):
    supervisor, address = stage2
    blobs, structure = job_blobs()
    call = stub(address).Reconstruct(stage2_requests(blobs, structure, options(200)), timeout=240)
    for response in call:
        if response.WhichOneof("payload") == "progress":
            break
    supervisor.kill_child("stage2")  # SIGKILL mid-sampling
    with pytest.raises(grpc.RpcError) as err:
        list(call)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert supervisor.wait_ready(180), supervisor.failed
    responses = list(stub(address).Reconstruct(stage2_requests(blobs, structure, options(2)), timeout=240))
    assert responses[-1].WhichOneof("payload") == "result"


def test_cancel_frees_the_slot_and_a_full_queue_is_refused(stage2):
    _, address = stage2
    blobs, structure = job_blobs()
    s = stub(address)
    running = s.Reconstruct(stage2_requests(blobs, structure, options(200)), timeout=240)
    next(iter(running))
    queued = s.Reconstruct(stage2_requests(blobs, structure, options(200)), timeout=240)
    try:
        deadline = time.monotonic() + 60
        while True:  # the queue (max 1) is full once the second upload is in; until then a probe expires
            if queued.done():  # a probe's upload overtook it and took the queue's place: send it again
                queued = s.Reconstruct(stage2_requests(blobs, structure, options(200)), timeout=240)
            with pytest.raises(grpc.RpcError) as err:
                list(s.Reconstruct(stage2_requests(blobs, structure, options(2)), timeout=3))
            if err.value.code() != grpc.StatusCode.DEADLINE_EXCEEDED or time.monotonic() > deadline:
                break
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details(err.value)["RetryInfo"].retry_delay.seconds >= 1
    finally:
        queued.cancel()
        running.cancel()
    # Both cancelled: the work stops at the next step, so a new request is admitted within a few seconds
    # (long before 200 steps could finish) and then runs to the end.
    started = time.monotonic()
    while True:
        call = s.Reconstruct(stage2_requests(blobs, structure, options(2)), timeout=240)
        try:
            responses = list(call)
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() - started < 5, "the cancelled work did not free the slot"
            time.sleep(0.1)
    assert responses[-1].WhichOneof("payload") == "result"
