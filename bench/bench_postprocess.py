"""GPU bench of post-processing (decoded mesh + Gaussians + generated views -> GLB).

Builds a ~240k-face human (marching cubes of a capsule body at 340^3), ~600k surface Gaussians and the five
generated views (768^2) painted with a known colour pattern, then runs ``to_glb``:
- once small to warm up (CUDA context, gsplat JIT build, kernels), timed separately;
- with the default "fast" bake (splat init + 100 full-batch steps) at the upstream defaults otherwise
  (simplify 0.7, 1000 visibility views at 1024^2, 95 Gaussian views at 1024^2, 1024^2 texture);
- with upstream's bake ("opt", 1000 single-view steps), the rest unchanged;
and prints per-phase seconds, peak GPU memory, bake error (mean per-view L1, 0..1 units), texture coverage,
atlas utilisation and the backends used. Also times xatlas on the decimated mesh the upstream way
(one mesh, default packing) in a subprocess with a time limit. JSON goes to $OUT/bench_postprocess.json.

Usage: ``python bench/bench_postprocess.py``; ``--small --device cpu`` checks the script.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from benchlib.meshes import body_mesh, generated_views, surface_gaussians  # noqa: E402

from synchuman.models.flexicubes import Mesh  # noqa: E402
from synchuman.options import PostprocessOptions  # noqa: E402
from synchuman.postprocess import pipeline  # noqa: E402
from synchuman.postprocess.decimate import decimate  # noqa: E402


def _xatlas_upstream(queue: mp.Queue, vertices, faces) -> None:
    from synchuman.postprocess.uv_atlas import parametrize

    start = time.perf_counter()
    atlas = parametrize(vertices, faces, fast=False, pieces=1)
    queue.put((time.perf_counter() - start, atlas.utilization, atlas.charts))


def xatlas_upstream(vertices, faces, limit_s: float) -> dict:
    """Upstream-style xatlas (one mesh, default packing) in a child process, killed after ``limit_s``."""
    queue: mp.Queue = mp.get_context("fork").Queue()
    proc = mp.get_context("fork").Process(target=_xatlas_upstream, args=(queue, vertices, faces))
    proc.start()
    proc.join(limit_s)
    if proc.is_alive():
        proc.kill()
        return {"seconds": f"> {limit_s:.0f} (killed)"}
    seconds, util, charts = queue.get()
    return {"seconds": round(seconds, 2), "utilization": round(util, 4), "charts": charts}


def run(mesh: Mesh, gaussians, views, options: PostprocessOptions, device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    glb, report = pipeline.to_glb(mesh, gaussians, views, options)
    total = time.perf_counter() - start
    out = {
        "total_s": round(total, 3),
        "phases_s": {k: round(v, 3) for k, v in report.phases.items()},
        "phase_peak_gpu_gib": {k: round(v, 2) for k, v in report.phase_peak_gib.items()},
        # the phase timer resets the peak counter at every phase: the run's peak is the largest phase peak
        "peak_gpu_gib": round(max(report.phase_peak_gib.values()), 2) if report.phase_peak_gib else None,
        "counts": report.counts,
        "glb_mb": round(len(glb) / 1e6, 3),
        "atlas_utilization": round(report.atlas_utilization, 4),
        "bake": dataclasses.asdict(report.bake) if report.bake else None,
        "backends": report.backends,
        "warnings": report.warnings,
    }
    print(json.dumps(out), flush=True)
    return out


def _save(results: dict) -> None:
    out_dir = os.environ.get("OUT")
    if out_dir:
        Path(out_dir, "bench_postprocess.json").write_text(json.dumps(results, indent=1))


def build_gsplat(status: dict) -> None:
    """Import gsplat's CUDA backend (JIT-builds it the first time) and record how long it took."""
    start = time.perf_counter()
    try:
        from gsplat.cuda import _backend

        status["ok"] = _backend._C is not None
    except Exception as exc:  # noqa: BLE001 - reported, the bench then runs without Gaussian views
        status["error"] = repr(exc)[:500]
    status["seconds"] = round(time.perf_counter() - start, 1)


def realistic_inputs(device: torch.device, resolution: int, gaussians: int, view_size: int) -> tuple:
    """A person-like decoded output: ``(vertices [V, 3] float32, faces [F, 3] int64)`` of the capsule body
    marched at ``resolution``^3 (340: ~240k faces), the :class:`Mesh` of them on ``device``, ``gaussians``
    surface Gaussians and the five generated views (``view_size``^2) painted with a known pattern."""
    verts_np, faces_np = body_mesh(resolution, device=str(device))
    verts, faces = torch.from_numpy(verts_np).to(device), torch.from_numpy(faces_np).to(device)
    splats = surface_gaussians(verts, faces, gaussians, 0.004)
    return verts_np, faces_np, Mesh(verts, faces), splats, generated_views(verts, faces, view_size)


def warm_up(mesh: Mesh, gaussians, views, gaussian_renders: bool) -> tuple[PostprocessOptions, dict]:
    """One small ``to_glb`` (CUDA context, kernels, gsplat); retried without Gaussian renders when they fail.

    Returns the small options used (``gaussian_views`` 0 when the renders failed) and ``{"warmup_s": s}``
    plus ``"warmup_error"`` when the first try failed."""
    warm = PostprocessOptions(
        visibility_views=8,
        visibility_resolution=256,
        texture_size=256,
        bake_steps=5,
        gaussian_views=2 if gaussian_renders else 0,
        gaussian_resolution=256,
    )
    result: dict = {}
    t = time.perf_counter()
    try:
        pipeline.to_glb(mesh, gaussians, views, warm)
    except Exception as exc:  # noqa: BLE001 - recorded; retried without Gaussian views
        result["warmup_error"] = repr(exc)[:500]
        print(result["warmup_error"], flush=True)
        warm = dataclasses.replace(warm, gaussian_views=0)
        pipeline.to_glb(mesh, gaussians, views, warm)
    result["warmup_s"] = round(time.perf_counter() - t, 2)
    return warm, result


def small_defaults(warm: PostprocessOptions) -> PostprocessOptions:
    """The defaults scaled down for a script check on a CPU (``--small``)."""
    return dataclasses.replace(
        warm,
        visibility_views=32,
        visibility_resolution=128,
        bake_steps=100,
        gaussian_views=8,
        gaussian_resolution=96,
        texture_size=128,
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes (script check on CPU)")
    parser.add_argument("--resolution", type=int, default=340, help="marching-cubes grid of the body")
    parser.add_argument("--gaussians", type=int, default=600_000)
    parser.add_argument("--fast-steps", type=int, default=None, help="fast-bake steps (default: its default)")
    parser.add_argument("--xatlas-limit", type=float, default=90.0)
    parser.add_argument(
        "--budget", type=float, default=270.0, help="seconds; the xatlas comparison gets the rest"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    res = 48 if args.small else args.resolution
    results: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    bench_start = time.perf_counter()
    gsplat_status: dict = {}
    builder = threading.Thread(target=build_gsplat, args=(gsplat_status,))
    if device.type == "cuda":
        builder.start()  # overlaps the JIT build with building the inputs

    t = time.perf_counter()
    n_gaussians = 2000 if args.small else args.gaussians
    verts_np, faces_np, mesh, gaussians, views = realistic_inputs(
        device, res, n_gaussians, 96 if args.small else 768
    )
    results["inputs"] = {
        "faces": len(faces_np),
        "gaussians": len(gaussians),
        "build_s": time.perf_counter() - t,
    }
    print(json.dumps(results), flush=True)
    if device.type == "cuda":
        builder.join()
        results["gsplat_build"] = gsplat_status
        print(json.dumps(gsplat_status), flush=True)
    no_gsplat = device.type == "cuda" and not gsplat_status.get("ok")
    warm, warm_result = warm_up(mesh, gaussians, views, gaussian_renders=not no_gsplat)
    no_gsplat = no_gsplat or "warmup_error" in warm_result
    results.update(warm_result)
    print(json.dumps({"warmup_s": results["warmup_s"]}), flush=True)
    _save(results)

    if args.small:
        default = small_defaults(warm)
    else:
        default = PostprocessOptions(gaussian_views=0 if no_gsplat else 95)
    _save(results)
    fast = dataclasses.replace(default, bake_mode="fast", bake_steps=args.fast_steps)
    results["fast_bake"] = run(mesh, gaussians, views, fast, device)
    _save(results)
    upstream_bake = dataclasses.replace(default, bake_mode="opt", bake_steps=100 if args.small else 1000)
    results["upstream_defaults"] = run(mesh, gaussians, views, upstream_bake, device)
    _save(results)
    remaining = args.budget - (time.perf_counter() - bench_start)
    if remaining > 15:
        dec_v, dec_f = decimate(verts_np, faces_np, default.simplify)
        results["xatlas_upstream_way"] = xatlas_upstream(dec_v, dec_f, min(args.xatlas_limit, remaining - 5))
        print(json.dumps(results["xatlas_upstream_way"]), flush=True)
    _save(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
