"""Flat memory per request and stage-2 sampling time against voxel layout (issue 16, items 2 and 3).

``--stage 2``: loads :class:`Stage2Pipeline` in this process (full-size checkpoints, ``--render-views 0`` so
gsplat is not needed) and runs

1. ``--model-requests`` requests of the stage's GPU models (conditioning, 25 sampler steps, multiview
   features, both decoders), each stopped by its ``should_stop`` before post-processing (the real code
   path, including the stop exception), then ``--full-requests`` complete requests (post-processing and GLB
   export too); for each it records ``torch.cuda.memory_allocated`` at the request's start and the request's
   peak (``max_memory_allocated``). A request's tensors that outlive it show as a rising start value.
2. ``--layouts``: 25 guided sampler steps (CUDA-graph replay, as the service runs them) on occupancies of
   about 20k voxels laid out differently: the compact shell of a stick figure, voxels scattered uniformly
   over the grid, and (``--stage1-coords FILE``) the voxels a stage-1 run produced. Prints the token count
   of the flow transformer (the 32^3 level after pooling) next to the time: attention cost grows with it.

``--stage 1``: the same request loop for :class:`Stage1Pipeline` (``--steps`` per request; the memory does
not depend on the step count), and saves the voxels of its last request (``--save-coords``).

Device commands (``.whl`` carried, checkpoints made first)::

    python3 bench/bench_request_memory.py --stage 1 --ckpts /tmp/ckpts --model-requests 50 --steps 2 \\
        --save-coords /tmp/stage1_coords.npy
    python3 bench/bench_request_memory.py --stage 2 --ckpts /tmp/ckpts --model-requests 50 \\
        --full-requests 5 --layouts --stage1-coords /tmp/stage1_coords.npy
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from benchlib.inputs import human_occupancy, photo_like  # noqa: E402

from synchuman.options import Stage2Options  # noqa: E402
from synchuman.pipelines.handoff import Stage2Inputs, sorted_voxels  # noqa: E402
from synchuman.pipelines.stage2_types import Stage2Cancelled  # noqa: E402

GIB = float(2**30)


class StopAfterModels:
    """``should_stop`` that turns true once the pipeline has reported its decode phase: the request stops at
    the check between the decoders and post-processing."""

    def __init__(self) -> None:
        self.phases: list[str] = []

    def progress(self, phase: str, step: int, total: int) -> None:
        self.phases.append(phase)

    def __call__(self) -> bool:
        return "decode" in self.phases


def measured(device: torch.device, run: Callable[[], object]) -> tuple[float, float, float]:
    """(GiB allocated at the start, peak GiB during ``run``, wall seconds); the memory is 0 off CUDA (a CPU
    run only checks that the bench works)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device) / GIB if cuda else 0.0
    began = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / GIB if cuda else 0.0
    return start, peak, time.perf_counter() - began


def report(label: str, rows: list[tuple[float, float, float]]) -> None:
    """One table row for a series of requests (and the series of start values on stderr)."""
    starts = [r[0] for r in rows]
    series = " ".join(f"{v:.3f}" for v in starts)
    print(f"{label}: GiB at start, request by request: {series}", file=sys.stderr)
    drift = max(abs(s - starts[0]) for s in starts)
    print(
        f"| {label} | {len(rows)} | {starts[0]:.3f} | {min(starts):.3f} / {max(starts):.3f} | {drift:.3f} "
        f"| {starts[-1]:.3f} | {max(r[1] for r in rows):.2f} | {statistics.median(r[2] for r in rows):.2f} |",
        flush=True,
    )


def stage2_inputs(coords: np.ndarray) -> Stage2Inputs:
    views = np.stack([photo_like(i, (768, 768, 3)) for i in range(10)])
    return Stage2Inputs(sorted_voxels(coords), views[:5], views[5:], photo_like(10, (518, 518, 3)))


def scattered(count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct voxels drawn uniformly from the 64^3 grid."""
    cells = np.random.default_rng(seed).choice(64**3, size=count, replace=False)
    return np.stack([cells // 4096, cells // 64 % 64, cells % 64], axis=1)


def coarse_tokens(coords: np.ndarray) -> int:
    """Occupied cells of the 32^3 level (the flow transformer's tokens)."""
    return len(np.unique(coords // 2, axis=0))


def stage2(args: argparse.Namespace, device: torch.device) -> None:
    from synchuman.pipelines.stage2 import Stage2Pipeline

    dtype = "float16" if device.type == "cuda" else "float32"
    pipeline = Stage2Pipeline.from_pretrained(args.ckpts, str(device), dtype, render_views=0)
    inputs = stage2_inputs(human_occupancy(args.voxels))
    options = Stage2Options(simplify_ratio=args.simplify, visibility_views=args.visibility_views)
    header = (
        "| stage-2 requests (20k-voxel stick figure) | requests | GiB allocated at start: first | min / max "
        "| max drift from first | last | peak GiB | median s |\n|---|---|---|---|---|---|---|---|"
    )
    print(header, flush=True)

    def models_only() -> None:
        stop = StopAfterModels()
        try:
            pipeline.run(inputs, options, stop.progress, stop)
        except Stage2Cancelled:
            return
        raise RuntimeError("the request was not stopped before post-processing")

    if args.model_requests:
        rows = [measured(device, models_only) for _ in range(args.model_requests)]
        report("GPU models, stopped before post-processing", rows)
    if args.full_requests:
        full = [
            measured(device, lambda: pipeline.run(inputs, options, lambda *e: None, lambda: False))
            for _ in range(args.full_requests)
        ]
        report(f"complete (simplify {args.simplify}, {args.visibility_views} visibility views)", full)
    if args.layouts:
        layouts = {
            "compact: stick-figure shell": human_occupancy(args.voxels),
            "scattered uniformly": scattered(args.voxels),
        }
        if args.stage1_coords is not None:
            layouts["stage-1 output (random stage-1 weights)"] = np.load(args.stage1_coords)
        print("\n| occupancy | voxels | flow tokens (32^3 level) | 25 guided steps, s (median of 3) |")
        print("|---|---|---|---|")
        with torch.inference_mode():
            cond = pipeline.dinov2.condition(inputs.conditioning)
        for name, coords in layouts.items():
            times = []
            for _ in range(3):
                _, _, seconds = measured(
                    device,
                    lambda coords=coords: pipeline._sample(
                        coords, cond, Stage2Options(), lambda *e: None, lambda: False
                    ),
                )
                times.append(seconds)
            print(
                f"| {name} | {len(coords)} | {coarse_tokens(coords)} | {statistics.median(times):.2f} |",
                flush=True,
            )


def stage1(args: argparse.Namespace, device: torch.device) -> None:
    from synchuman.options import Stage1Options
    from synchuman.pipelines.stage1 import Stage1Pipeline

    dtype = "fp16" if device.type == "cuda" else "fp32"
    pipeline = Stage1Pipeline.from_pretrained(args.ckpts, str(device), dtype)
    framed = np.zeros((768, 768, 4), np.uint8)
    framed[60:740, 250:520, :3] = photo_like(0, (680, 270, 3))
    framed[60:740, 250:520, 3] = 255
    crop = photo_like(1, (518, 518, 3))
    outputs = []

    def one() -> None:
        outputs[:] = [pipeline.run(framed, crop, Stage1Options(steps=args.steps))]

    print(
        "| stage-1 requests | requests | GiB allocated at start: first | min / max | max drift from first "
        "| last | peak GiB | median s |\n|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    rows = [measured(device, one) for _ in range(args.model_requests)]
    report(f"eager {dtype}, {args.steps} steps", rows)
    if args.save_coords is not None:
        np.save(args.save_coords, outputs[0].coords)
        print(f"voxels of the last request: {len(outputs[0].coords)} -> {args.save_coords}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", type=int, choices=(1, 2), default=2)
    parser.add_argument("--ckpts", required=True, type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model-requests", type=int, default=50)
    parser.add_argument("--full-requests", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="stage 1: sampler steps per request")
    parser.add_argument("--voxels", type=int, default=20000)
    parser.add_argument("--simplify", type=float, default=0.95)
    parser.add_argument("--visibility-views", type=int, default=1000)
    parser.add_argument("--layouts", action="store_true", help="stage 2: sampling time per occupancy layout")
    parser.add_argument("--stage1-coords", type=Path, default=None)
    parser.add_argument("--save-coords", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (no memory counters)"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    (stage1 if args.stage == 1 else stage2)(args, device)  # the pipelines set inference mode themselves
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
