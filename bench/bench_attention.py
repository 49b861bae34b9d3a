"""Attention kernels at the stage-1 model's shapes: which SDPA backend is fastest, and at what rate.

For every attention call of one stage-1 step (full-size config: UNet levels 96/48/24/12 px with 5/10/20/20
heads of 64 channels; batch 20 = CFG x 2 domains x 5 views; 3D branch 16^3 tokens, 16 heads of 64), times
``scaled_dot_product_attention`` restricted to each backend (flash, cuDNN, memory-efficient), on the layout
the model passes (``[B, L, H, D]`` memory transposed to ``[B, H, L, D]``, a strided view) and on contiguous
``[B, H, L, D]``. Prints ms per call, TFLOP/s, and the per-step total of each backend (calls x time).

When FlashAttention-3 is installed (built by the operator), a ``fa3`` column times its
``flash_attn_func`` on the model's ``[B, L, H, D]`` tensors as they are (what ``synchuman.nn.attention``
calls).

Device command: ``python3 bench/bench_attention.py [--dtype fp16]`` (no extra packages). CPU check: ``--device
cpu --tiny``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable

import torch
from torch.nn import functional
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}

# (name, batch, query tokens, key tokens, heads, calls per step): full-size stage-1 step, head dim 64
SHAPES = [
    ("cross-domain 96px", 10, 2 * 96 * 96, 2 * 96 * 96, 5, 5),
    ("cross-domain 48px", 10, 2 * 48 * 48, 2 * 48 * 48, 10, 5),
    ("cross-domain 24px", 10, 2 * 24 * 24, 2 * 24 * 24, 20, 5),
    ("cross-domain 12px (mid)", 10, 2 * 12 * 12, 2 * 12 * 12, 20, 1),
    ("row-wise 96px", 2 * 96, 4 * 96, 4 * 96, 5, 5),
    ("prompt cross-attn 96px", 20, 96 * 96, 77, 5, 5),
    ("3D self-attn 16^3", 2, 4096, 4096, 16, 24),
    ("3D cross-attn to DINOv2", 2, 4096, 1374, 16, 24),
]


def flash_attention3() -> Callable[..., torch.Tensor] | None:
    """FlashAttention-3's ``flash_attn_func`` when installed (None otherwise)."""
    try:
        from flash_attn_interface import flash_attn_func
    except ImportError:
        return None
    return flash_attn_func


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls timed with device events (after 2 warm-ups)."""
    for _ in range(2):
        fn()
    if device.type != "cuda":
        import time

        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - start))
        return statistics.median(times)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="1/16 of the tokens (CPU check)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"), help="on CUDA (CPU: fp32)")
    args = parser.parse_args()
    device = torch.device(args.device)
    half = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    dtype = half if device.type == "cuda" else torch.float32
    backends = BACKENDS if device.type == "cuda" else {"math": SDPBackend.MATH}
    totals = {f"{b} {lay}": 0.0 for b in backends for lay in ("strided", "contiguous")}
    fa3 = flash_attention3() if device.type == "cuda" else None
    if fa3 is not None:
        totals["fa3 [B,L,H,D]"] = 0.0
    header = f"{'shape':26s} {'B':>4s} {'Lq':>6s} {'Lk':>6s} {'H':>3s} {'calls':>5s} | " + " | ".join(
        f"{k:>22s}" for k in totals
    )
    print(header)
    for name, batch, lq, lk, heads, calls in SHAPES:
        if args.tiny:
            lq, lk = max(16, lq // 16), max(16, lk // 16)
        flops = 4 * batch * heads * lq * lk * 64
        gen = torch.Generator(device=device).manual_seed(0)
        q = torch.randn(batch, lq, heads, 64, device=device, dtype=dtype, generator=gen)
        k = torch.randn(batch, lk, heads, 64, device=device, dtype=dtype, generator=gen)
        v = torch.randn(batch, lk, heads, 64, device=device, dtype=dtype, generator=gen)
        layouts = {
            "strided": (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)),
            "contiguous": tuple(t.transpose(1, 2).contiguous() for t in (q, k, v)),
        }
        reference = functional.scaled_dot_product_attention(*(t.float() for t in layouts["contiguous"]))
        cells = []
        for backend, kind in backends.items():
            for layout, qkv in layouts.items():
                key = f"{backend} {layout}"
                try:
                    with sdpa_kernel([kind]):
                        out = functional.scaled_dot_product_attention(*qkv)
                        err = float((out.float() - reference).norm() / reference.norm())
                        ms = median_ms(
                            lambda qkv=qkv: functional.scaled_dot_product_attention(*qkv),
                            device,
                            args.repeats,
                        )
                except RuntimeError as exc:
                    cells.append(f"{'refused':>22s}")
                    totals[key] = float("nan")
                    print(f"  ({key} refused {name}: {str(exc).splitlines()[0][:100]})", file=sys.stderr)
                    continue
                totals[key] += calls * ms
                cells.append(f"{ms:8.3f}ms {flops / ms / 1e9:4.0f}TF {err:.0e}".rjust(22))
        if fa3 is not None:
            out = fa3(q, k, v).transpose(1, 2)
            err = float((out.float() - reference).norm() / reference.norm())
            ms = median_ms(lambda qkv=(q, k, v): fa3(*qkv), device, args.repeats)
            totals["fa3 [B,L,H,D]"] += calls * ms
            cells.append(f"{ms:8.3f}ms {flops / ms / 1e9:4.0f}TF {err:.0e}".rjust(22))
        print(
            f"{name:26s} {batch:4d} {lq:6d} {lk:6d} {heads:3d} {calls:5d} | " + " | ".join(cells), flush=True
        )
    print("per-step attention time (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in totals.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
