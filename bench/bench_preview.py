"""Previews (issue 21): time and peak memory of the 512^2 thumbnail and the 30-frame 256^2 turntable (render,
MP4 and WebP encodes) of the synthetic person at several face counts.

The person (marching cubes at ``--mesh-res``^3, 241,812 faces at 340) is decimated to each ``--faces`` count,
parametrised (xatlas) and given a 1024^2 texture of the smooth test pattern; then each step runs once after a
warm-up. Peak memory: on the CPU the growth of the process's resident peak (``VmHWM``, reset before each step
with ``/proc/self/clear_refs``) over the resident size before it; on CUDA the peak allocated GPU memory.

CPU: ``python bench/bench_preview.py`` (add ``--mesh-res 160`` for a quicker, coarser person);
GPU: ``python bench/bench_preview.py --device cuda``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from benchlib.meshes import body_mesh, pattern  # noqa: E402

from synchuman.postprocess import preview  # noqa: E402
from synchuman.postprocess.decimate import decimate_to_count  # noqa: E402
from synchuman.postprocess.uv_atlas import parametrize  # noqa: E402


def status_kib(key: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def measure(step: Callable[[], object], device: torch.device) -> tuple[object, float, float]:
    """``(result, seconds, peak MiB)`` of one call of ``step``."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")
        before = status_kib("VmRSS") * 1024
    start = time.perf_counter()
    result = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = status_kib("VmHWM") * 1024 - before
    return result, time.perf_counter() - start, peak / 2**20


def textured_person(faces_wanted: int, body: tuple[np.ndarray, np.ndarray], device: torch.device):
    """The person at ``faces_wanted`` faces with the pattern texture, as a :class:`PreviewMesh`."""
    verts, faces = decimate_to_count(*body, faces_wanted)
    atlas = parametrize(verts, faces, 1024)
    # texture: the pattern at each texel's surface point, splatted from the atlas vertices (smooth enough)
    texture = np.full((1024, 1024, 3), 128, np.uint8)
    colour = pattern(torch.from_numpy(atlas.vertices)).numpy()
    col = np.clip((atlas.uvs[:, 0] * 1023).round().astype(int), 0, 1023)
    row = np.clip(((1 - atlas.uvs[:, 1]) * 1023).round().astype(int), 0, 1023)
    texture[row, col] = (colour * 255).astype(np.uint8)
    return preview.preview_mesh(atlas.vertices, atlas.faces, atlas.uvs, texture, atlas.vertex_map, device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mesh-res", type=int, default=340)
    parser.add_argument("--faces", type=int, nargs="+", default=[5_000, 20_000, 72_508])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_grad_enabled(False)
    body = body_mesh(args.mesh_res)
    print(f"person: {len(body[1]):,} faces (marching cubes at {args.mesh_res}^3); device {device}")
    print(f"torch threads: {torch.get_num_threads()}")
    spin_size = max(64, args.size // 4 * 2)
    print(
        f"\n| faces | thumbnail {args.size}^2: s / peak MiB | turntable {args.frames} x {spin_size}^2: "
        "s / peak MiB | MP4 encode: s / KB | WebP encode: s / KB |"
    )
    print("|---|---|---|---|---|")
    for count in args.faces:
        mesh = textured_person(count, body, device)
        preview.thumbnail(mesh, 64)  # warm-up
        _, thumb_s, thumb_mib = measure(lambda m=mesh: preview.thumbnail(m, args.size), device)
        frames, spin_s, spin_mib = measure(
            lambda m=mesh: preview.turntable(m, args.frames, spin_size), device
        )
        mp4, mp4_s, _ = measure(lambda f=frames: preview.mp4_bytes(f), device)
        webp, webp_s, _ = measure(lambda f=frames: preview.webp_bytes(f), device)
        print(
            f"| {len(mesh.faces):,} | {thumb_s:.2f} / {thumb_mib:.0f} | {spin_s:.1f} / {spin_mib:.0f} | "
            f"{mp4_s:.2f} / {len(mp4) / 1e3:.0f} | {webp_s:.2f} / {len(webp) / 1e3:.0f} |"
        )


if __name__ == "__main__":
    main()
