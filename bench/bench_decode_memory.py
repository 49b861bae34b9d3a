"""Memory and time of stage 2's decode phase, split into its parts (issue 25, item 3).

The decode phase of a stage-2 request on the noisy mesh random weights produce (22,432 voxels scattered over
64^3) was the request's peak: 13.07 GiB allocated, 17.66 GiB process (bench/RESULTS.md, issue 25). Parts
(``--parts``, comma-separated), each in a fresh child process per code tree:

- ``extract``: FlexiCubes extraction alone (``mesh_from_features``) on synthetic decoder output: every
  scattered voxel subdivided into its 4x4x4 cubes at 256^3 (~1.44 M cubes), features ``N(0, 1)`` (seeded), so
  the SDF signs are as noisy as random weights make them. Runs on ``--device`` (``cpu`` works: the peak is
  then the growth of the process's resident set, VmHWM reset through ``/proc/self/clear_refs``).
- ``upsample``: the full-size mesh decoder's two subdivision blocks and output layer (built from the release
  config with random weights; fp16 on CUDA, fp32 on a CPU) on a ``N(0, 1)`` trunk output ``[N, 768]`` on the
  scattered voxels -> ``[64 N, 101]`` features at 256^3: where the network's memory goes (the trunk works on
  the ``N`` voxels only). Runs on ``--device`` (a CPU takes minutes: ~4 TFLOP of sparse convolutions).
- ``decoder``: the full-size mesh decoder (``--ckpts``: the random tree ``bench_stage2_memory.py
  --make-random`` writes; fp16 on CUDA, fp32 on a CPU, where only a few hundred ``--voxels`` are practical)
  on a ``N(0, 1)`` latent on the scattered voxels and ``N(0, 1)`` multiview features
  ``[1, 4, 64, 64, 4096]``: the network (``decode_features``) and the extraction
  (``to_meshes``) measured separately, then ``Stage2Models.decode``-like both decoders together.

Per part: seconds, the peak *above the memory held at its start* (CUDA: ``max_memory_allocated`` after a
reset; CPU: VmHWM growth) in GiB, and the mesh's vertex / face counts. ``--code LABEL=DIR`` (repeatable)
runs every part once per code tree (``DIR`` first on the import path; ``.`` = this checkout). Prints one
markdown table; JSON goes to ``$OUT/bench_decode_memory.json`` when ``$OUT`` is set. Commands::

    python3 bench/bench_decode_memory.py --device cpu --parts extract --code after=. --code before=.before
    python3 bench/bench_decode_memory.py --device cuda --ckpts /tmp/ckpts --parts extract,decoder \\
        --code after=. --code before=.before
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = float(2**30)


def _vm_hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _vm_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakAbove:
    """Peak memory above the level at entry, in GiB (CUDA allocator or the process's resident set)."""

    def __init__(self, device) -> None:
        self.device = device
        self.gib = 0.0
        self.seconds = 0.0

    def __enter__(self) -> PeakAbove:
        import gc

        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
            self._start = _vm_rss_bytes()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _vm_hwm_bytes()
        self.seconds = round(time.perf_counter() - self._t0, 2)
        self.gib = round((peak - self._start) / GIB, 3)


def scattered_coords(count: int, seed: int = 0):
    """``count`` distinct voxels uniform over 64^3 (as ``bench_request_memory.scattered``), ``[N, 3]`` int."""
    import numpy as np

    cells = np.random.default_rng(seed).choice(64**3, size=count, replace=False)
    return np.stack([cells // 4096, cells // 64 % 64, cells % 64], axis=1)


def child_extract(args: argparse.Namespace) -> dict:
    import torch

    from synchuman.models.flexicubes import mesh_from_features

    device = torch.device(args.device)
    voxels = torch.as_tensor(scattered_coords(args.voxels), dtype=torch.long)
    fine = torch.stack(torch.meshgrid(*[torch.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    cubes = (voxels[:, None, :] * 4 + fine[None]).reshape(-1, 3)
    cubes = cubes[torch.argsort((cubes[:, 0] * 256 + cubes[:, 1]) * 256 + cubes[:, 2])].to(device)
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(cubes.shape[0], 101, generator=generator).to(device)
    with torch.inference_mode(), PeakAbove(device) as peak:
        mesh = mesh_from_features(cubes.int(), feats, 256, True)
    return {
        "cubes": int(cubes.shape[0]),
        "parts": {"extract": {"s": peak.seconds, "peak_gib": peak.gib}},
        "vertices": int(mesh.vertices.shape[0]),
        "faces": int(mesh.faces.shape[0]),
    }


def child_upsample(args: argparse.Namespace) -> dict:
    import torch

    from synchuman.checkpoints.full_size import DECODER_MESH_CONFIG
    from synchuman.checkpoints.tiny_common import randomize_
    from synchuman.models.slat_decoders import SLatMeshDecoder
    from synchuman.sparse import SparseTensor

    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    decoder = SLatMeshDecoder(**DECODER_MESH_CONFIG["args"]).to(device)
    decoder = randomize_(decoder, 0, device).to(dtype).eval()
    coords = torch.as_tensor(scattered_coords(args.voxels), dtype=torch.int32)
    coords = torch.cat([torch.zeros_like(coords[:, :1]), coords], dim=1).to(device)
    generator = torch.Generator().manual_seed(0)
    h = SparseTensor(torch.randn(coords.shape[0], 768, generator=generator).to(device, dtype), coords)
    with torch.inference_mode(), PeakAbove(device) as peak:
        for block in decoder.upsample:
            h = block(h)
        out = decoder.out_layer(h.feats).float()
    return {
        "cubes": int(out.shape[0]),
        "parts": {"upsample + out_layer": {"s": peak.seconds, "peak_gib": peak.gib}},
        "vertices": 0,
        "faces": 0,
    }


def child_decoder(args: argparse.Namespace) -> dict:
    import torch

    from synchuman.checkpoints.layout import CheckpointLayout
    from synchuman.checkpoints.loading import from_pretrained
    from synchuman.models.slat_decoders import SLatGaussianDecoder, SLatMeshDecoder
    from synchuman.sparse import SparseTensor

    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    layout = CheckpointLayout(Path(args.ckpts))
    mesh_decoder = from_pretrained(layout.decoder_mesh, SLatMeshDecoder, dtype=dtype, device=device)
    gs_decoder = from_pretrained(layout.decoder_gs, SLatGaussianDecoder, dtype=dtype, device=device)
    coords = torch.as_tensor(scattered_coords(args.voxels), dtype=torch.int32)
    coords = torch.cat([torch.zeros_like(coords[:, :1]), coords], dim=1).to(device)
    generator = torch.Generator().manual_seed(0)
    latent = SparseTensor(torch.randn(coords.shape[0], 8, generator=generator).to(device), coords)
    mv_color = torch.randn(1, 4, 64, 64, 4096, generator=generator).to(device, dtype)
    mv_normal = torch.randn(1, 4, 64, 64, 4096, generator=generator).to(device, dtype)
    parts = {}
    with torch.inference_mode():
        gs_decoder(latent, mv_color, mv_normal)  # warm-up: kernels, attention layouts
        held_gib = round(torch.cuda.memory_allocated() / GIB, 3)
        with PeakAbove(device) as peak:
            features = mesh_decoder.decode_features(latent, mv_color, mv_normal)
        parts["network"] = {"s": peak.seconds, "peak_gib": peak.gib}
        with PeakAbove(device) as peak:
            mesh = mesh_decoder.to_meshes(features)[0]
        parts["extract"] = {"s": peak.seconds, "peak_gib": peak.gib}
        cubes = int(features.feats.shape[0])
        del features, mesh
        with PeakAbove(device) as peak:
            gaussians = gs_decoder(latent, mv_color, mv_normal)[0]
            mesh = mesh_decoder(latent, mv_color, mv_normal)[0]
        parts["both decoders"] = {"s": peak.seconds, "peak_gib": peak.gib}
    return {
        "cubes": cubes,
        "held_gib": held_gib,
        "parts": parts,
        "vertices": int(mesh.vertices.shape[0]),
        "faces": int(mesh.faces.shape[0]),
        "gaussians": int(gaussians.xyz.shape[0]) if hasattr(gaussians, "xyz") else None,
    }


def child(args: argparse.Namespace) -> None:
    if args.code_dir:
        sys.path.insert(0, args.code_dir)
    sys.path.insert(1 if args.code_dir else 0, str(ROOT))
    import synchuman

    run = {"extract": child_extract, "upsample": child_upsample, "decoder": child_decoder}[args.child]
    result = run(args)
    result["synchuman"] = str(Path(synchuman.__file__).parent)
    print("RESULT " + json.dumps(result), flush=True)


def spawn(args: argparse.Namespace, part: str, code_dir: str | None) -> dict:
    cmd = [sys.executable, __file__, "--child", part, "--device", args.device, "--voxels", str(args.voxels)]
    cmd += ["--ckpts", str(args.ckpts)]
    if code_dir:
        cmd += ["--code-dir", str(Path(code_dir).resolve())]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.child_timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"error": f"exit {proc.returncode}", "tail": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(lines[-1][len("RESULT ") :])


def table(rows: list[tuple[str, str, dict]]) -> str:
    out = [
        "| part | code | cubes | vertices / faces | step | s | peak above start GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for part, label, r in rows:
        if "error" in r:
            out.append(f"| {part} | {label} | {r['error']} | | | | |")
            continue
        for step, m in r["parts"].items():
            out.append(
                f"| {part} | {label} | {r['cubes']:,} | {r['vertices']:,} / {r['faces']:,} | {step} | "
                f"{m['s']} | {m['peak_gib']} |"
            )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--ckpts", type=Path, default=Path("/tmp/ckpts"))
    parser.add_argument("--parts", default="extract,decoder")
    parser.add_argument("--code", action="append", default=[], metavar="LABEL=DIR")
    parser.add_argument("--voxels", type=int, default=22432)
    parser.add_argument("--child-timeout", type=float, default=300.0)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--code-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    codes = [c.split("=", 1) for c in args.code] or [["after", "."]]
    rows = []
    for part in args.parts.split(","):
        for label, code_dir in codes:
            result = spawn(args, part, None if code_dir == "." else code_dir)
            rows.append((part, label, result))
            print(f"{part} [{label}]: " + json.dumps(result), flush=True)
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"], "bench_decode_memory.json")
        path.write_text(json.dumps([{"part": p, "code": c, **r} for p, c, r in rows], indent=1))
    print("\n" + table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
