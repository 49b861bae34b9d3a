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
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from benchlib.inputs import stage1_inputs, stage2_inputs  # noqa: E402
from benchlib.launch import StageProcess  # noqa: E402
from benchlib.poll import last_record  # noqa: E402
from benchlib.stage_calls import call_stage  # noqa: E402


@dataclass
class Service:
    """One running service process and what was measured on it."""

    name: str
    args: list[str]
    process: StageProcess
    ready_s: float | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)


#: The log line each stage's service writes per finished request.
DONE_MESSAGE = {1: "stage 1 done", 2: "stage 2 phases"}


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
    try:
        for index, spec in enumerate(args.config):
            name, _, extra = spec.partition("=")
            extra_args = shlex.split(extra)
            process = StageProcess(args.stage, args.ckpts, extra_args, log_dir / f"service{index}.log")
            services.append(Service(name, extra_args, process))
        deadline = time.perf_counter() + args.ready_timeout
        while any(s.ready_s is None for s in services):
            for svc in services:
                if svc.ready_s is not None:
                    continue
                try:
                    svc.ready_s = svc.process.ready_s()
                except RuntimeError as exc:
                    raise SystemExit(f"service {svc.name!r} {exc}") from None
                if svc.ready_s is not None:
                    print(f"{svc.name}: SERVING after {svc.ready_s:.1f} s", flush=True)
            if time.perf_counter() > deadline:
                raise SystemExit(f"not SERVING within {args.ready_timeout:.0f} s")
            time.sleep(2)

        inputs = stage1_inputs() if args.stage == 1 else stage2_inputs(args.voxels)
        for svc in services:
            for i in range(args.requests):
                measured: dict[str, Any] = call_stage(
                    args.stage, svc.process.address, inputs, steps, f"bench-{i + 1}"
                )
                record = last_record(svc.process.log_path, DONE_MESSAGE[args.stage])
                measured["phases"] = record.get("timings" if args.stage == 1 else "phases", {})
                measured["peaks"] = record.get("peak_gpu_gib", {})
                if record.get("cfg_device_peak_gib") is not None:
                    measured["replica_peak"] = record["cfg_device_peak_gib"]
                svc.requests.append(measured)
                print(f"{svc.name} request {i + 1}: {json.dumps(measured)}", flush=True)
    finally:
        for svc in services:
            svc.process.stop(timeout_s=60)

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
