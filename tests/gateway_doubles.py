"""Test doubles of the three stage services for the gateway tests (tests only).

Small gRPC servers that implement PreprocessService, Stage1Service and Stage2Service with canned but valid
outputs (real PNGs, a real voxel structure, a real GLB), check the uploads the gateway sends (names, sizes,
SHA-256), and can be told to fail with UNAVAILABLE the first N calls, to be slow (seconds per step) or to
exit mid-call. Every call is appended to a call log (``service pid job_id outcome`` per line), so a test can
count calls across processes.

In-process: :func:`start_doubles`. As a process:
``python tests/gateway_doubles.py ADDRESS --services stage2 --log FILE [--fail N] [--step-s S] [--steps K]``.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common.rpc_status import abort, retry_info  # noqa: E402
from services.common.stage_io import (  # noqa: E402
    blob_chunks,
    blob_header,
    receive_blobs,
    upload_chunks,
    voxels_from_proto,
    voxels_to_proto,
)
from synchuman.stage_catalog import media_type  # noqa: E402
from synchuman.v1 import (  # noqa: E402
    common_pb2,
    preprocess_pb2,
    preprocess_pb2_grpc,
    stage1_pb2,
    stage1_pb2_grpc,
    stage2_pb2,
    stage2_pb2_grpc,
)

VIEWS = tuple(f"{kind}_{i}.png" for kind in ("color", "normal") for i in range(5))


def png(color: tuple[int, ...], size: int = 8) -> bytes:
    """A small solid PNG (RGB or RGBA by the length of ``color``)."""
    buffer = io.BytesIO()
    pixels = np.full((size, size, len(color)), color, dtype=np.uint8)
    Image.fromarray(pixels[..., 0] if len(color) == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(seed: int, size: int) -> bytes:
    """A ``size`` x ``size`` RGB PNG of random pixels: it does not compress (about 3 * size^2 bytes)."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def glb() -> bytes:
    """A valid binary glTF of a box."""
    import trimesh

    return trimesh.creation.box().export(file_type="glb")


@dataclass
class InFlight:
    """Calls in flight over several doubles (replicas of one stage) and the most there were at once."""

    now: int = 0
    peak: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def change(self, by: int) -> None:
        with self.lock:
            self.now += by
            self.peak = max(self.peak, self.now)


@dataclass
class Behaviour:
    """``fail``: the first N calls of this process fail with UNAVAILABLE; ``step_s``: seconds per progress
    step; ``steps``: progress steps per call; ``die_at_step``: exit the process at that step (0: never);
    ``capacity``: calls taken at once (running + queued, as a real stage's concurrency + max_queue, which
    ``GetInfo`` reports); one more is refused with RESOURCE_EXHAUSTED (0: no limit and no ``GetInfo``);
    ``view_size``: stage 1 returns views of random pixels, that many a side (as large as real views; 0: tiny
    solid ones); ``shared``: counts the calls taken, with those of the other doubles given the same one.
    """

    fail: int = 0
    step_s: float = 0.0
    steps: int = 3
    die_at_step: int = 0
    log: Path | None = None
    capacity: int = 0
    view_size: int = 0
    shared: InFlight | None = None


class _Double:
    def __init__(self, service: str, behaviour: Behaviour) -> None:
        self.service = service
        self.behaviour = behaviour
        self.calls = 0
        self.in_flight = 0
        self.refused = 0
        self.lock = threading.Lock()

    def record(self, job_id: str, outcome: str) -> None:
        if self.behaviour.log is not None:
            with self.lock, open(self.behaviour.log, "a") as handle:
                handle.write(f"{self.service} {os.getpid()} {job_id} {outcome}\n")

    def begin(self, context: grpc.ServicerContext, job_id: str) -> threading.Event:
        """Count the call, fail it while failures are due; the returned event marks it complete."""
        with self.lock:
            self.calls += 1
            failing = self.calls <= self.behaviour.fail
            full = 0 < self.behaviour.capacity <= self.in_flight
            self.refused += full and not failing
            if not failing and not full:
                self.in_flight += 1
                if self.behaviour.shared is not None:
                    self.behaviour.shared.change(+1)
        if full and not failing:
            self.record(job_id, "refused")
            abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"{self.service} double full", retry_info(0.1))
        if not failing:
            context.add_callback(self._left)
        if failing:
            self.record(job_id, "unavailable")
            abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"{self.service} double: temporarily down",
                retry_info(0.1),
            )
        self.record(job_id, "started")
        done = threading.Event()
        context.add_callback(lambda: None if done.is_set() else self.record(job_id, "cancelled"))
        return done

    def _left(self) -> None:
        with self.lock:
            self.in_flight -= 1
            if self.behaviour.shared is not None:
                self.behaviour.shared.change(-1)

    def GetInfo(self, request, context):
        """The capacity as a real stage reports it (concurrency 1, the rest queue); UNIMPLEMENTED without."""
        if not self.behaviour.capacity:
            abort(context, grpc.StatusCode.UNIMPLEMENTED, "no GetInfo")
        info = common_pb2.ModelInfo(device="cpu", concurrency=1, max_queue=self.behaviour.capacity - 1)
        if self.service == "stage1":
            return stage1_pb2.Stage1ServiceGetInfoResponse(info=info)
        return stage2_pb2.Stage2ServiceGetInfoResponse(info=info)

    def steps(self, context: grpc.ServicerContext, stage: int, phase: str, job_id: str):
        for step in range(1, self.behaviour.steps + 1):
            if not context.is_active():
                abort(context, grpc.StatusCode.CANCELLED, "cancelled")
            if step == self.behaviour.die_at_step:
                os._exit(17)
            time.sleep(self.behaviour.step_s)
            yield common_pb2.ProgressEvent(
                stage=stage, phase=phase, step=step, total_steps=self.behaviour.steps
            )


def _blob_messages(response_type, blobs: dict[str, bytes], media: str):
    for name, data in blobs.items():
        yield response_type(blob=blob_header(name, media, data))
        for chunk in blob_chunks(name, data):
            yield response_type(chunk=chunk)


class PreprocessDouble(_Double, preprocess_pb2_grpc.PreprocessServiceServicer):
    def __init__(self, behaviour: Behaviour) -> None:
        super().__init__("preprocess", behaviour)

    def Preprocess(self, request_iterator, context):
        start = next(request_iterator).start
        receive_blobs([start.image], upload_chunks(request_iterator), ("input",), 32 << 20, "start.image")
        done = self.begin(context, start.request_id)
        for event in self.steps(context, common_pb2.STAGE_PREPROCESS, "segment", start.request_id):
            yield preprocess_pb2.PreprocessResponse(progress=event)
        report = common_pb2.InputQualityReport(width=8, height=8, mask_source="alpha", mask_coverage=0.5)
        yield preprocess_pb2.PreprocessResponse(report=report)
        blobs = {
            "framed.png": png((200, 100, 50, 255)),
            "conditioning.png": png((10, 20, 30)),
            "mask.png": png((255,)),
        }
        yield from _blob_messages(preprocess_pb2.PreprocessResponse, blobs, "image/png")
        done.set()
        self.record(start.request_id, "ok")
        headers = [blob_header(n, "image/png", d) for n, d in blobs.items()]
        yield preprocess_pb2.PreprocessResponse(
            result=preprocess_pb2.PreprocessResult(report=report, blobs=headers)
        )


class Stage1Double(_Double, stage1_pb2_grpc.Stage1ServiceServicer):
    def __init__(self, behaviour: Behaviour) -> None:
        super().__init__("stage1", behaviour)

    def GenerateViews(self, request_iterator, context):
        start = next(request_iterator).start
        receive_blobs(
            start.inputs, upload_chunks(request_iterator), ("framed.png", "conditioning.png"), 16 << 20
        )
        done = self.begin(context, start.job_id)
        for event in self.steps(context, common_pb2.STAGE_MULTIVIEW, "sampling", start.job_id):
            yield stage1_pb2.GenerateViewsResponse(progress=event)
        size = self.behaviour.view_size
        views = {
            name: noise_png(i, size) if size else png((i * 20, 0, 255 - i * 20))
            for i, name in enumerate(VIEWS)
        }
        yield from _blob_messages(stage1_pb2.GenerateViewsResponse, views, "image/png")
        coords = np.array([[x, y, z] for x in range(30, 34) for y in range(30, 33) for z in range(20, 40)])
        done.set()
        self.record(start.job_id, "ok")
        yield stage1_pb2.GenerateViewsResponse(
            result=stage1_pb2.GenerateViewsResult(structure=voxels_to_proto(coords, 64), views=[])
        )


class Stage2Double(_Double, stage2_pb2_grpc.Stage2ServiceServicer):
    def __init__(self, behaviour: Behaviour) -> None:
        super().__init__("stage2", behaviour)
        self.options: list[common_pb2.ReconstructionOptions] = []  # of each finished call

    def Reconstruct(self, request_iterator, context):
        start = next(request_iterator).start
        receive_blobs(start.inputs, upload_chunks(request_iterator), ("conditioning.png", *VIEWS), 16 << 20)
        voxels_from_proto(start.structure, 64)
        done = self.begin(context, start.job_id)
        for event in self.steps(context, common_pb2.STAGE_RECONSTRUCTION, "sampling", start.job_id):
            yield stage2_pb2.ReconstructResponse(progress=event)
        mesh = glb()
        outputs = {"person.glb": mesh}
        if common_pb2.OUTPUT_FORMAT_GAUSSIAN_PLY in start.options.outputs:
            outputs["gaussians.ply"] = b"ply\nformat binary_little_endian 1.0\nend_header\n"
        if common_pb2.OUTPUT_FORMAT_USDZ in start.options.outputs:
            outputs["person.usdz"] = b"PK\x03\x04 usdz stand-in"
        if common_pb2.OUTPUT_FORMAT_PREVIEW in start.options.outputs:
            outputs["preview.png"] = png((200, 180, 160))
            outputs["turntable.mp4"] = b"\x00\x00\x00\x18ftypmp42 stand-in"
            outputs["turntable.webp"] = b"RIFF\x00\x00\x00\x00WEBP stand-in"
        for name, data in outputs.items():  # typed as the real stage 2 types them
            yield from _blob_messages(stage2_pb2.ReconstructResponse, {name: data}, media_type(name))
        report = common_pb2.OutputQualityReport(vertex_count=8, face_count=12, glb_size_bytes=len(mesh))
        done.set()
        self.record(start.job_id, "ok")
        self.options.append(start.options)
        yield stage2_pb2.ReconstructResponse(
            result=stage2_pb2.ReconstructResult(report=report, effective_options=start.options)
        )


DOUBLES = {"preprocess": PreprocessDouble, "stage1": Stage1Double, "stage2": Stage2Double}
ADDERS = {
    "preprocess": preprocess_pb2_grpc.add_PreprocessServiceServicer_to_server,
    "stage1": stage1_pb2_grpc.add_Stage1ServiceServicer_to_server,
    "stage2": stage2_pb2_grpc.add_Stage2ServiceServicer_to_server,
}


def start_doubles(
    address: str,
    services: list[str],
    behaviour: Behaviour,
    interceptors: tuple = (),
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.Server, int, dict]:
    """Serve the named doubles (with health) at ``address``; returns (server, port, name -> double).
    ``interceptors`` / ``credentials``: e.g. a bearer-token check and (m)TLS, as the real stages have."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), interceptors=interceptors)
    doubles = {}
    for name in services:
        doubles[name] = DOUBLES[name](behaviour)
        ADDERS[name](doubles[name], server)
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    server.start()
    return server, port, doubles


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--services", default="preprocess,stage1,stage2")
    parser.add_argument("--log", type=Path)
    parser.add_argument("--fail", type=int, default=0)
    parser.add_argument("--step-s", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--die-at-step", type=int, default=0)
    args = parser.parse_args()
    behaviour = Behaviour(args.fail, args.step_s, args.steps, args.die_at_step, args.log)
    server, _, _ = start_doubles(args.address, args.services.split(","), behaviour)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
