"""GPU stage service timing: real ``synchuman serve stage1|stage2`` processes, real checkpoints, real gRPC.

Starts one service process per ``--config NAME=ARGS`` at once (so their start-ups and ``--compile`` warm-ups
overlap), waits until every one reports SERVING on gRPC health, then sends each ``--requests`` requests in
turn (one at a time, so the services never compete for a GPU) and prints, per config:

- start-up seconds (process start -> SERVING: loading, warm-up, compilation, gsplat's build if not pre-built);
- per request: client wall time (upload -> last response message), the service's own time, and the
  pipeline's phase seconds and per-phase peak GPU memory from the service's log (stage 1: ``stage 1 done``,
  with the CFG replica's peak; stage 2: ``stage 2 phases``).

Stage 1 gets a framed person-sized image and a conditioning crop; stage 2 gets ten 768^2 views, the crop and
a human-shaped voxel set (the shell of a capsule stick figure, ``--voxels`` cells of the 64^3 grid).

Device command (``.whl`` carried; checkpoints drawn on the GPU first)::

    python3 -m synchuman_cli ckpts make-random /tmp/ckpts --parts dinov2,stage1 && \\
    python3 bench/bench_stage_service.py --stage 1 --ckpts /tmp/ckpts \\
        --config "1 GPU, compiled=--device cuda:0 --compile" \\
        --config "2 GPUs, CFG-parallel=--device cuda:0 --cfg-device cuda:1 --compile"

CPU smoke run: ``.venv/bin/python bench/bench_stage_service.py --ckpts /tmp/tiny --steps 2 --config
"cpu=--device cpu"`` (after ``synchuman ckpts make-tiny /tmp/tiny``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_stage2_models import human_occupancy  # noqa: E402
from bench_stage_services import photo_like  # noqa: E402
from stage_doubles import png, stage1_requests, stage2_requests  # noqa: E402

from services.common.stage_io import voxels_to_proto  # noqa: E402
from synchuman.v1 import common_pb2, stage1_pb2_grpc, stage2_pb2_grpc  # noqa: E402


@dataclass
class Service:
    """One running service process and what was measured on it."""

    name: str
    args: list[str]
    port: int
    log_path: Path
    process: subprocess.Popen | None = None
    started: float = 0.0
    ready_s: float | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stage1_inputs() -> dict[str, bytes]:
    """A person-sized opaque region on a transparent 768^2 canvas + a 518^2 crop (content does not change
    the model's work: every request runs the same shapes)."""
    framed = np.zeros((768, 768, 4), np.uint8)
    framed[60:740, 250:520, :3] = photo_like(0, (680, 270, 3))
    framed[60:740, 250:520, 3] = 255
    return {"framed.png": png(framed), "conditioning.png": png(photo_like(1, (518, 518, 3)))}


def stage2_inputs(voxels: int) -> tuple[dict[str, bytes], common_pb2.VoxelStructure]:
    blobs = {"conditioning.png": png(photo_like(0, (518, 518, 3)))}
    for kind in ("color", "normal"):
        for i in range(5):
            blobs[f"{kind}_{i}.png"] = png(photo_like(i + (10 if kind == "normal" else 0), (768, 768, 3)))
    return blobs, voxels_to_proto(human_occupancy(voxels), 64)


def serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


#: The log line each stage's service writes per finished request.
DONE_MESSAGE = {1: "stage 1 done", 2: "stage 2 phases"}


def last_record(log_path: Path, message: str) -> dict[str, Any]:
    """The last JSON log record with ``msg == message`` ({} when none)."""
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        if f'"{message}"' in line:
            try:
                return dict(json.loads(line))
            except json.JSONDecodeError:
                continue
    return {}


def request(stage: int, port: int, inputs: Any, steps: int, job: str) -> dict[str, Any]:
    """One stage call; client wall seconds and the service's own seconds."""
    started = time.perf_counter()
    result = None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        if stage == 1:
            options = common_pb2.MultiviewOptions(steps=steps)
            stream = stage1_pb2_grpc.Stage1ServiceStub(channel).GenerateViews(
                stage1_requests(inputs, options, job_id=job), timeout=900
            )
        else:
            blobs, structure = inputs
            options2 = common_pb2.ReconstructionOptions(steps=steps)
            stream = stage2_pb2_grpc.Stage2ServiceStub(channel).Reconstruct(
                stage2_requests(blobs, structure, options2, job_id=job), timeout=900
            )
        for message in stream:
            if message.WhichOneof("payload") == "result":
                result = message.result
    wall = time.perf_counter() - started
    if result is None:
        raise RuntimeError(f"{job}: the stream ended without a result")
    return {"wall_s": wall, "service_s": result.seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1)
    parser.add_argument("--ckpts", required=True, type=Path)
    parser.add_argument(
        "--config",
        action="append",
        required=True,
        help='"NAME=ARGS": a service to start with these extra `serve stageN` arguments (repeatable)',
    )
    parser.add_argument("--requests", type=int, default=3, help="requests per service (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the stage's)")
    parser.add_argument("--voxels", type=int, default=20000, help="stage 2: occupied cells of the input")
    parser.add_argument("--ready-timeout", type=float, default=540.0, help="seconds to wait for SERVING")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep the services' logs here")
    args = parser.parse_args()
    steps = args.steps or (50 if args.stage == 1 else 25)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix=f"stage{args.stage}-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)

    services = []
    for index, spec in enumerate(args.config):
        name, _, extra = spec.partition("=")
        services.append(Service(name, shlex.split(extra), free_port(), log_dir / f"service{index}.log"))
    try:
        for svc in services:
            command = [
                sys.executable, "-m", "synchuman_cli", "--log-level", "INFO", "serve", f"stage{args.stage}",
                "--address", f"127.0.0.1:{svc.port}", "--ckpts", str(args.ckpts), *svc.args,
            ]  # fmt: skip
            svc.started = time.perf_counter()
            svc.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=svc.log_path.open("w"))
        deadline = time.perf_counter() + args.ready_timeout
        while any(s.ready_s is None for s in services):
            for svc in services:
                if svc.ready_s is not None:
                    continue
                assert svc.process is not None
                if svc.process.poll() is not None:
                    tail = svc.log_path.read_text(errors="replace")[-3000:]
                    raise SystemExit(f"service {svc.name!r} exited with {svc.process.returncode}:\n{tail}")
                if serving(svc.port):
                    svc.ready_s = time.perf_counter() - svc.started
                    print(f"{svc.name}: SERVING after {svc.ready_s:.1f} s", flush=True)
            if time.perf_counter() > deadline:
                raise SystemExit(f"not SERVING within {args.ready_timeout:.0f} s")
            time.sleep(2)

        inputs = stage1_inputs() if args.stage == 1 else stage2_inputs(args.voxels)
        for svc in services:
            for i in range(args.requests):
                measured = request(args.stage, svc.port, inputs, steps, f"bench-{i + 1}")
                record = last_record(svc.log_path, DONE_MESSAGE[args.stage])
                measured["phases"] = record.get("timings" if args.stage == 1 else "phases", {})
                measured["peaks"] = record.get("peak_gpu_gib", {})
                if record.get("cfg_device_peak_gib") is not None:
                    measured["replica_peak"] = record["cfg_device_peak_gib"]
                svc.requests.append(measured)
                print(f"{svc.name} request {i + 1}: {json.dumps(measured)}", flush=True)
    finally:
        for svc in services:
            if svc.process is not None and svc.process.poll() is None:
                svc.process.terminate()
        for svc in services:
            if svc.process is not None:
                try:
                    svc.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    svc.process.kill()

    print(
        f"\n| service (`serve stage{args.stage}` args) | start-up to SERVING (s) | request wall (s) "
        f"| service (s) | phases of the last request (s; {steps} steps) | peak GPU GiB (phase max [/ CFG "
        "replica]) |"
    )
    print("|---|---|---|---|---|---|")
    for svc in services:
        reqs = svc.requests
        walls = ", ".join(f"{r['wall_s']:.2f}" for r in reqs)
        service_s = ", ".join(f"{r['service_s']:.2f}" for r in reqs)
        phases = ", ".join(f"{k} {v:.2f}" for k, v in (reqs[-1]["phases"] if reqs else {}).items())
        peaks = [max(r["peaks"].values(), default=0.0) for r in reqs]
        replica = [r["replica_peak"] for r in reqs if "replica_peak" in r]
        peak = f"{max(peaks, default=0.0):.2f}" + (f" / {max(replica):.2f}" if replica else "")
        print(
            f"| {svc.name} (`{' '.join(svc.args)}`) | {svc.ready_s:.1f} | {walls} | {service_s} | {phases} "
            f"| {peak} |"
        )
    print(f"\nservice logs: {log_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
