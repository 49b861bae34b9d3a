"""Resident-memory growth of the stage-2 post-processing phases on a CPU, each phase alone in a loop.

Runs every phase (decimate, visibility, cut_fill, uv_atlas, bake, export) on a fixed capsule-body mesh
(marching cubes at ``--resolution``^3, decimated like the soak's ``simplify_ratio``) ``--calls`` times after 3
warm-up calls, and prints, per phase, the resident memory (VmRSS after glibc ``malloc_trim``, as the services
do after each request) before and after the loop, the growth per call in KiB and the Python heap blocks per
call. A native leak shows as steady KiB per call with flat blocks (pymeshfix's ``load_array`` leaked ~130 B
per face per call in ``cut_fill`` until its hole filling moved to a file load). ``--pipeline N`` also runs N
requests of the tiny-checkpoint stage-2 pipeline with the soak's small options.

Usage: ``PYTHONPATH=.:tests .venv/bin/python bench/bench_stage2_cpu_memory.py [--calls 100] [--pipeline 6]``
(Linux only: reads /proc/self/status).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

from benchlib.meshes import body_mesh, generated_views  # noqa: E402

from synchuman.postprocess import bake, export, pipeline  # noqa: E402
from synchuman.postprocess.decimate import decimate  # noqa: E402
from synchuman.postprocess.uv_atlas import parametrize  # noqa: E402
from synchuman.postprocess.visibility import face_visibility, remove_invisible_faces  # noqa: E402

LIBC = ctypes.CDLL("libc.so.6")
TEXTURE = 256
VIEWS = 8  # visibility views, as the soak's small options
BAKE_STEPS = 5


def trimmed_rss_mib() -> float:
    """VmRSS in MiB after a garbage collection and ``malloc_trim(0)``."""
    gc.collect()
    LIBC.malloc_trim(0)
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


def phase_calls(resolution: int, simplify: float) -> dict[str, Callable[[], object]]:
    """One zero-argument call per post-processing phase, on inputs computed once from the body mesh."""
    verts, faces = body_mesh(resolution)
    dec_v, dec_f = decimate(verts, faces, simplify)
    vis = face_visibility(torch.from_numpy(dec_v), torch.from_numpy(dec_f), VIEWS, 256)
    nbe = int(250 * (1 - simplify) ** 0.5)
    cut_v, cut_f, _ = remove_invisible_faces(dec_v, dec_f, vis, 0.04, nbe)
    atlas = parametrize(cut_v, cut_f, TEXTURE, True)
    views = pipeline.generated_bake_views(
        generated_views(torch.from_numpy(verts), torch.from_numpy(faces), 96), torch.device("cpu")
    )
    atlas_t = [torch.from_numpy(a) for a in (atlas.vertices, atlas.faces, atlas.uvs)]
    texture, _ = bake.bake_texture(*atlas_t, views, TEXTURE, "fast", BAKE_STEPS, 0.01)
    texture8 = bake.to_uint8(texture)
    print(f"mesh: {len(faces)} faces, {len(dec_f)} decimated, {len(cut_f)} after cut/fill", flush=True)
    return {
        "decimate": lambda: decimate(verts, faces, simplify),
        "visibility": lambda: face_visibility(torch.from_numpy(dec_v), torch.from_numpy(dec_f), VIEWS, 256),
        "cut_fill": lambda: remove_invisible_faces(dec_v, dec_f, vis, 0.04, nbe),
        "uv_atlas": lambda: parametrize(cut_v, cut_f, TEXTURE, True),
        "bake": lambda: bake.bake_texture(*atlas_t, views, TEXTURE, "fast", BAKE_STEPS, 0.01),
        "export": lambda: export.glb_bytes(atlas.vertices, atlas.faces, atlas.uvs, texture8),
    }


def pipeline_call() -> Callable[[], object]:
    """One tiny-checkpoint stage-2 request (CPU, float32, no Gaussian renders), the soak's small options."""
    from test_stage2_pipeline import person_inputs

    from synchuman.checkpoints.tiny import write_tiny_tree
    from synchuman.options import Stage2Options
    from synchuman.pipelines.stage2 import Stage2Pipeline

    root = Path(tempfile.mkdtemp(prefix="s2mem-")) / "ckpts"
    write_tiny_tree(root)
    stage2 = Stage2Pipeline.from_pretrained(root, "cpu", "float32", render_views=0)
    options = Stage2Options(steps=1, texture_size=TEXTURE, bake_steps=BAKE_STEPS, visibility_views=VIEWS,
                            simplify_ratio=0.95)
    inputs = person_inputs()
    return lambda: stage2.run(inputs, options, lambda *event: None, lambda: False)


def measure(name: str, call: Callable[[], object], calls: int) -> str:
    """A markdown row: phase, calls, seconds per call, RSS before/after, KiB and heap blocks per call."""
    for _ in range(3):
        call()
    before, blocks = trimmed_rss_mib(), sys.getallocatedblocks()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    seconds = (time.perf_counter() - start) / calls
    after = trimmed_rss_mib()
    grown = (sys.getallocatedblocks() - blocks) / calls
    return (f"| {name} | {calls} | {seconds:.3f} | {before:.1f} | {after:.1f} | "
            f"{(after - before) * 1024 / calls:.1f} | {grown:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100, help="calls per phase after 3 warm-up calls")
    parser.add_argument("--resolution", type=int, default=64, help="marching-cubes grid of the body mesh")
    parser.add_argument("--simplify", type=float, default=0.9, help="share of faces decimation removes")
    parser.add_argument("--pipeline", type=int, default=0, help="also run this many stage-2 requests")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = ["| phase | calls | s/call | RSS before MiB | RSS after MiB | KiB/call | heap blocks/call |",
            "|---|---|---|---|---|---|---|"]
    for name, call in phase_calls(args.resolution, args.simplify).items():
        rows.append(measure(name, call, args.calls))
        print(rows[-1], flush=True)
    if args.pipeline:
        rows.append(measure("stage-2 request (tiny)", pipeline_call(), args.pipeline))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
