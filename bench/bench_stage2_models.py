"""GPU bench of the stage-2 models at full size with random weights.

Builds a human-shaped occupancy of ~20k voxels in a 64^3 grid (capsule stick figure, surface shell) and times
- the guided flow-Euler sampler (25 steps, CFG 5 on t in [0.5, 1], rescale_t 3), eager and with CUDA graphs,
  plus the GPU kernel time (torch profiler) and the number of host synchronisations during sampling;
- the Gaussian decoder;
- the mesh decoder (features) and FlexiCubes extraction,
and prints a table (also written to $OUT/bench_stage2_models.json when OUT is set).

Usage: ``PYTHONPATH=. python bench/bench_stage2_models.py [--dtype bf16] [--voxels 20000]``; add
``--tiny --device cpu`` for parity-sized configs (checks the script itself on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.nn import functional

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from benchlib.inputs import human_occupancy  # noqa: E402

from synchuman.models.slat_decoders import SLatGaussianDecoder, SLatMeshDecoder  # noqa: E402
from synchuman.models.slat_flow import SLatFlowModel  # noqa: E402
from synchuman.samplers.flow_euler import FlowEulerGuidanceIntervalSampler  # noqa: E402
from synchuman.sparse import SparseTensor  # noqa: E402

REP_GS = {
    "lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
    "perturb_offset": True,
    "voxel_size": 1.5,
    "num_gaussians": 32,
    "2d_filter_kernel_size": 0.1,
    "3d_filter_kernel_size": 0.0009,
    "scaling_bias": 0.004,
    "opacity_bias": 0.1,
    "scaling_activation": "softplus",
}
FULL = {
    "flow": dict(
        resolution=64,
        in_channels=8,
        out_channels=8,
        model_channels=1024,
        cond_channels=1024,
        num_blocks=24,
        num_heads=16,
        mlp_ratio=4,
        patch_size=2,
        num_io_res_blocks=2,
        io_block_channels=[128],
        pe_mode="ape",
        qk_rms_norm=True,
        use_fp16=True,
    ),
    "decoder": dict(
        resolution=64,
        model_channels=768,
        latent_channels=8,
        num_blocks=12,
        num_heads=12,
        mlp_ratio=4,
        attn_mode="swin",
        window_size=8,
        use_fp16=True,
        mv_condition_mode="4_view",
        use_multiscale=True,
        use_faceinfo=False,
    ),
    "cond_tokens": 1374,
    "cond_channels": 1024,
    "mv_dim": 1024,
}
TINY = {
    "flow": dict(
        FULL["flow"], model_channels=64, cond_channels=32, num_blocks=2, num_heads=2, io_block_channels=[16]
    ),
    "decoder": dict(FULL["decoder"], model_channels=64, num_blocks=2, num_heads=2, mv_dim=2, block_mv_dim=2),
    "cond_tokens": 12,
    "cond_channels": 32,
    "mv_dim": 2,
    "mesh_extra": {"subdivide_num_groups": 8},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeat: int) -> tuple[float, object]:
    """Median wall seconds of ``repeat`` calls (synchronised) and the last result."""
    times, out = [], None
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def kernel_seconds(fn, table_path: Path | None = None) -> float:
    """Sum of CUDA kernel time of one call (torch profiler); the top ops table goes to ``table_path``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    averages = prof.key_averages()
    if table_path is not None:
        table_path.write_text(averages.table(sort_by="self_device_time_total", row_limit=25))
    return sum(e.self_device_time_total for e in averages) / 1e6


def count_syncs(fn) -> tuple[int, int]:
    """Host synchronisations (CUDA sync-debug warnings) during ``fn(callback)``: total and after step 1."""
    marks: list[int] = []
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn(lambda step, total: marks.append(sum("synchroniz" in str(w.message) for w in caught)))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    total = sum("synchroniz" in str(w.message) for w in caught)
    return total, total - (marks[0] if marks else 0)


def build(cls, cfg: dict, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.device(device):
        model = cls(**cfg)
    return model.to(dtype).eval()


def bench_sampler(args, sizes: dict, coords: torch.Tensor, dtype, device, rows: list) -> torch.Tensor:
    flow = build(SLatFlowModel, sizes["flow"], dtype, device)
    weights_gib = sum(p.numel() * p.element_size() for p in flow.parameters()) / 2**30
    gen = torch.Generator(device="cpu").manual_seed(1)
    noise = torch.randn(coords.shape[0], 8, generator=gen).to(device)
    cond = functional.layer_norm(
        torch.randn(1, sizes["cond_tokens"], sizes["cond_channels"], generator=gen), [sizes["cond_channels"]]
    )
    cond = cond.to(device)
    sampler = FlowEulerGuidanceIntervalSampler(1e-5)

    def run(graph: bool = False, steps: int = args.steps, callback=None) -> torch.Tensor:
        return sampler.sample(
            flow,
            SparseTensor(noise, coords),
            cond,
            torch.zeros_like(cond),
            steps=steps,
            rescale_t=3.0,
            cfg_strength=5.0,
            cfg_interval=(0.5, 1.0),
            cuda_graph=graph,
            callback=callback,
        ).samples.feats

    with torch.inference_mode():
        run(steps=2)
        reset_peak(device)
        wall, eager = timed(run, device, args.repeat)
        peak = peak_gib(device)
        extra = {}
        if device.type == "cuda":
            out_dir = os.environ.get("OUT")
            table = Path(out_dir, f"sampler_ops_{args.dtype}_{args.voxels}.txt") if out_dir else None
            extra["gpu_kernel_s"] = kernel_seconds(run, table)
            extra["host_syncs"], extra["host_syncs_after_step1"] = count_syncs(lambda cb: run(callback=cb))
            try:
                run(graph=True, steps=2)
                g_wall, graphed = timed(lambda: run(graph=True), device, args.repeat)
                extra["graph_wall_s"] = g_wall
                extra["graph_vs_eager_maxabs"] = float((graphed - eager).abs().max())
            except Exception as exc:  # report, keep benchmarking
                extra["graph_error"] = f"{type(exc).__name__}: {exc}"[:300]
    extra["finite"] = bool(torch.isfinite(eager).all())
    rows.append(
        {
            "phase": f"sampler {args.steps} steps, CFG",
            "wall_s": wall,
            "peak_gib": peak,
            "weights_gib": weights_gib,
            **extra,
        }
    )
    return eager.float()


def bench_decoders(
    args, sizes: dict, coords: torch.Tensor, latent: torch.Tensor, dtype, device, rows: list
) -> None:
    gen = torch.Generator(device="cpu").manual_seed(2)
    mv_shape = (1, 4, 64, 64, 4 * sizes["mv_dim"])
    mv_color = torch.randn(mv_shape, generator=gen).to(device)
    mv_normal = torch.randn(mv_shape, generator=gen).to(device)
    std = torch.tensor([2.38, 2.39, 2.12, 2.17, 2.66, 2.37, 2.62, 2.68], device=device)
    mean = torch.tensor([-2.17, 0.0, -0.13, -0.08, -0.53, 0.72, -1.14, 1.2], device=device)
    slat_feats = latent.to(device) * std + mean

    gs = build(SLatGaussianDecoder, dict(sizes["decoder"], representation_config=REP_GS), dtype, device)
    with torch.inference_mode():
        gs(SparseTensor(slat_feats, coords), mv_color, mv_normal)
        reset_peak(device)
        wall, out = timed(
            lambda: gs(SparseTensor(slat_feats, coords), mv_color, mv_normal), device, args.repeat
        )
        rows.append(
            {
                "phase": "GS decoder",
                "wall_s": wall,
                "peak_gib": peak_gib(device),
                "note": f"{len(out[0])} Gaussians, finite: {bool(torch.isfinite(out[0].xyz).all())}",
            }
        )
    gs = out = None
    mesh_dec = build(
        SLatMeshDecoder,
        dict(sizes["decoder"], representation_config={"use_color": True}, **sizes.get("mesh_extra", {})),
        dtype,
        device,
    )
    with torch.inference_mode():
        mesh_dec(SparseTensor(slat_feats, coords), mv_color, mv_normal)
        reset_peak(device)
        f_wall, feats = timed(
            lambda: mesh_dec.decode_features(SparseTensor(slat_feats, coords), mv_color, mv_normal),
            device,
            args.repeat,
        )
        x_wall, meshes = timed(lambda: mesh_dec.to_meshes(feats), device, args.repeat)
        peak = peak_gib(device)
        mesh = meshes[0]
        rows.append(
            {
                "phase": "mesh decoder (features)",
                "wall_s": f_wall,
                "peak_gib": peak,
                "note": f"{feats.feats.shape[0]} cubes at 256^3",
            }
        )
        rows.append(
            {
                "phase": "FlexiCubes extraction",
                "wall_s": x_wall,
                "peak_gib": peak,
                "note": f"V={mesh.vertices.shape[0]} F={mesh.faces.shape[0]}, "
                f"finite: {bool(torch.isfinite(mesh.vertices).all())}",
            }
        )
        rows.append({"phase": "mesh decoder + FlexiCubes", "wall_s": f_wall + x_wall, "peak_gib": peak})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--voxels", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--tiny", action="store_true", help="parity-sized models (checks the script on a CPU)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    sizes = TINY if args.tiny else FULL
    vox = human_occupancy(args.voxels)
    coords = torch.cat([torch.zeros(len(vox), 1, dtype=torch.int32), torch.from_numpy(vox).int()], 1).to(
        device
    )
    rows: list[dict] = []
    info = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": args.dtype,
        "voxels": int(coords.shape[0]),
        "steps": args.steps,
        "coarse_voxels": int(torch.unique(coords[:, 1:] // 2, dim=0).shape[0]),
    }
    latent = bench_sampler(args, sizes, coords, dtype, device, rows)
    bench_decoders(args, sizes, coords, latent, dtype, device, rows)
    print(json.dumps(info))
    print(f"| phase | wall (median of {args.repeat}) | GPU kernel time | peak GPU memory | notes |")
    print("|---|---|---|---|---|")
    for r in rows:
        notes = [r["note"]] if "note" in r else []
        if "graph_wall_s" in r:
            notes.append(
                f"CUDA graphs: {r['graph_wall_s']:.3f} s (max diff vs eager {r['graph_vs_eager_maxabs']:.2g})"
            )
        if "graph_error" in r:
            notes.append(f"graph capture failed: {r['graph_error']}")
        if "host_syncs" in r:
            notes.append(f"host syncs: {r['host_syncs']} (after step 1: {r['host_syncs_after_step1']})")
        if "finite" in r:
            notes.append(f"finite: {r['finite']}")
        if "weights_gib" in r:
            notes.append(f"weights {r['weights_gib']:.2f} GiB")
        kernel = f"{r['gpu_kernel_s']:.3f} s" if "gpu_kernel_s" in r else ""
        joined = "; ".join(notes)
        print(f"| {r['phase']} | {r['wall_s']:.3f} s | {kernel} | {r['peak_gib']:.2f} GiB | {joined} |")
    out_dir = os.environ.get("OUT")
    if out_dir:
        Path(out_dir, "bench_stage2_models.json").write_text(
            json.dumps({"info": info, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
