"""Overhead of the stage services themselves (no model): wire, PNG coding, chunking, worker thread, progress.

Runs Stage1Service and Stage2Service in-process with backends that return at once (tests/stage_doubles.py)
and times complete calls over real gRPC on localhost:

- stage 1: upload framed + conditioning PNGs, 50 progress events, 10 views encoded and streamed back;
- stage 2: upload 11 PNGs + voxels, 25 progress events, a 3 MB GLB streamed back in 1 MiB chunks.

Prints a table (median / min over ``--repeat`` calls); this is the floor every real request pays on top of
the model time. Usage: ``.venv/bin/python bench/bench_stage_services.py [--repeat 10]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

from benchlib.inputs import photo_like  # noqa: E402
from stage_doubles import (  # noqa: E402
    FakeStage1,
    FakeStage2,
    channel,
    png,
    stage1_inputs,
    stage1_requests,
    stage2_requests,
    start_server,
)

from services.common.stage_io import voxels_to_proto  # noqa: E402
from services.common.stage_runtime import StageLimits  # noqa: E402
from synchuman.v1 import common_pb2, stage1_pb2_grpc, stage2_pb2_grpc  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    rows = []

    s1 = start_server("stage1", FakeStage1(), StageLimits())
    stub1 = stage1_pb2_grpc.Stage1ServiceStub(channel(s1))
    inputs1 = stage1_inputs()
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        list(stub1.GenerateViews(stage1_requests(inputs1, common_pb2.MultiviewOptions(steps=50)), timeout=60))
        times.append(time.perf_counter() - t)
    rows.append(("stage1 call (50 steps, 10 views)", times))
    s1.stop()

    s2 = start_server("stage2", FakeStage2(glb_bytes=3_000_000), StageLimits())
    stub2 = stage2_pb2_grpc.Stage2ServiceStub(channel(s2))
    blobs = {"conditioning.png": png(photo_like(0, (518, 518, 3)))}
    for kind in ("color", "normal"):
        for i in range(5):
            blobs[f"{kind}_{i}.png"] = png(photo_like(i + (10 if kind == "normal" else 0), (768, 768, 3)))
    grid = np.stack(np.meshgrid(*[np.arange(16, 48)] * 3, indexing="ij"), -1).reshape(-1, 3)
    structure = voxels_to_proto(grid[:20000], 64)
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        requests = stage2_requests(blobs, structure, common_pb2.ReconstructionOptions())
        list(stub2.Reconstruct(requests, timeout=60))
        times.append(time.perf_counter() - t)
    rows.append(("stage2 call (20k voxels, 3 MB GLB)", times))
    s2.stop()

    print(f"{'call':<38}{'median ms':>10}{'min ms':>10}")
    for name, values in rows:
        print(f"{name:<38}{statistics.median(values) * 1e3:>10.1f}{min(values) * 1e3:>10.1f}")


if __name__ == "__main__":
    main()
