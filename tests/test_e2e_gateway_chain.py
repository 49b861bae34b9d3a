"""Photo to GLB through the real gateway, preprocess and stage-2 processes, with the stage-1 MODEL stood in.

Stage 1 runs the real Stage1Service (its own process, real gRPC) around a test-double backend that returns
smooth views and an ellipsoid of voxels (tests/fake_stage_process.py --blob), because the stage-1 pipeline is
not in the tree yet; everything else is the product. Tiny random stage-2 checkpoints, CPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import grpc
import pytest

from services.embedded import free_port
from services.reconstruct_client import TERMINAL, _upload, download, reconstruct_photo
from services.supervisor import ChildSpec, Supervisor
from synchuman.v1 import common_pb2, reconstruction_pb2, reconstruction_pb2_grpc

pytestmark = pytest.mark.slow
pytest.importorskip("gateway.main", reason="the gateway is not in the tree yet")

FAKE_STAGE1 = str(Path(__file__).with_name("fake_stage_process.py"))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    from synchuman.checkpoints.dinov2_config import TINY_DINOV2_CONFIG
    from synchuman.checkpoints.layout import CheckpointLayout
    from synchuman.checkpoints.tiny_common import write_model_folder
    from synchuman.checkpoints.tiny_stage2 import write_tiny_stage2

    root = tmp_path_factory.mktemp("chain")
    layout = CheckpointLayout(root / "ckpts")
    write_model_folder(layout.dinov2, TINY_DINOV2_CONFIG, 0, layout.dinov2_weights.name, pickle=True)
    write_tiny_stage2(layout.root, 0, int(TINY_DINOV2_CONFIG["args"]["embed_dim"]))
    ports = {name: f"127.0.0.1:{free_port()}" for name in ("gateway", "preprocess", "stage1", "stage2")}
    cli = (sys.executable, "-m", "synchuman.cli", "--log-level", "WARNING", "serve")
    env = {"OMP_NUM_THREADS": "1"}
    specs = [
        ChildSpec(
            "preprocess",
            (*cli, "preprocess", "--address", ports["preprocess"]),
            ports["preprocess"],
            "synchuman.v1.PreprocessService",
            env,
        ),
        ChildSpec(
            "stage1",
            (sys.executable, FAKE_STAGE1, ports["stage1"], "2", "0.02", "--blob"),
            ports["stage1"],
            "synchuman.v1.Stage1Service",
            env,
        ),
        ChildSpec(
            "stage2",
            (
                *cli,
                "stage2",
                "--address",
                ports["stage2"],
                "--ckpts",
                str(layout.root),
                "--device",
                "cpu",
                "--grace",
                "1",
            ),
            ports["stage2"],
            "synchuman.v1.Stage2Service",
            env,
        ),
        ChildSpec(
            "gateway",
            (
                *cli,
                "gateway",
                "--address",
                ports["gateway"],
                "--http",
                "off",
                "--preprocess",
                ports["preprocess"],
                "--stage1",
                ports["stage1"],
                "--stage2",
                ports["stage2"],
                "--data-dir",
                str(root / "jobs"),
            ),
            ports["gateway"],
            "synchuman.v1.ReconstructionService",
            env,
        ),
    ]
    supervisor = Supervisor(specs)
    supervisor.start()
    supervisor.run_in_background()
    assert supervisor.wait_ready(240), supervisor.failed
    yield supervisor, ports["gateway"]
    supervisor.stop()


def options(steps2: int) -> common_pb2.JobOptions:
    o = common_pb2.JobOptions()
    o.multiview.steps = 3
    o.reconstruction.steps = steps2
    o.reconstruction.texture_size = 256
    o.reconstruction.bake_steps = 5
    o.reconstruction.visibility_views = 8
    o.reconstruction.simplify_ratio = 0.9
    return o


def test_photo_in_glb_out(chain, images_dir, tmp_path):
    import trimesh

    _, gateway = chain
    photo = sorted(images_dir.glob("person_*.png"))[0].read_bytes()
    outcome = reconstruct_photo(gateway, photo, options(2), tmp_path / "p.glb", progress=False, timeout_s=300)
    assert outcome.error == ""
    scene = trimesh.load(tmp_path / "p.glb", file_type="glb", force="scene")
    assert sum(len(g.faces) for g in scene.geometry.values()) == outcome.job.output_report.face_count > 0
    progress = [e.progress for e in outcome.events if e.WhichOneof("event") == "progress"]
    stages = [p.stage for p in progress]
    assert stages == sorted(stages) and set(stages) == {1, 2, 3}
    assert [p.step for p in progress if p.stage == 2 and p.phase == "sampling"] == [1, 2, 3]
    assert [p.step for p in progress if p.stage == 3 and p.phase == "sampling"] == [1, 2]


def test_stage2_killed_mid_job_is_redone_without_rerunning_stage1(chain, images_dir):
    supervisor, gateway = chain
    stub = reconstruction_pb2_grpc.ReconstructionServiceStub(grpc.insecure_channel(gateway))
    photo = sorted(images_dir.glob("person_*.png"))[0].read_bytes()
    job = stub.SubmitJob(_upload(photo, options(150)), timeout=60).job
    for event in stub.WatchJob(reconstruction_pb2.WatchJobRequest(job_id=job.id), timeout=240):
        if event.WhichOneof("event") == "progress" and event.progress.stage == 3 and event.progress.step >= 1:
            break
    views = download(stub, job.id, "color_1.png")
    supervisor.kill_child("stage2")
    deadline = time.monotonic() + 400
    while True:
        job = stub.GetJob(reconstruction_pb2.GetJobRequest(job_id=job.id), timeout=10).job
        if job.state in TERMINAL or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert job.state == reconstruction_pb2.JOB_STATE_SUCCEEDED, job.error.message
    assert job.attempts["multiview"] == 1 and job.attempts["reconstruction"] >= 2
    assert download(stub, job.id, "color_1.png") == views
