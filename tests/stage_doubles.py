"""Test doubles of the stage backends and small clients for the stage services (tests only).

The fake backends honour the real contract (progress per step, ``should_stop`` between steps, output shapes)
and record what happened, so the service tests can check queueing, cancellation, deadlines and shutdown
without loading any model.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image

from services.common.stage_io import blob_chunks, blob_header
from services.common.stage_runtime import StageLimits
from services.common.stage_server import StageAccess, StageServer, StageSpec
from services.stage1.backend import Stage1Inputs
from services.stage1.service import Stage1Servicer
from services.stage2.service import Stage2Servicer
from synchuman.options import PREVIEW_FILES, Stage1Options, Stage2Options
from synchuman.pipelines.handoff import Stage1Output, Stage2Inputs
from synchuman.pipelines.info import PipelineInfo
from synchuman.pipelines.stage2_types import (
    OutputReport,
    QualityFinding,
    Severity,
    Stage2Cancelled,
    Stage2Result,
)
from synchuman.stage_catalog import MULTIVIEW, RECONSTRUCTION
from synchuman.v1 import common_pb2, stage1_pb2, stage1_pb2_grpc, stage2_pb2, stage2_pb2_grpc

INFO = PipelineInfo(checkpoint_dir="/nowhere", weights="test double", device="cpu", dtype="float32")


class StoppedByRequest(Exception):
    """Raised by a fake backend when ``should_stop()`` turned true."""


@dataclass
class Record:
    """What a fake backend saw: calls started, steps run, calls that stopped early."""

    started: int = 0
    steps: int = 0
    stopped: int = 0
    finished: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    running_now: int = 0
    max_running: int = 0

    def enter(self) -> None:
        with self.lock:
            self.started += 1
            self.running_now += 1
            self.max_running = max(self.max_running, self.running_now)

    def leave(self, stopped: bool) -> None:
        with self.lock:
            self.running_now -= 1
            if stopped:
                self.stopped += 1
            else:
                self.finished += 1


class FakeStage1:
    """Sleeps ``step_s`` per sampler step; returns deterministic views and a small voxel set."""

    voxel_resolution = 64

    def __init__(self, step_s: float = 0.0, coords: np.ndarray | None = None) -> None:
        self.step_s = step_s
        scattered = np.array([[3, 2, 1], [1, 2, 3], [1, 0, 0], [63, 63, 63]])
        self.coords = coords if coords is not None else scattered
        self.record = Record()
        self.seen: list[tuple[np.ndarray, np.ndarray, Stage1Options]] = []
        self.closed = False

    def info(self) -> PipelineInfo:
        return INFO

    def warm_up(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def run(
        self,
        inputs: Stage1Inputs,
        settings: Stage1Options,
        progress: Callable[[str, int, int], None],
        should_stop: Callable[[], bool],
    ) -> Stage1Output:
        self.record.enter()
        self.seen.append((inputs.framed, inputs.conditioning, settings))
        try:
            for step in range(1, settings.steps + 1):
                if should_stop():
                    raise StoppedByRequest()
                time.sleep(self.step_s)
                with self.record.lock:
                    self.record.steps += 1
                progress("sampling", step, settings.steps)
        except StoppedByRequest:
            self.record.leave(stopped=True)
            raise
        self.record.leave(stopped=False)
        rng = np.random.default_rng(settings.seed)
        blocks = rng.integers(0, 256, (10, 24, 24, 3), dtype=np.uint8)  # smooth views, like real renders
        views = tuple(np.kron(b, np.ones((32, 32, 1), np.uint8)) for b in blocks)
        return Stage1Output(colors=np.stack(views[:5]), normals=np.stack(views[5:]), coords=self.coords)


class FakeStage2:
    """Sampler steps (``step_s`` each) then three post-processing phases; returns a fixed-size fake GLB."""

    voxel_resolution = 64
    defaults = Stage2Options()

    def __init__(self, step_s: float = 0.0, glb_bytes: int = 2_500_000, faces: int = 1000) -> None:
        self.step_s = step_s
        self.glb_bytes = glb_bytes
        self.faces = faces
        self.record = Record()
        self.seen: list[tuple[Stage2Inputs, Stage2Options]] = []
        self.closed = False

    def info(self) -> PipelineInfo:
        return INFO

    def warm_up(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def run(
        self,
        inputs: Stage2Inputs,
        options: Stage2Options,
        progress: Callable[[str, int, int], None],
        should_stop: Callable[[], bool],
    ) -> Stage2Result:
        self.record.enter()
        self.seen.append((inputs, options))
        inputs.validate(self.voxel_resolution)
        try:
            for step in range(1, options.steps + 1):
                if should_stop():
                    raise Stage2Cancelled()
                time.sleep(self.step_s)
                with self.record.lock:
                    self.record.steps += 1
                progress("sampling", step, options.steps)
            for phase in ("decode", "bake", "export"):
                if should_stop():
                    raise Stage2Cancelled()
                progress(phase, 0, 0)
        except Stage2Cancelled:
            self.record.leave(stopped=True)
            raise
        self.record.leave(stopped=False)
        glb = bytes(np.random.default_rng(options.seed).integers(0, 256, self.glb_bytes, dtype=np.uint8))
        findings = ()
        if self.faces < 10:
            findings = (QualityFinding(Severity.ERROR, "TINY_MESH", "the mesh has almost no faces"),)
        report = OutputReport(
            vertex_count=self.faces // 2,
            face_count=self.faces,
            texture_coverage=0.8,
            non_manifold_edge_fraction=0.0,
            glb_size_bytes=len(glb),
            findings=findings,
        )
        files = [
            name for out in options.outputs for name in (PREVIEW_FILES if out == "preview.png" else (out,))
        ]
        extra = {name: name.encode() * 10 for name in files}  # "preview.png" asks for the turntables too
        return Stage2Result(glb=glb, extra_files=extra, report=report, phase_seconds={"sampling": 0.1})


def voxel_blob(radius: float = 6.0) -> np.ndarray:
    """A person-sized-ish ellipsoid of voxels around the grid centre (stage-1 stand-in output)."""
    grid = np.stack(np.meshgrid(*[np.arange(20, 44)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return grid[np.linalg.norm((grid - 31.5) * [1.0, 1.0, 0.5], axis=1) < radius]


def start_server(
    name: str, backend: object, limits: StageLimits, load: bool = True, access: StageAccess = StageAccess()
) -> StageServer:
    """A stage server with ``backend`` on a free localhost port (loaded unless ``load`` is false);
    ``access``: its token and TLS."""
    if name == "stage1":
        spec = StageSpec(
            stage=MULTIVIEW,
            make_servicer=Stage1Servicer,
            add_servicer=stage1_pb2_grpc.add_Stage1ServiceServicer_to_server,
            load_backend=lambda: backend,
        )
    else:
        spec = StageSpec(
            stage=RECONSTRUCTION,
            make_servicer=Stage2Servicer,
            add_servicer=stage2_pb2_grpc.add_Stage2ServiceServicer_to_server,
            load_backend=lambda: backend,
        )
    server = StageServer(spec, "127.0.0.1:0", limits, access)
    if load:
        server.load()
    return server


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def stage1_inputs(seed: int = 0) -> dict[str, bytes]:
    """A framed RGBA 768^2 and a 518^2 RGB conditioning crop, as PNG bytes."""
    rng = np.random.default_rng(seed)
    framed = rng.integers(0, 256, (768, 768, 4), dtype=np.uint8)
    conditioning = rng.integers(0, 256, (518, 518, 3), dtype=np.uint8)
    return {"framed.png": png(framed), "conditioning.png": png(conditioning)}


def upload(blobs: dict[str, bytes], chunk_bytes: int = 1 << 20) -> tuple[list, list]:
    """Headers and chunks of ``blobs`` in order."""
    headers = [blob_header(name, "image/png", data) for name, data in blobs.items()]
    chunks = [c for name, data in blobs.items() for c in blob_chunks(name, data, chunk_bytes)]
    return headers, chunks


def stage1_requests(
    blobs: dict[str, bytes], options: common_pb2.MultiviewOptions | None = None, job_id: str = "job"
) -> Iterator[stage1_pb2.GenerateViewsRequest]:
    headers, chunks = upload(blobs)
    yield stage1_pb2.GenerateViewsRequest(
        start=stage1_pb2.GenerateViewsStart(job_id=job_id, options=options, inputs=headers)
    )
    for chunk in chunks:
        yield stage1_pb2.GenerateViewsRequest(chunk=chunk)


def stage2_requests(
    blobs: dict[str, bytes],
    structure: common_pb2.VoxelStructure,
    options: common_pb2.ReconstructionOptions | None = None,
    job_id: str = "job",
) -> Iterator[stage2_pb2.ReconstructRequest]:
    headers, chunks = upload(blobs)
    yield stage2_pb2.ReconstructRequest(
        start=stage2_pb2.ReconstructStart(job_id=job_id, options=options, structure=structure, inputs=headers)
    )
    for chunk in chunks:
        yield stage2_pb2.ReconstructRequest(chunk=chunk)


def collect_blobs(responses: list) -> dict[str, bytes]:
    """Reassemble the blobs of a response list (header then chunks)."""
    blobs: dict[str, bytearray] = {}
    for r in responses:
        kind = r.WhichOneof("payload")
        if kind == "blob":
            blobs[r.blob.name] = bytearray()
        elif kind == "chunk":
            assert r.chunk.offset == len(blobs[r.chunk.name])
            assert len(r.chunk.data) <= 1 << 20
            blobs[r.chunk.name].extend(r.chunk.data)
    return {k: bytes(v) for k, v in blobs.items()}


def channel(server: StageServer) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{server.port}")


def details(error: grpc.RpcError) -> dict[str, object]:
    """The rich-status details of a failed call, by type name."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no google.rpc.Status"
    out: dict[str, object] = {}
    for any_detail in status.details:
        for cls in (error_details_pb2.RetryInfo, error_details_pb2.BadRequest, error_details_pb2.ErrorInfo):
            if any_detail.Is(cls.DESCRIPTOR):
                value = cls()
                any_detail.Unpack(value)
                out[cls.__name__] = value
    return out
