"""Stage-1 GPU bench: full-size models with random weights, the real pipeline code path.

Measures (one table, also written as markdown to ``--out``):
- the bf16 matrix-product rate of the GPU (8192^3), the reference for the loop's efficiency;
- the 50-step sampling loop with CFG (2D UNet batch 20 + 3D branch batch 2) per variant (eager;
  ``channels_last`` UNet; ``torch.compile``; Inductor max-autotune; the opt-in FP8 linear layers), ms/step,
  seconds, peak GPU memory, compile seconds; the decoded views of every variant against the first one's
  (same noise: max and mean absolute difference, 0-1 scale) and the occupied voxels that differ;
- FLOPs of one step (``torch.utils.flop_counter``), the attention share of them, the fraction of the measured
  matmul rate the loop achieves, and the share of GPU time in copy / cast kernels (profiler, 2 steps);
- VAE encode (2 distinct views) / sliced decode (10 views), DINOv2 518 conditioning, CLIP image embeddings;
- the whole ``Stage1Pipeline.run`` (50 steps) with its peak GPU memory.

Device command (carry ``.whl`` for diffusers)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/diffusers-*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; PYTHONUNBUFFERED=1 \
    python3 bench/bench_stage1.py --dtype bf16 --out $OUT/stage1.md

Issue 16 item 5 (fp16 compiled vs max-autotune vs FP8; see ``.devrun``'s script of that item)::

    python3 bench/bench_stage1.py --dtype fp16 --variants compile,compile_fp8,compile_autotune \
      --no-extras --kernels 12 --out $OUT/stage1.md

CPU smoke run (tiny configs): ``.venv/bin/python bench/bench_stage1.py --tiny --device cpu --steps 2``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synchuman.checkpoints import full_size, tiny_stage1  # noqa: E402
from synchuman.checkpoints.dinov2_config import REAL_DINOV2_CONFIG, TINY_DINOV2_CONFIG  # noqa: E402
from synchuman.checkpoints.loading import parse_dtype  # noqa: E402
from synchuman.checkpoints.tiny_common import randomize_  # noqa: E402
from synchuman.models.cross_space import SyncHuman_2D3DCrossSpaceDiffusion  # noqa: E402
from synchuman.models.dinov2 import DinoV2Encoder, DinoVisionTransformer  # noqa: E402
from synchuman.models.ss_decoder import SparseStructureDecoder  # noqa: E402
from synchuman.nn.attention import set_attention_backend  # noqa: E402
from synchuman.nn.fp8_linear import DEFAULT_MIN_WEIGHT_ELEMENTS, FP8Linear, fp8_support_problem  # noqa: E402
from synchuman.options import Stage1Options  # noqa: E402
from synchuman.pipelines import stage1_acceleration  # noqa: E402
from synchuman.pipelines.stage1 import NUM_VIEWS, Stage1Pipeline  # noqa: E402

GIB = 2**30
#: ``torch.compile`` mode of the ``_autotune`` variants: Inductor benchmarks GEMM / convolution templates and
#: kernel configs at compile time (no CUDA graphs, so it is comparable with the default mode).
AUTOTUNE_MODE = "max-autotune-no-cudagraphs"


def _sync(device: torch.device) -> None:
    """Wait for every visible GPU (the CFG-parallel variants use two)."""
    if device.type == "cuda":
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int = 1) -> tuple[float, Any]:
    """Median wall seconds of ``repeats`` calls (synchronised), and the last result."""
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        for index in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(index)


def matmul_rate(device: torch.device) -> float:
    """Measured bf16 TFLOP/s of an 8192^3 product (median of 10 after 3 warm-ups)."""
    if device.type != "cuda":
        return float("nan")
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    seconds, _ = timed(lambda: a @ b, device, repeats=10)
    return 2 * 8192**3 / seconds / 1e12


def build_pipeline(tiny: bool, device: torch.device, dtype: torch.dtype) -> Stage1Pipeline:
    """Every stage-1 model with random weights (full-size upstream configs unless ``tiny``)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    diffusion_cfg = tiny_stage1.TINY_DIFFUSION_CONFIG if tiny else full_size.DIFFUSION_2D3D_CONFIG
    vae_cfg = tiny_stage1.TINY_VAE_CONFIG if tiny else full_size.VAE_CONFIG
    clip_cfg = tiny_stage1.TINY_IMAGE_ENCODER_CONFIG if tiny else full_size.IMAGE_ENCODER_CONFIG
    ss_cfg = tiny_stage1.TINY_SS_DECODER_CONFIG if tiny else full_size.SS_DECODER_CONFIG
    dino_cfg = TINY_DINOV2_CONFIG if tiny else REAL_DINOV2_CONFIG
    torch.manual_seed(0)
    with torch.device(device):
        diffusion = SyncHuman_2D3DCrossSpaceDiffusion(
            **{k: v for k, v in diffusion_cfg.items() if not k.startswith("_")}
        )
        ss_decoder = SparseStructureDecoder(**ss_cfg["args"])
        dino = DinoVisionTransformer(**dino_cfg["args"])
        vae = AutoencoderKL.from_config({k: v for k, v in vae_cfg.items() if not k.startswith("_")})
        clip_args = {k: v for k, v in clip_cfg.items() if k not in ("architectures", "model_type")}
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_args))
    for seed, model in enumerate((diffusion, ss_decoder, dino)):
        randomize_(model, seed, device)
    full_size.calibrate_ss_occupancy_(ss_decoder, device)
    processor = CLIPImageProcessor(
        **{k: v for k, v in full_size.FEATURE_EXTRACTOR_CONFIG.items() if k != "image_processor_type"}
    )
    width = int(diffusion_cfg["cross_attention_dim"])
    prompts = torch.randn(
        2 * NUM_VIEWS, full_size.PROMPT_TOKENS, width, generator=torch.Generator().manual_seed(1)
    )
    models = [m.to(device=device, dtype=dtype).eval() for m in (diffusion, vae, clip, ss_decoder, dino)]
    diffusion, vae, clip, ss_decoder, dino = models
    return Stage1Pipeline(diffusion, vae, clip, processor, ss_decoder, DinoV2Encoder(dino), prompts)


def inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    framed = np.zeros((768, 768, 4), np.uint8)
    framed[60:740, 250:520, :3] = rng.integers(0, 256, (680, 270, 3), dtype=np.uint8)
    framed[60:740, 250:520, 3] = 255
    crop = rng.integers(0, 256, (518, 518, 3), dtype=np.uint8)
    return framed, crop


def step_flops(pipeline: Stage1Pipeline, args: tuple) -> tuple[float, float]:
    """(total FLOPs, attention FLOPs) of one diffusion forward."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        pipeline.diffusion(*args)
    per_op = counter.get_flop_counts().get("Global", {})
    attention = sum(v for k, v in per_op.items() if "attention" in str(k))
    return float(counter.get_total_flops()), float(attention)


def copy_share(pipeline: Stage1Pipeline, args: tuple, device: torch.device) -> float:
    """Share of device time in copy/cast kernels (``aten::copy_`` self time) over 2 forward passes."""
    if device.type != "cuda":
        return float("nan")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            pipeline.diffusion(*args)
        _sync(device)
    events = prof.key_averages()

    def device_time(e: Any) -> float:
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))

    total = sum(device_time(e) for e in events)
    copies = sum(device_time(e) for e in events if e.key in ("aten::copy_",))
    return copies / total if total else float("nan")


def fp8_granularities(device: torch.device, dtype: torch.dtype) -> list[str]:
    """Which :class:`FP8Linear` scalings run here (one eager call each on a [256, 1024] x [1024, 1024]
    product; e.g. row-wise scales with fp16 output need cuBLAS >= 12.9 on Hopper)."""
    if fp8_support_problem(device) is not None:
        return []
    working = []
    for granularity in ("row", "tensor"):
        layer = FP8Linear.from_linear(torch.nn.Linear(1024, 1024, device=device, dtype=dtype), granularity)
        try:
            with torch.inference_mode():
                layer(torch.randn(256, 1024, device=device, dtype=dtype))
            working.append(granularity)
        except RuntimeError as exc:
            print(f"FP8 {granularity}-wise scaling does not run here: {exc}", flush=True)
    return working


def view_difference(images: torch.Tensor, reference: torch.Tensor) -> str:
    """``max / mean`` absolute difference of decoded views ``[V, 3, H, W]`` in [0, 1]."""
    diff = (images.float() - reference.float()).abs()
    return f"{float(diff.max()):.4f} / {float(diff.mean()):.5f}"


KERNEL_CLASSES = (  # first match wins: inductor's fused kernels name the ops they fuse ("convolution")
    ("attention", ("flash", "fmha", "attn", "attention", "sdpa")),
    ("fused (triton)", ("triton",)),
    ("convolution", ("conv", "fprop", "dgrad", "implicit_gemm", "winograd")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "splitk")),
    ("normalisation", ("norm", "welford")),
    ("copy / cast / layout", ("copy", "cat", "transpose", "permute", "contiguous")),
)


def kernel_table(loop: Callable[[int], Any], steps: int, device: torch.device, top: int) -> list[str]:
    """GPU kernel time of ``steps`` loop steps by kernel class and the ``top`` kernels (ms per step)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        loop(steps)
        _sync(device)
    kernels = [
        (e.key, float(e.self_device_time_total) / 1e3 / steps, e.count // steps)
        for e in prof.key_averages()
        if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0
    ]
    total = sum(ms for _, ms, _ in kernels)
    by_class: dict[str, float] = {}
    for name, ms, _ in kernels:
        lowered = name.lower()
        label = next((c for c, keys in KERNEL_CLASSES if any(k in lowered for k in keys)), "other")
        by_class[label] = by_class.get(label, 0.0) + ms
    lines = [f"GPU kernel time per step: {total:.1f} ms"]
    lines += [
        f"  {c:24s} {ms:7.1f} ms  {ms / total:4.0%}"
        for c, ms in sorted(by_class.items(), key=lambda x: -x[1])
    ]
    lines.append(f"  top {top} kernels (ms per step, launches per step):")
    for name, ms, count in sorted(kernels, key=lambda x: -x[1])[:top]:
        lines.append(f"  {ms:7.2f} ms {count:5d}x  {name[:150]}")
    return lines


def _label(name: str) -> str:
    """``down_blocks.0.attentions.1.transformer_blocks.0.ff`` -> ``down_blocks.0.attentions.ff``."""
    parts = name.split(".")
    if parts[0] == "blocks":
        return "3D blocks (all 24)"
    out: list[str] = []
    for part in parts:
        if part.isdigit() and out and out[-1] in ("resnets", "attentions", "transformer_blocks"):
            continue
        if part == "transformer_blocks":
            continue
        out.append(part)
    return ".".join(out)


def module_breakdown(
    model: torch.nn.Module, args: tuple, device: torch.device, repeats: int = 3
) -> list[str]:
    """Eager GPU time per module group of one diffusion forward (CUDA events around each module; groups
    nest, so a block's row includes its parts). ms per forward, median of ``repeats``."""
    from synchuman.models.mv_unet import MVTransformerBlock

    records: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
    handles: list[Any] = []

    def timer(label: str) -> tuple[Callable[..., None], Callable[..., None]]:
        pending: list[torch.cuda.Event] = []

        def pre(*_: Any) -> None:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            pending.append(event)

        def post(*_: Any) -> None:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            records.append((label, pending.pop(), event))

        return pre, post

    def wrap_method(block: torch.nn.Module, method: str, label: str) -> None:
        pre, post = timer(label)
        original = getattr(block, method)

        def wrapped(*a: Any, **kw: Any) -> Any:
            pre()
            out = original(*a, **kw)
            post()
            return out

        setattr(block, method, wrapped)
        handles.append((block, method))

    for name, module in model.named_modules():
        depth = name.count(".")
        keep = (
            (depth == 0 and name)
            or (
                depth == 1
                and name.split(".")[0]
                in ("down_blocks", "up_blocks", "blocks", "dual_CrossAttblocks_SS", "dual_CrossAttblocks_MV")
            )
            or (depth == 2 and name.split(".")[-1] in ("downsamplers", "upsamplers"))
            or (depth == 3 and name.split(".")[-2] in ("resnets", "attentions"))
            or name.endswith(("transformer_blocks.0.attn2", "transformer_blocks.0.ff"))
        )
        if keep and not isinstance(module, torch.nn.ModuleList):
            pre, post = timer(_label(name))
            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))
        if isinstance(module, MVTransformerBlock):
            level = _label(name)
            wrap_method(module, "cross_domain_attention", f"{level}.cross_domain_attention")
            wrap_method(module, "rowwise_attention", f"{level}.rowwise_attention")
    totals: dict[str, list[float]] = {}
    try:
        with torch.inference_mode():
            model(*args)  # warm-up
            for _ in range(repeats):
                records.clear()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(*args)
                end.record()
                torch.cuda.synchronize(device)
                per: dict[str, float] = {"forward (all)": start.elapsed_time(end)}
                for label, a, b in records:
                    per[label] = per.get(label, 0.0) + a.elapsed_time(b)
                for label, ms in per.items():
                    totals.setdefault(label, []).append(ms)
    finally:
        for handle in handles:
            if isinstance(handle, tuple):
                delattr(*handle)
            else:
                handle.remove()
    lines = [f"eager GPU time per forward by module group (ms, median of {repeats}):"]
    lines += [f"  {statistics.median(v):8.2f}  {label}" for label, v in totals.items()]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16", help="bf16 | fp16 | fp32")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--tiny", action="store_true", help="tiny configs (CPU smoke run)")
    parser.add_argument(
        "--variants",
        default="eager,compile",
        help="comma list of eager | channels_last | compile | compile_cl | compile_graphs | eager_cfg2 | "
        "compile_cfg2 | compile_graphs_cfg2 (_cfg2: the unconditional CFG half on --cfg-device; _graphs: "
        "CUDA graphs; channels_last / _cl: the UNet's convolutions in channels-last format from then on; "
        "a trailing _sdpa: attention through SDPA instead of the default backend, FlashAttention-3 when "
        "installed); compile_autotune: Inductor mode max-autotune-no-cudagraphs; compile_fp8 / eager_fp8 "
        "(one GPU): a copy of the model with FP8 linear layers (row-wise scales where they run, else "
        "tensor-wise), compile_fp8t: tensor-wise scales",
    )
    parser.add_argument("--cfg-device", default=None, help="second device of the _cfg2 variants, e.g. cuda:1")
    parser.add_argument(
        "--budget", type=float, default=240.0, help="skip remaining variants after this many s"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--kernels", type=int, default=0, help="print the top N kernels of each variant")
    parser.add_argument(
        "--cudnn-benchmark", action="store_true", help="let cuDNN time its convolution algorithms"
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="print eager GPU time per module group of one forward"
    )
    parser.add_argument(
        "--fp8-min-elements",
        type=int,
        default=DEFAULT_MIN_WEIGHT_ELEMENTS,
        help="FP8 variants: convert Linear layers with at least this many weight entries",
    )
    parser.add_argument(
        "--no-extras",
        dest="extras",
        action="store_false",
        help="only the loop variants: skip FLOPs, copy share, VAE decode slices and the whole run",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    device, dtype = torch.device(args.device), parse_dtype(args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    rows: list[tuple[str, str]] = []
    notes: list[str] = []  # kernel tables, written below the table

    def write_out() -> None:  # after every row: a run stopped by a timeout still leaves its rows
        if args.out is not None:
            lines = ["| measurement | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
            if notes:
                lines += ["", "```", *notes, "```"]
            args.out.write_text("\n".join(lines) + "\n")

    def row(name: str, value: str) -> None:
        rows.append((name, value))
        print(f"{name:58s} {value}", flush=True)
        write_out()

    if device.type == "cuda":
        row("device", torch.cuda.get_device_name(device))
    rate = matmul_rate(device)
    row("bf16 matmul rate 8192^3 (TFLOP/s)", f"{rate:.0f}")
    seconds, pipeline = timed(lambda: build_pipeline(args.tiny, device, dtype), device)
    row(f"build random models ({'tiny' if args.tiny else 'full size'}, {args.dtype}) (s)", f"{seconds:.1f}")
    framed, crop = inputs()

    with torch.inference_mode():
        generator = torch.Generator().manual_seed(0)
        views = pipeline._views(framed)
        pipeline._image_conditions(views, generator)  # warm-up
        t_clip, _ = timed(
            lambda: pipeline.image_encoder(
                pipeline.image_processor(
                    images=list((views * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()),
                    return_tensors="pt",
                ).pixel_values.to(device, dtype)
            ),
            device,
            5,
        )
        row("CLIP image embeddings, 2 views incl. preprocessing (ms)", f"{1e3 * t_clip:.1f}")
        vae_in = views.to(device, dtype) * 2 - 1
        reset_peak(device)
        t_enc, _ = timed(lambda: pipeline.vae.encode(vae_in).latent_dist.mode(), device, 3)
        row(
            "VAE encode, 2 distinct views 768^2 (ms) / peak GiB",
            f"{1e3 * t_enc:.1f} / {peak_gib(device):.2f}",
        )
        class_labels, image_latents = pipeline._image_conditions(views, generator)
        pipeline.dinov2.condition(crop)
        t_dino, cond = timed(lambda: pipeline.dinov2.condition(crop), device, 5)
        row("DINOv2 ViT-L/14-reg 518^2 conditioning (ms)", f"{1e3 * t_dino:.1f}")
        size, grid = pipeline.diffusion.sample_size, pipeline.diffusion.grid
        noise = torch.randn(2 * NUM_VIEWS, 4, size, size, device=device)
        structure = torch.randn(1, 8, grid, grid, grid, device=device)
        cond = cond.to(dtype)

        def loop(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
            return pipeline.sample(noise, structure, class_labels, image_latents, cond, steps, 3.0)

        normal, color = noise.to(dtype).chunk(2)
        sample = torch.cat([torch.cat([normal, normal, color, color]), image_latents], dim=1)
        step_args = (
            sample,
            500.0,
            pipeline.prompt_embeds_cfg,
            class_labels,
            torch.cat([structure, structure]).to(dtype),
            torch.full((1,), 500.0, device=device),
            torch.cat([torch.zeros_like(cond), cond]),
        )
        if args.breakdown and device.type == "cuda":
            print("\n".join(module_breakdown(pipeline.diffusion, step_args, device)), flush=True)

        best: tuple[str, float, Any, Any, Any] | None = None
        base, replica, first_latents = pipeline.diffusion, None, None
        first_views: torch.Tensor | None = None
        first_voxels: torch.Tensor | None = None
        compiled_before = False
        variants = [v for v in args.variants.split(",") if v]
        wants_fp8 = any("fp8" in v for v in variants)
        granularities = fp8_granularities(device, dtype) if wants_fp8 else []
        if wants_fp8:
            problem = fp8_support_problem(device)
            row("FP8 scalings that run here", ", ".join(granularities) or f"none ({problem})")
        torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
        for variant in variants:
            if time.perf_counter() - started > args.budget:
                row(f"loop [{variant}]", "skipped (time budget)")
                continue
            print(f"-- variant {variant} from {time.perf_counter() - started:.0f} s", flush=True)
            pipeline.diffusion, pipeline.cfg_diffusion, pipeline.cfg_device = base, None, None
            if "fp8" in variant:
                if "cfg2" in variant:
                    raise SystemExit(f"variant {variant}: the FP8 variants are one-GPU only")
                wanted = "tensor" if variant.endswith("fp8t") else "row"
                granularity = wanted if wanted in granularities else next(iter(granularities), None)
                if granularity is None:
                    row(f"loop [{variant}]", "skipped: no FP8 scaling runs on this device")
                    continue
                pipeline.diffusion = copy.deepcopy(base)  # the fp16 model stays for the other variants
                converted = stage1_acceleration.use_fp8(pipeline, args.fp8_min_elements, granularity)
                row(f"[{variant}] FP8 linear layers ({granularity}-wise scales)", str(converted))
            if "cfg2" in variant:
                if args.cfg_device is None:
                    raise SystemExit(f"variant {variant} needs --cfg-device")
                if replica is None:
                    stage1_acceleration.enable_cfg_parallel(pipeline, args.cfg_device)
                    replica = pipeline.cfg_diffusion
                pipeline.cfg_diffusion, pipeline.cfg_device = replica, torch.device(args.cfg_device)
            if variant == "channels_last" or variant.endswith("_cl"):
                if compiled_before:  # its graphs assert the old weight strides (seen on the H200)
                    row(f"loop [{variant}]", "skipped: list channels-last variants before compiled ones")
                    continue
                for module in base.modules():
                    if isinstance(module, torch.nn.Conv2d):
                        module.to(memory_format=torch.channels_last)
            # "_sdpa": attention through SDPA even where the default ("auto") would take FlashAttention-3
            set_attention_backend("sdpa" if variant.endswith("_sdpa") else "auto")
            if "autotune" in variant:
                pipeline.diffusion = torch.compile(pipeline.diffusion, mode=AUTOTUNE_MODE)
            else:
                stage1_acceleration.accelerate(
                    pipeline, compile_model="compile" in variant, cuda_graphs="graphs" in variant
                )
            compiled_before = compiled_before or "compile" in variant
            try:
                t_warm, _ = timed(lambda: loop(2), device)
                reset_peak(device)
                t_loop, (lat, struct) = timed(lambda: loop(args.steps), device)
            except Exception as exc:  # a backend refusing a shape: report and go on
                row(f"loop [{variant}]", f"failed: {type(exc).__name__}: {str(exc)[:120]}")
                continue
            views = pipeline.decode_views(lat)
            voxels = pipeline.ss_decoder(struct)[0, 0] > 0
            finite = bool(torch.isfinite(lat).all())
            peaks = f"{peak_gib(device):.2f}"
            if pipeline.cfg_device is not None:
                peaks += f" + {peak_gib(pipeline.cfg_device):.2f} ({pipeline.cfg_device})"
            if first_latents is None:
                first_latents, first_views, first_voxels, agreement = lat, views, voxels, ""
            else:
                rel = float((lat - first_latents).norm() / first_latents.norm())
                agreement = f"  (final latents vs the first variant: rel. diff {rel:.1e})"
                row(
                    f"[{variant}] decoded views vs [{variants[0]}]: max / mean abs diff (0-1 scale)",
                    view_difference(views, first_views),
                )
                differing = int((voxels != first_voxels).sum())
                row(
                    f"[{variant}] occupied voxels vs [{variants[0]}]: differing / total",
                    f"{differing} / {int(first_voxels.sum())}",
                )
            row(
                f"loop [{variant}] {args.steps} steps (s) / ms per step / peak GiB",
                f"{t_loop:.2f} / {1e3 * t_loop / args.steps:.1f} / {peaks}"
                + ("" if finite else "  NON-FINITE")
                + agreement,
            )
            if "compile" in variant:
                row(f"[{variant}] warm-up (2 steps incl. compilation) (s)", f"{t_warm:.1f}")
            if args.kernels and device.type == "cuda":
                table = [f"[{variant}]", *kernel_table(loop, 2, device, args.kernels)]
                print("\n".join(table), flush=True)
                notes.extend(table)
                write_out()
            if best is None or t_loop < best[1]:
                best = (variant, t_loop, pipeline.diffusion, pipeline.cfg_diffusion, pipeline.cfg_device)
        pipeline.diffusion, pipeline.cfg_diffusion, pipeline.cfg_device = base, None, None
        if best is None:
            raise SystemExit("no loop variant ran")
        if not args.extras:
            return 0
        flops, attn_flops = step_flops(pipeline, step_args)
        best_name, t_best = best[0], best[1]
        row("FLOPs of one step (TFLOP) / attention share", f"{flops / 1e12:.1f} / {attn_flops / flops:.0%}")
        gpus = 2 if "cfg2" in best_name else 1
        achieved = flops * args.steps / t_best / 1e12
        row(
            f"achieved rate of the loop [{best_name}] (TFLOP/s, all GPUs) / per GPU / of matmul rate",
            f"{achieved:.0f} / {achieved / gpus:.0f} / {achieved / gpus / rate:.0%}",
        )
        row("copy/cast kernels share of GPU time [eager]", f"{copy_share(pipeline, step_args, device):.0%}")
        latents = torch.randn(2 * NUM_VIEWS, 4, size, size, device=device)
        for slice_size in (2, 5):
            pipeline.vae_slice = slice_size
            reset_peak(device)
            t_dec, _ = timed(lambda: pipeline.decode_views(latents), device, 2)
            row(
                f"VAE decode 10 views, slices of {slice_size} (ms) / peak GiB",
                f"{1e3 * t_dec:.0f} / {peak_gib(device):.2f}",
            )
        pipeline.vae_slice = 2

    pipeline.diffusion, pipeline.cfg_diffusion, pipeline.cfg_device = best[2:]
    reset_peak(device)
    t_run, out = timed(lambda: pipeline.run(framed, crop, Stage1Options(seed=43, steps=args.steps)), device)
    phases = ", ".join(f"{k} {v:.2f}" for k, v in out.timings.items())
    row(
        f"whole Stage1Pipeline.run [{best_name}], {args.steps} steps (s) / peak GiB",
        f"{t_run:.2f} / {peak_gib(device):.2f}  ({phases}; {len(out.coords)} voxels)",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
