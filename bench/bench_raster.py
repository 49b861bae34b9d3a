"""Rasteriser backends on a ~300k-triangle human: time per batch of views and agreement with the PyTorch one.

For each backend available on the device (``torch`` always; ``nvdiffrast`` on CUDA, ``open3d`` on the CPU when
installed) rasterises ``--views`` perspective views (radius 2, fov 40 degrees, Hammersley directions) at
``--resolution`` in batches of ``--batch`` with barycentrics and depth, after one warm-up batch; prints the
median seconds of ``--repeat`` runs, the peak GPU memory, and, against ``torch``: the share of pixels with the
same coverage, the share of covered pixels with the same face (ties on shared edges may differ), and the
largest depth / barycentric differences on those pixels.

Device: ``python3 bench/bench_raster.py`` (nvdiffrast installed or built first).
CPU check: ``python bench/bench_raster.py --device cpu --mesh-res 96 --views 4
--resolution 128``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from benchlib.meshes import body_mesh  # noqa: E402

from synchuman.geometry import camera, raster_backends  # noqa: E402
from synchuman.geometry.raster import RasterOutput, rasterize  # noqa: E402


def run(
    backend: str, args: argparse.Namespace, mesh: tuple[torch.Tensor, torch.Tensor], device: torch.device
):
    """(median seconds for all views, peak GiB, the first batch's output)."""
    vertices, faces = mesh
    yaw, pitch = camera.sphere_hammersley(args.views)
    extrinsics = camera.orbit_extrinsics(yaw, pitch, 2.0).to(device)
    intrinsics = camera.intrinsics_from_fov(math.radians(40.0)).expand(args.views, 3, 3).to(device)

    def all_views() -> RasterOutput:
        first = None
        for start in range(0, args.views, args.batch):
            views = slice(start, start + args.batch)
            out = rasterize(
                vertices,
                faces,
                extrinsics[views],
                intrinsics[views],
                args.resolution,
                args.resolution,
                backend=backend,
            )
            first = first or out
        return first

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rasterize(
        vertices, faces, extrinsics[:2], intrinsics[:2], args.resolution, args.resolution, backend=backend
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times, first = [], None
    for _ in range(args.repeat):
        sync()
        start = time.perf_counter()
        first = all_views()
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(times), peak, first


def agreement(out: RasterOutput, ref: RasterOutput) -> str:
    both = out.mask & ref.mask
    same = both & (out.face_id == ref.face_id)
    coverage = float((out.mask == ref.mask).float().mean())
    face = float(same.sum()) / max(1, int(both.sum()))
    depth = float((out.depth - ref.depth)[both].abs().max()) if bool(both.any()) else float("nan")
    bary = float((out.bary - ref.bary)[same].abs().max()) if bool(same.any()) else float("nan")
    return f"{coverage:.5f} | {face:.5f} | {depth:.2e} | {bary:.2e}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--mesh-res", type=int, default=380, help="marching-cubes grid (380: ~300k faces)")
    parser.add_argument("--views", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    verts, faces = body_mesh(args.mesh_res, device=str(device))
    mesh = torch.from_numpy(verts).to(device), torch.from_numpy(faces).to(device).long()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    size = f"{args.views} views at {args.resolution}^2 in batches of {args.batch}"
    print(f"{name}: {len(faces)} triangles, {size}")
    candidates = ["torch", "nvdiffrast" if device.type == "cuda" else "open3d"]
    rows, reference = [], None
    for backend in candidates:
        if backend != "torch" and not raster_backends.available(backend):
            rows.append(f"| {backend} | not installed | | | | | |")
            continue
        seconds, peak, first = run(backend, args, mesh, device)
        if reference is None:
            reference = first
        rows.append(f"| {backend} | {seconds:.3f} | {peak:.2f} | {agreement(first, reference)} |")
        print(rows[-1], flush=True)
    columns = ("backend", "seconds, all views", "peak GiB", "same coverage", "same face", "max depth diff")
    print("| " + " | ".join(columns) + " | max bary diff |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
