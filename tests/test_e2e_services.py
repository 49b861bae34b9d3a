"""End to end on CPU: the four real services as separate processes over real gRPC, tiny random checkpoints.

One embedded deployment (preprocess, stage 1, stage 2, gateway; each its own process under the supervisor) is
shared by the module. Every job uses few sampler steps and small texture / visibility settings so the suite
stays within a few minutes on 2 CPU cores. Every service exports its traces to a real OTLP receiver
(``tests/otlp_receiver.py``): one job's trace across the four processes is checked.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import grpc
import pytest
from otlp_receiver import CLIENT_METADATA, check_job_trace, otlp_receiver
from stage_doubles import details, stage1_inputs, stage1_requests
from synchuman_client import TERMINAL_STATES, Client
from synchuman_client.transfer import upload_requests
from tls_certs import CertificateAuthority

from services.common.auth import authorized_channel
from services.common.stage_io import blob_header, upload_messages
from services.common.tls import open_channel
from services.launcher import EmbeddedConfig, TlsFiles, start_embedded
from synchuman.progress_phases import ALL_PHASES, HEARTBEAT_MESSAGE
from synchuman.v1 import (
    common_pb2,
    reconstruction_pb2,
    reconstruction_pb2_grpc,
    stage1_pb2_grpc,
)
from synchuman_cli.gateway_client import reconstruct_photo

pytestmark = pytest.mark.slow



def small_options(steps1: int = 2, steps2: int = 2) -> common_pb2.JobOptions:
    options = common_pb2.JobOptions()
    options.multiview.steps = steps1
    options.reconstruction.steps = steps2
    options.reconstruction.texture_size = 256
    options.reconstruction.bake_steps = 5
    options.reconstruction.visibility_views = 8
    options.reconstruction.simplify_ratio = 0.95
    return options


@pytest.fixture(scope="module")
def traces():
    """The OTLP receiver the deployment's services export their spans to."""
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, traces):
    from synchuman.checkpoints.tiny import write_tiny_tree

    root = tmp_path_factory.mktemp("e2e")
    write_tiny_tree(root / "ckpts")
    authority = CertificateAuthority(root / "pki")  # every call over TLS, mTLS between gateway and stages
    certificate = authority.issue("services")
    config = EmbeddedConfig.with_free_ports(
        tls=TlsFiles(authority.pem.cert, certificate.cert, certificate.key),
        ckpts=root / "ckpts",
        device="cpu",
        dtype="float32",
        data_dir=root / "jobs",
        log_level="WARNING",
        stage_args=["--max-queue", "1", "--grace", "2"],  # stage 2 on CPU bakes without Gaussian renders
        # the gateway's CPU cost model prices real weights (200 stage-1 steps: over an hour); these tiny ones
        # run them in about a minute, so the long-job tests raise the deadline ceiling (not refused)
        gateway_args=["--stage-timeout", "14400"],
        env={"OMP_NUM_THREADS": "1", **traces.environment()},
    )
    supervisor = start_embedded(config, ready_timeout_s=300)
    yield config, supervisor
    supervisor.stop()


@pytest.fixture(scope="module")
def photo(images_dir: Path) -> bytes:
    from PIL import Image

    image = Image.open(sorted(images_dir.glob("person_*.png"))[0])
    image.thumbnail((512, 512))  # smaller upload and preprocessing; framing rescales to 768 anyway
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def gateway_stub(config: EmbeddedConfig) -> reconstruction_pb2_grpc.ReconstructionServiceStub:
    channel = open_channel(config.address("gateway"), config.gateway_tls())
    return reconstruction_pb2_grpc.ReconstructionServiceStub(channel)


def submit(config: EmbeddedConfig, photo: bytes, options: common_pb2.JobOptions) -> reconstruction_pb2.Job:
    return gateway_stub(config).SubmitJob(upload_requests(photo, options), timeout=60).job


def wait_for_event(config: EmbeddedConfig, job_id: str, predicate, timeout_s: float = 120.0):
    """Watch the job until ``predicate(event)``; returns that event."""
    for event in gateway_stub(config).WatchJob(
        reconstruction_pb2.WatchJobRequest(job_id=job_id), timeout=timeout_s
    ):
        if predicate(event):
            return event
    raise AssertionError("the job ended before the expected event")


def wait_for_end(config: EmbeddedConfig, job_id: str, timeout_s: float = 240.0) -> reconstruction_pb2.Job:
    deadline = time.monotonic() + timeout_s
    stub = gateway_stub(config)
    while time.monotonic() < deadline:
        job = stub.GetJob(reconstruction_pb2.GetJobRequest(job_id=job_id), timeout=10).job
        if job.state in TERMINAL_STATES:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not end within {timeout_s} s")


def is_progress(stage: int):
    return lambda e: e.WhichOneof("event") == "progress" and e.progress.stage == stage


def stage1_stub(config: EmbeddedConfig) -> stage1_pb2_grpc.Stage1ServiceStub:
    """Stage 1 of the deployment called directly, with the deployment's stage token and client certificate."""
    channel = open_channel(config.address("stage1"), config.stage_tls())
    return stage1_pb2_grpc.Stage1ServiceStub(authorized_channel(channel, config.stage_token))


def test_photo_in_glb_out_with_ordered_progress(deployment, photo, tmp_path):
    import trimesh

    config, _ = deployment
    outcome = reconstruct_photo(
        config.address("gateway"),
        photo,
        small_options(),
        tmp_path / "person.glb",
        progress=False,
        timeout_s=300,
        tls=config.gateway_tls(),
    )
    assert outcome.error == ""
    assert outcome.job.state == reconstruction_pb2.JOB_STATE_SUCCEEDED
    scene = trimesh.load(tmp_path / "person.glb", file_type="glb", force="scene")
    assert sum(len(g.faces) for g in scene.geometry.values()) > 0
    sequences = [e.sequence for e in outcome.events]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    progress = [e.progress for e in outcome.events if e.WhichOneof("event") == "progress"]
    assert all(p.phase in ALL_PHASES for p in progress)
    progress = [p for p in progress if p.message != HEARTBEAT_MESSAGE]  # repeats while a phase runs
    stages = [p.stage for p in progress]
    assert stages == sorted(stages), "stages must follow preprocess -> multiview -> reconstruction"
    assert common_pb2.STAGE_MULTIVIEW in stages and common_pb2.STAGE_RECONSTRUCTION in stages
    sampling = [p.step for p in progress if p.stage == common_pb2.STAGE_MULTIVIEW and p.phase == "sampling"]
    assert sampling == [0, 1, 2]  # step 0 of 2 as stage 1 starts
    recon = [p.step for p in progress if p.stage == common_pb2.STAGE_RECONSTRUCTION and p.phase == "sampling"]
    assert recon == [0, 1, 2]  # step 0 as sampling starts, like stage 1
    assert outcome.job.output_report.face_count > 0
    effective = outcome.job.effective_options  # what the stages ran: the request's values and their defaults
    assert effective.multiview.steps == 2 and effective.reconstruction.visibility_views == 8
    assert effective.reconstruction.guidance_scale == pytest.approx(5.0)


def test_one_job_is_one_trace_across_the_four_processes(deployment, photo, traces):
    config, _ = deployment
    image = blob_header("input", "application/octet-stream", photo)
    start = reconstruction_pb2.SubmitJobStart(options=small_options(1, 1), image=image)
    requests = upload_messages(reconstruction_pb2.SubmitJobRequest, start, {"input": photo})
    job = gateway_stub(config).SubmitJob(requests, timeout=60, metadata=CLIENT_METADATA).job
    assert wait_for_end(config, job.id).state == reconstruction_pb2.JOB_STATE_SUCCEEDED
    print("\n".join(["", *check_job_trace(traces, job.id)]))  # the trace as the receiver got it


def test_cancel_mid_stage1_stops_the_work(deployment, photo):
    config, _ = deployment
    job = submit(config, photo, small_options(steps1=200))
    wait_for_event(config, job.id, is_progress(common_pb2.STAGE_MULTIVIEW))
    cancelled = (
        gateway_stub(config).CancelJob(reconstruction_pb2.CancelJobRequest(job_id=job.id), timeout=30).job
    )
    assert wait_for_end(config, cancelled.id).state == reconstruction_pb2.JOB_STATE_CANCELLED
    # Stage 1 runs one request at a time: a new request only completes if the cancelled work stopped and freed
    # the slot, long before its 200 steps could have finished.
    stub = stage1_stub(config)
    started = time.monotonic()
    responses = list(
        stub.GenerateViews(stage1_requests(stage1_inputs(), common_pb2.MultiviewOptions(steps=1)), timeout=60)
    )
    assert responses[-1].WhichOneof("payload") == "result"
    assert time.monotonic() - started < 60


def test_stage2_crash_mid_job_is_redone_without_rerunning_stage1(deployment, photo, tmp_path):
    config, supervisor = deployment
    job = submit(config, photo, small_options(steps2=4))
    wait_for_event(config, job.id, is_progress(common_pb2.STAGE_RECONSTRUCTION))
    client = Client(channel=open_channel(config.address("gateway"), config.gateway_tls()))
    views_before = client.download(job.id, "color_1.png")
    supervisor.kill_child("stage2")  # SIGKILL mid-sampling; the supervisor restarts it
    done = wait_for_end(config, job.id, timeout_s=600)
    assert done.state == reconstruction_pb2.JOB_STATE_SUCCEEDED, done.error.message
    assert done.attempts["multiview"] == 1
    assert done.attempts["reconstruction"] >= 2
    assert client.download(job.id, "color_1.png") == views_before
    assert len(client.download(job.id, "person.glb")) > 0


def test_queue_overflow_on_the_real_stage1_gives_resource_exhausted(deployment):
    config, _ = deployment
    stub = stage1_stub(config)
    long = common_pb2.MultiviewOptions(steps=200)
    running = stub.GenerateViews(stage1_requests(stage1_inputs(), long), timeout=120)
    next(iter(running))  # the first progress event: it holds the GPU slot
    queued = stub.GenerateViews(stage1_requests(stage1_inputs(), long), timeout=120)
    try:
        # The queue (max 1) is full once the second upload has arrived; until then a probe waits in the queue
        # and expires after 3 s, so probe until the refusal comes (at once) or 30 s pass.
        deadline = time.monotonic() + 30
        while True:
            with pytest.raises(grpc.RpcError) as err:
                list(stub.GenerateViews(stage1_requests(stage1_inputs(), long), timeout=3))
            if err.value.code() != grpc.StatusCode.DEADLINE_EXCEEDED or time.monotonic() > deadline:
                break
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details(err.value)["RetryInfo"].retry_delay.seconds >= 1
    finally:
        running.cancel()
        queued.cancel()
