"""The opt-in FP8 linear layers (synchuman.nn.fp8_linear): quantisation math, the matrix product against an
fp32 reference, the module swap, and the refusal on a device without FP8 (pipeline and service flag)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from synchuman.nn.fp8_linear import (
    E4M3_MAX,
    FP8Linear,
    FP8Unavailable,
    convert_linears_to_fp8,
    dequantize,
    fp8_support_problem,
    quantize,
)


def _cpu_scaled_mm() -> str | None:
    """Why this PyTorch cannot run ``torch._scaled_mm`` on the CPU (then the product tests skip), or None."""
    try:
        one = torch.ones((), dtype=torch.float32)
        a = torch.zeros(16, 16).to(torch.float8_e4m3fn)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
    except (AttributeError, RuntimeError, NotImplementedError) as exc:
        return f"torch._scaled_mm does not run on this CPU build ({exc}); the product is checked on a GPU"
    return None


CPU_SCALED_MM = _cpu_scaled_mm()
needs_scaled_mm = pytest.mark.skipif(CPU_SCALED_MM is not None, reason=str(CPU_SCALED_MM))


@pytest.mark.parametrize("granularity", ["row", "tensor"])
def test_quantize_round_trip_within_e4m3_rounding(granularity: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 96) * torch.logspace(-3, 2, 64)[:, None]  # rows of very different magnitudes
    quantized, scale = quantize(x, granularity)  # type: ignore[arg-type]
    assert quantized.dtype == torch.float8_e4m3fn
    assert scale.shape == ((64, 1) if granularity == "row" else ())
    assert scale.dtype == torch.float32
    # the largest magnitude (per row / overall) maps onto e4m3's largest finite value
    peaks = quantized.float().abs().amax(dim=-1) if granularity == "row" else quantized.float().abs().amax()
    assert torch.all(peaks == E4M3_MAX)
    back = dequantize(quantized, scale, torch.float32)
    # 3 mantissa bits: relative error <= 2^-4 for normal numbers, absolute <= 2^-10 * scale for subnormals
    bound = torch.maximum(x.abs() * 2**-4, scale.expand_as(x) * 2**-10)
    assert torch.all((back - x).abs() <= bound * 1.0001)
    if granularity == "row":  # every row keeps its own precision, however small
        assert float(((back - x).abs() / x.abs().amax(dim=-1, keepdim=True)).max()) < 2**-4


def test_quantize_zero_rows_stay_zero_and_finite() -> None:
    x = torch.zeros(4, 32)
    x[1] = 3.0
    quantized, scale = quantize(x, "row")
    assert torch.isfinite(scale).all()
    back = dequantize(quantized, scale, torch.float32)
    assert torch.equal(back, x)


@needs_scaled_mm
@pytest.mark.parametrize("granularity", ["row", "tensor"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_fp8_linear_matches_the_reference(granularity: str, dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    linear = nn.Linear(128, 64).to(dtype)
    fp8 = FP8Linear.from_linear(linear, granularity)  # type: ignore[arg-type]
    x = torch.randn(3, 5, 128).to(dtype)
    out = fp8(x)
    assert out.shape == (3, 5, 64) and out.dtype == dtype
    # the same product computed from the dequantised operands in fp32: only accumulation / output rounding
    qx, sx = quantize(x.reshape(-1, 128), granularity)  # type: ignore[arg-type]
    weight = dequantize(fp8.weight, fp8.weight_scale.t(), torch.float32)
    emulated = dequantize(qx, sx, torch.float32) @ weight.t() + linear.bias.detach().float()
    emulated = emulated.reshape(3, 5, 64)
    assert float((out.float() - emulated).abs().max()) < 1e-2 * float(emulated.abs().max())
    # against the unquantised fp32 layer: e4m3's rounding of both operands (~3-4 % of the output's norm)
    with torch.no_grad():
        exact = nn.functional.linear(x.float(), linear.weight.float(), linear.bias.float())
    relative = float((out.float() - exact).norm() / exact.norm())
    assert 1e-3 < relative < 0.06


def test_convert_swaps_only_large_aligned_linears() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Linear(64, 64),  # 4096 entries: converted
        nn.GELU(),
        nn.Sequential(nn.Linear(64, 32, bias=False)),  # 2048: converted (nested)
        nn.Linear(32, 16),  # 512: below the threshold, stays
        nn.Linear(16, 40),  # 640 entries but 40 % 16 != 0: stays
    )
    assert convert_linears_to_fp8(model, min_weight_elements=1024) == 2
    assert isinstance(model[0], FP8Linear) and isinstance(model[2][0], FP8Linear)
    assert type(model[3]) is nn.Linear and type(model[4]) is nn.Linear
    assert model[0].weight.dtype == torch.float8_e4m3fn and model[2][0].bias is None
    assert "weight" not in dict(model[0].named_parameters())  # the fp32 weight is gone
    assert convert_linears_to_fp8(model, min_weight_elements=1024) == 0  # idempotent


def test_convert_keeps_the_named_submodules() -> None:
    model = nn.Sequential(nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64)), nn.Linear(64, 64))
    assert convert_linears_to_fp8(model, min_weight_elements=1024, keep=("0",)) == 1
    assert [type(m) for m in (model[0][0], model[0][1], model[1])] == [nn.Linear, nn.Linear, FP8Linear]
    with pytest.raises(AttributeError):
        convert_linears_to_fp8(model, keep=("no_such_module",))


def test_fp8_input_is_refused_with_the_way_out() -> None:
    layer = FP8Linear.from_linear(nn.Linear(32, 32))
    with pytest.raises(TypeError, match="keep that layer unconverted"):
        layer(torch.zeros(2, 32).to(torch.float8_e4m3fn))


@needs_scaled_mm
def test_converted_model_stays_close() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))
    x = torch.randn(8, 64)
    with torch.no_grad():
        reference = model(x)
        convert_linears_to_fp8(model, min_weight_elements=1024)
        out = model(x)
    assert 0 < float((out - reference).norm() / reference.norm()) < 0.08


def test_cpu_has_no_fp8_and_says_what_to_do() -> None:
    problem = fp8_support_problem("cpu")
    assert problem is not None
    assert "compute capability >= 8.9" in problem and "Run without FP8" in problem


def test_pipeline_refuses_fp8_on_cpu(tiny_ckpts: Path) -> None:
    from synchuman.pipelines.stage1 import Stage1Pipeline
    from synchuman.pipelines.stage1_acceleration import use_fp8

    pipeline = Stage1Pipeline.from_pretrained(tiny_ckpts, "cpu", "fp16")
    before = [type(m) for m in pipeline.diffusion.modules()]
    with pytest.raises(FP8Unavailable, match="device is cpu"):
        use_fp8(pipeline)
    assert [type(m) for m in pipeline.diffusion.modules()] == before  # nothing converted


def test_service_flag_is_refused_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    from synchuman_cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "stage1", "--fp8", "--device", "cpu"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.rstrip().splitlines()[-1]
    assert error.startswith("synchuman serve stage1: error: --fp8: FP8 needs an NVIDIA GPU"), error
    assert "Run without FP8" in error


def test_pipeline_converts_every_layer_it_can(tiny_ckpts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every size converted (on the CPU, standing in for an FP8 GPU), one guided diffusion forward of the
    tiny model runs and stays near the half-precision one; fused-qkv projections and embeddings are kept."""
    import numpy as np

    import synchuman.nn.fp8_linear as fp8_linear
    from synchuman.pipelines.stage1 import NUM_VIEWS, Stage1Pipeline
    from synchuman.pipelines.stage1_acceleration import use_fp8

    pipeline = Stage1Pipeline.from_pretrained(tiny_ckpts, "cpu", "bf16")
    model = pipeline.diffusion
    size, grid = model.sample_size, model.grid
    generator = torch.Generator().manual_seed(4)
    cond = pipeline.dinov2.condition(np.full((518, 518, 3), 90, np.uint8)).to(torch.bfloat16)
    labels = torch.randn(4 * NUM_VIEWS, model.class_embedding.linear_1.in_features, generator=generator)
    args = (
        torch.randn(4 * NUM_VIEWS, 8, size, size, generator=generator).bfloat16(),
        torch.full((1,), 500.0),
        pipeline.prompt_embeds_cfg,
        labels.bfloat16(),
        torch.randn(2, pipeline.trellis_channels, grid, grid, grid, generator=generator).bfloat16(),
        torch.full((1,), 500.0),
        torch.cat([torch.zeros_like(cond), cond]),
    )
    with torch.inference_mode():
        reference = model(*args)
        monkeypatch.setattr(fp8_linear, "fp8_support_problem", lambda device: None)
        converted = use_fp8(pipeline, min_weight_elements=0)
        out = model(*args)
    assert converted > 0
    assert type(model.time_embedding.linear_1) is nn.Linear and type(model.t_embedder.mlp[0]) is nn.Linear
    fused = [m for m in model.modules() if callable(getattr(m, "qkv", None))]
    assert fused and all(type(m.to_q) is nn.Linear and type(m.to_v) is nn.Linear for m in fused)
    for a, b in zip(out, reference, strict=True):
        relative = float((a.float() - b.float()).norm() / b.float().norm())
        assert 0 < relative < 0.5, relative
