"""``synchuman reconstruct`` client side against a gateway test double over real gRPC."""

from __future__ import annotations

import hashlib
import io
from concurrent import futures

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from PIL import Image

from services.common.auth import BearerTokenInterceptor
from services.common.stage_io import blob_chunks, blob_header
from synchuman.v1 import common_pb2, reconstruction_pb2, reconstruction_pb2_grpc
from synchuman_cli.main import main

STATES = reconstruction_pb2


def box_glb() -> bytes:
    import trimesh

    return trimesh.creation.box().export(file_type="glb")


class FakeGateway(reconstruction_pb2_grpc.ReconstructionServiceServicer):
    """Accepts one photo, replays a fixed event list, serves the artifacts; ``fail`` makes the job fail."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.photo = b""
        self.options: common_pb2.JobOptions | None = None
        self.files = {"person.glb": box_glb(), "gaussians.ply": b"ply\nfake", "color_0.png": b"png0"}
        self.corrupt = False  # True: every artifact's bytes differ from its header (one byte flipped)

    def _job(self, state: int) -> reconstruction_pb2.Job:
        job = reconstruction_pb2.Job(id="job-1", state=state)
        job.output_report.face_count = 12
        job.output_report.vertex_count = 8
        for name, data in self.files.items():
            job.artifacts.add(blob=blob_header(name, "application/octet-stream", data))
        if state == STATES.JOB_STATE_FAILED:
            job.error.code = 9
            job.error.message = "the reconstruction is unusable: TINY_MESH"
        return job

    def SubmitJob(self, request_iterator, context):
        first = next(request_iterator)
        self.options = first.start.options
        self.photo = b"".join(m.chunk.data for m in request_iterator)
        assert hashlib.sha256(self.photo).hexdigest() == first.start.image.sha256
        return reconstruction_pb2.SubmitJobResponse(job=self._job(STATES.JOB_STATE_QUEUED))

    def WatchJob(self, request, context):
        events = [
            (common_pb2.STAGE_PREPROCESS, "segment", 0, 0),
            *[(common_pb2.STAGE_MULTIVIEW, "sampling", i, 3) for i in (1, 2, 3)],
            *[(common_pb2.STAGE_RECONSTRUCTION, "sampling", i, 2) for i in (1, 2)],
        ]
        sequence = 0
        for stage, phase, step, total in events:
            sequence += 1
            if sequence > request.after_sequence:
                yield reconstruction_pb2.WatchJobResponse(
                    sequence=sequence,
                    state=STATES.JOB_STATE_RUNNING,
                    progress=common_pb2.ProgressEvent(stage=stage, phase=phase, step=step, total_steps=total),
                )
        final = STATES.JOB_STATE_FAILED if self.fail else STATES.JOB_STATE_SUCCEEDED
        yield reconstruction_pb2.WatchJobResponse(
            sequence=sequence + 1, state=final, finished=self._job(final)
        )

    def GetJob(self, request, context):
        return reconstruction_pb2.GetJobResponse(job=self._job(STATES.JOB_STATE_SUCCEEDED))

    def GetArtifact(self, request, context):
        data = self.files[request.name]
        yield reconstruction_pb2.GetArtifactResponse(header=blob_header(request.name, "x", data))
        if self.corrupt:
            data = bytes([data[0] ^ 1]) + data[1:]
        for chunk in blob_chunks(request.name, data):
            yield reconstruction_pb2.GetArtifactResponse(chunk=chunk)


@pytest.fixture(params=[""], ids=["open"])
def gateway(request):
    """The fake gateway on a real gRPC server; ``request.param``: the bearer token it requires ("" none)."""
    fake = FakeGateway()
    interceptors = (BearerTokenInterceptor(request.param),) if request.param else ()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=interceptors)
    reconstruction_pb2_grpc.add_ReconstructionServiceServicer_to_server(fake, server)
    status = health.HealthServicer()
    status.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(status, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield fake, f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((64, 48, 4), np.uint8)).save(path)
    return path


def test_cli_writes_the_glb_extras_and_report(gateway, photo, tmp_path, capsys):
    fake, address = gateway
    out = tmp_path / "out" / "person.glb"
    code = main(
        [
            "reconstruct",
            str(photo),
            "-o",
            str(out),
            "--gateway",
            address,
            "--start-servers",
            "never",
            "--quiet",
            "--steps1",
            "3",
            "--steps2",
            "2",
            "--texture-size",
            "512",
            "--seed",
            "7",
            "--extra",
            "ply",
            "--extra",
            "views",
        ]
    )
    assert code == 0
    assert out.read_bytes() == fake.files["person.glb"]
    assert (tmp_path / "out" / "person.gaussians.ply").read_bytes() == b"ply\nfake"
    assert (tmp_path / "out" / "person.color_0.png").read_bytes() == b"png0"
    assert (tmp_path / "out" / "person.report.json").is_file()
    assert fake.photo == photo.read_bytes()
    options = fake.options
    assert (options.multiview.steps, options.multiview.seed, options.reconstruction.steps) == (3, 7, 2)
    assert options.reconstruction.texture_size == 512
    assert not options.reconstruction.HasField("bake_steps")  # unset flags keep the server defaults
    assert options.reconstruction.bake_mode == common_pb2.BAKE_MODE_UNSPECIFIED
    assert list(options.reconstruction.outputs) == [
        common_pb2.OUTPUT_FORMAT_GAUSSIAN_PLY,
        common_pb2.OUTPUT_FORMAT_MULTIVIEW_PNG,
    ]
    printed = capsys.readouterr().out
    assert "SUCCEEDED" in printed and "12 faces" in printed and str(out) in printed


def test_progress_events_arrive_in_order(gateway, photo, tmp_path):
    from synchuman_cli.gateway_client import reconstruct_photo

    _, address = gateway
    outcome = reconstruct_photo(
        address, photo.read_bytes(), common_pb2.JobOptions(), tmp_path / "a.glb", progress=True
    )
    steps = [
        (e.progress.stage, e.progress.step) for e in outcome.events if e.WhichOneof("event") == "progress"
    ]
    assert steps == [(1, 0), (2, 1), (2, 2), (2, 3), (3, 1), (3, 2)]
    import trimesh

    assert len(trimesh.load(io.BytesIO((tmp_path / "a.glb").read_bytes()), file_type="glb").triangles) > 0


def test_a_failed_job_is_a_one_line_error(gateway, photo, tmp_path, capsys):
    fake, address = gateway
    fake.fail = True
    code = main(
        [
            "reconstruct",
            str(photo),
            "-o",
            str(tmp_path / "x.glb"),
            "--gateway",
            address,
            "--start-servers",
            "never",
            "--quiet",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "JOB_STATE_FAILED" in err and "TINY_MESH" in err
    assert not (tmp_path / "x.glb").exists()


@pytest.mark.parametrize("gateway", ["s3cret"], indirect=True, ids=["token"])
def test_token_from_the_environment_reaches_a_gateway_that_requires_it(
    gateway, photo, tmp_path, capsys, monkeypatch
):
    _, address = gateway
    argv = ["reconstruct", str(photo), "-o", str(tmp_path / "p.glb"), "--gateway", address]
    argv += ["--start-servers", "never", "--quiet"]
    assert main(argv) == 2  # no token: refused with the reason and what to send
    err = capsys.readouterr().err
    assert "refused" in err and "no token" in err and "authorization: Bearer" in err
    monkeypatch.setenv("SYNCHUMAN_GATEWAY_AUTH_TOKEN", "s3cret")
    assert main(argv) == 0
    assert (tmp_path / "p.glb").is_file()


def test_no_gateway_and_never_start_says_how_to_start_it(photo, tmp_path, capsys):
    from services.launcher import free_port

    code = main(
        [
            "reconstruct",
            str(photo),
            "-o",
            str(tmp_path / "x.glb"),
            "--gateway",
            f"127.0.0.1:{free_port()}",
            "--start-servers",
            "never",
        ]
    )
    assert code == 2
    assert "synchuman serve" in capsys.readouterr().err


def test_a_corrupted_download_is_refused(gateway, photo, tmp_path, capsys):
    fake, address = gateway
    fake.corrupt = True
    out = tmp_path / "person.glb"
    code = main(["reconstruct", str(photo), "-o", str(out), "--gateway", address, "--start-servers", "never",
                 "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "download of person.glb was incomplete or corrupted" in err and "SHA-256" in err, err
    assert not out.exists()


def test_missing_photo_is_a_user_error(tmp_path, capsys):
    assert main(["reconstruct", str(tmp_path / "nope.jpg"), "-o", str(tmp_path / "x.glb")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_bake_flags_reach_the_wire_options():
    from synchuman_cli.commands.reconstruct import job_options
    from synchuman_cli.main import build_parser

    args = build_parser().parse_args(
        ["reconstruct", "p.jpg", "-o", "p.glb", "--bake-mode", "optimize", "--bake-steps", "300"]
    )
    options = job_options(args).reconstruction
    assert (options.bake_mode, options.bake_steps) == (common_pb2.BAKE_MODE_OPTIMIZE, 300)
    fast = job_options(
        build_parser().parse_args(["reconstruct", "p.jpg", "-o", "p.glb", "--bake-mode", "fast"])
    )
    assert fast.reconstruction.bake_mode == common_pb2.BAKE_MODE_FAST


def test_without_the_client_package_the_error_says_what_to_install(photo, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "synchuman_client", None)  # as in an image with the server packages only
    monkeypatch.delitem(sys.modules, "synchuman_cli.gateway_client", raising=False)
    assert main(["reconstruct", str(photo), "-o", str(tmp_path / "x.glb"), "--start-servers", "never"]) == 2
    assert "pip install ./clients/python" in capsys.readouterr().err
