"""Stage-1 service timing: real ``synchuman serve stage1`` processes, real checkpoints, real gRPC requests.

Starts one service process per ``--config NAME=ARGS`` at once (so their start-ups and ``--compile`` warm-ups
overlap), waits until every one reports SERVING on gRPC health, then sends each ``--requests`` requests in
turn (one at a time, so the services never compete for a GPU) and prints, per config:

- start-up seconds (process start -> SERVING, warm-up and compilation included);
- per request: client wall time (upload -> last response message), the service's own ``seconds``, and the
  pipeline's phases (encode / sample / decode seconds and per-phase peak GPU memory, read from the
  service's ``stage 1 done`` log line; the CFG replica's peak too);
- the sampling phase per step.

Device command (``.whl`` carried; checkpoints drawn on the GPU first)::

    python3 -m synchuman.cli ckpts make-random /tmp/ckpts --parts dinov2,stage1 && \\
    python3 bench/bench_stage1_service.py --ckpts /tmp/ckpts \\
        --config "1 GPU, compiled=--device cuda:0 --compile" \\
        --config "2 GPUs, CFG-parallel=--device cuda:0 --cfg-device cuda:1 --compile"

CPU smoke run: ``.venv/bin/python bench/bench_stage1_service.py --ckpts /tmp/tiny --steps 2 --config
"cpu=--device cpu"`` (after ``synchuman ckpts make-tiny /tmp/tiny``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import socket
import statistics
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

from stage_doubles import png, stage1_requests  # noqa: E402

from synchuman.v1 import common_pb2, stage1_pb2_grpc  # noqa: E402


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


def person_inputs() -> dict[str, bytes]:
    """A person-sized opaque region on a transparent 768^2 canvas + a 518^2 crop (content does not change
    the model's work: every request runs the same shapes)."""
    rng = np.random.default_rng(0)
    framed = np.zeros((768, 768, 4), np.uint8)
    framed[60:740, 250:520, :3] = rng.integers(0, 256, (680, 270, 3), dtype=np.uint8)
    framed[60:740, 250:520, 3] = 255
    crop = rng.integers(0, 256, (518, 518, 3), dtype=np.uint8)
    return {"framed.png": png(framed), "conditioning.png": png(crop)}


def serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def done_records(log_path: Path) -> list[dict[str, Any]]:
    """The pipeline's ``stage 1 done`` JSON log records, in order."""
    records = []
    for line in log_path.read_text(errors="replace").splitlines():
        if '"stage 1 done"' in line:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def request(port: int, inputs: dict[str, bytes], steps: int, job: str) -> dict[str, Any]:
    """One GenerateViews call; client wall seconds, the service's seconds, step event times."""
    options = common_pb2.MultiviewOptions(steps=steps)
    step_times: dict[int, float] = {}
    started = time.perf_counter()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = stage1_pb2_grpc.Stage1ServiceStub(channel)
        result = None
        for message in stub.GenerateViews(stage1_requests(inputs, options, job_id=job), timeout=900):
            kind = message.WhichOneof("payload")
            if kind == "progress" and message.progress.phase == "sampling":
                step_times[message.progress.step] = message.progress.elapsed_seconds
            elif kind == "result":
                result = message.result
    wall = time.perf_counter() - started
    if result is None:
        raise RuntimeError(f"{job}: the stream ended without a result")
    return {"wall_s": wall, "service_s": result.seconds, "voxels": result.structure.count}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpts", required=True, type=Path)
    parser.add_argument(
        "--config",
        action="append",
        required=True,
        help='"NAME=ARGS": a service to start with these extra `serve stage1` arguments (repeatable)',
    )
    parser.add_argument("--requests", type=int, default=3, help="requests per service (default 3)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--ready-timeout", type=float, default=540.0, help="seconds to wait for SERVING")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep the services' logs here")
    args = parser.parse_args()
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="stage1-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)

    services = []
    for index, spec in enumerate(args.config):
        name, _, extra = spec.partition("=")
        services.append(Service(name, shlex.split(extra), free_port(), log_dir / f"service{index}.log"))
    try:
        for svc in services:
            command = [
                sys.executable, "-m", "synchuman.cli", "--log-level", "INFO", "serve", "stage1",
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

        inputs = person_inputs()
        for svc in services:
            for i in range(args.requests):
                measured = request(svc.port, inputs, args.steps, f"bench-{i + 1}")
                records = done_records(svc.log_path)
                if records:
                    last = records[-1]
                    measured["timings"] = last.get("timings", {})
                    measured["peaks"] = last.get("peak_gpu_gib", {})
                    measured["replica_peak"] = last.get("cfg_device_peak_gib")
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
        f"\n| service (`serve stage1` args) | start-up to SERVING (s) | request wall (s) | service (s) "
        f"| encode / sample / decode (s) | sampling ms/step ({args.steps} steps) | peak GPU GiB (phase max"
        " / CFG replica) |"
    )
    print("|---|---|---|---|---|---|---|")
    for svc in services:
        reqs = svc.requests
        walls = ", ".join(f"{r['wall_s']:.2f}" for r in reqs)
        service_s = ", ".join(f"{r['service_s']:.2f}" for r in reqs)
        phases = [r.get("timings", {}) for r in reqs]
        split = ", ".join(
            f"{p.get('encode', 0):.2f} / {p.get('sample', 0):.2f} / {p.get('decode', 0):.2f}" for p in phases
        )
        sample_ms = statistics.median(1e3 * p.get("sample", 0) / args.steps for p in phases) if phases else 0
        peaks = [max(r.get("peaks", {}).values(), default=0.0) for r in reqs]
        replica = [r.get("replica_peak") for r in reqs if r.get("replica_peak") is not None]
        peak = f"{max(peaks, default=0.0):.2f}" + (f" / {max(replica):.2f}" if replica else "")
        print(
            f"| {svc.name} (`{' '.join(svc.args)}`) | {svc.ready_s:.1f} | {walls} | {service_s} | {split} "
            f"| {sample_ms:.1f} | {peak} |"
        )
    print(f"\nservice logs: {log_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
