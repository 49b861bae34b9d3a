"""Opt-in FP8 (e4m3) matrix products for the large ``nn.Linear`` layers of a half-precision model.

:func:`convert_linears_to_fp8` replaces every ``nn.Linear`` whose weight has at least
``min_weight_elements`` entries (and whose sizes are multiples of 16, as FP8 tensor cores need) by an
:class:`FP8Linear`: the weight is quantised once, at conversion, to ``float8_e4m3fn`` with one fp32 scale per
output row; every call quantises its input on the fly (one fp32 scale per input row, or one for the whole
input) and multiplies with ``torch._scaled_mm``, which accumulates in fp32 and writes the model's dtype. The
smaller layers stay in fp16/bf16 (their quantisation costs more than their product saves).

The result differs from the fp16 model (e4m3 keeps 3 mantissa bits: a relative rounding error of up to
2^-4 per element before accumulation), so it is never the default: callers opt in and report the
difference of their outputs. FP8 tensor cores need CUDA compute capability 8.9 or newer (Ada, Hopper,
Blackwell); :func:`fp8_support_problem` says why a device cannot, :func:`require_fp8` refuses it.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

#: Quantised type: 4 exponent bits, 3 mantissa bits, finite range +-448.
E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)
#: Layers with fewer weight entries stay in half precision (1024 x 1024).
DEFAULT_MIN_WEIGHT_ELEMENTS = 1024 * 1024
#: Compute capability of the first NVIDIA GPUs with FP8 tensor cores (Ada).
MIN_CAPABILITY = (8, 9)
#: ``row``: one activation scale per input row (token), one weight scale per output row; ``tensor``: one
#: scale for the whole input and one for the whole weight.
Granularity = Literal["row", "tensor"]
_TINY = 1e-12  # floor of an amax, so an all-zero row gets a finite scale


class FP8Unavailable(RuntimeError):
    """The device or the PyTorch build cannot run FP8 matrix products."""


def fp8_support_problem(device: str | torch.device) -> str | None:
    """Why ``device`` cannot run :class:`FP8Linear` (a message naming the way out), or ``None`` if it can."""
    device = torch.device(device)
    if not hasattr(torch, "_scaled_mm"):
        return f"this PyTorch ({torch.__version__}) has no FP8 matrix product (torch._scaled_mm); omit FP8"
    if device.type != "cuda":
        return (
            "FP8 needs an NVIDIA GPU with FP8 tensor cores (compute capability >= 8.9: Ada, Hopper, newer); "
            f"the device is {device}. Run without FP8 (fp16 is the default) or on such a GPU"
        )
    if not torch.cuda.is_available():
        return f"FP8 needs a CUDA GPU but CUDA is not available here (device {device}); run without FP8"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return (
            f"FP8 needs compute capability >= 8.9 (Ada, Hopper or newer); {device} is {name} with "
            f"{capability[0]}.{capability[1]}. Run without FP8 (fp16 is the default)"
        )
    return None


def require_fp8(device: str | torch.device) -> None:
    """Raise :class:`FP8Unavailable` with :func:`fp8_support_problem`'s message unless ``device`` can."""
    problem = fp8_support_problem(device)
    if problem is not None:
        raise FP8Unavailable(problem)


def quantize(x: torch.Tensor, granularity: Granularity) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``[M, K]`` -> (e4m3 ``[M, K]``, fp32 scale) with ``x ~= q * scale``: scale ``[M, 1]`` (``row``)
    or ``[]`` (``tensor``), chosen so each row's (the tensor's) largest magnitude maps to 448."""
    magnitude = x.abs()
    amax = magnitude.amax(dim=-1, keepdim=True) if granularity == "row" else magnitude.amax()
    scale = amax.float().clamp(min=_TINY) / E4M3_MAX
    quantized = (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return quantized, scale


def dequantize(quantized: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`quantize` (up to its rounding): ``quantized * scale`` in ``dtype``."""
    return (quantized.float() * scale).to(dtype)


class FP8Linear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored as e4m3 + fp32 scales and ``x`` quantised per call.

    Input ``[..., in_features]`` (fp16/bf16/fp32) -> output ``[..., out_features]`` in the input's dtype.
    Build with :meth:`from_linear`. Buffers: ``weight`` e4m3 ``[out, in]``; ``weight_scale`` fp32 ``[1, out]``
    (``row``) or ``[]`` (``tensor``); ``bias`` ``[out]`` in the original dtype or ``None``.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        granularity: Granularity,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.granularity = granularity
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, granularity: Granularity = "row") -> FP8Linear:
        """Quantise ``linear``'s weight (per output row for ``row``, as a whole for ``tensor``)."""
        if granularity not in ("row", "tensor"):
            raise ValueError(f"granularity must be 'row' or 'tensor'; got {granularity!r}")
        with torch.no_grad():
            weight, scale = quantize(linear.weight, granularity)
            bias = None if linear.bias is None else linear.bias.detach().clone()
        scale = scale.reshape(1, -1) if granularity == "row" else scale
        return cls(weight, scale, bias, granularity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise TypeError(
                f"FP8Linear takes fp16/bf16/fp32 input, got {x.dtype}: a caller cast its input to the layer's"
                " weight dtype; keep that layer unconverted (convert_linears_to_fp8's keep)"
            )
        rows = x.reshape(-1, self.in_features)
        quantized, scale = quantize(rows, self.granularity)
        out = torch._scaled_mm(
            quantized,
            self.weight.t(),  # column-major [in, out], as the FP8 kernels need
            scale_a=scale,
            scale_b=self.weight_scale,
            out_dtype=x.dtype,
            use_fast_accum=True,
        )
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, granularity={self.granularity}"
        )


def fp8_eligible(linear: nn.Module, min_weight_elements: int = DEFAULT_MIN_WEIGHT_ELEMENTS) -> bool:
    """Whether :func:`convert_linears_to_fp8` converts ``linear``: a plain ``nn.Linear`` with at least
    ``min_weight_elements`` weight entries and both sizes multiples of 16."""
    if type(linear) is not nn.Linear:
        return False
    out_features, in_features = linear.weight.shape
    return (
        in_features * out_features >= min_weight_elements and in_features % 16 == 0 and out_features % 16 == 0
    )


def convert_linears_to_fp8(
    model: nn.Module,
    min_weight_elements: int = DEFAULT_MIN_WEIGHT_ELEMENTS,
    granularity: Granularity = "row",
    keep: tuple[str, ...] = (),
) -> int:
    """Replace ``model``'s eligible ``nn.Linear`` layers (:func:`fp8_eligible`) by :class:`FP8Linear`, in
    place (the half-precision weights of those layers are dropped), except those inside the submodules named
    in ``keep`` (e.g. ``"time_embedding"``). Returns how many were replaced. Call after the model has its
    final device and dtype: a later ``model.to(dtype)`` would cast the e4m3 buffers too."""
    kept = {id(m) for name in keep for m in model.get_submodule(name).modules()}
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if id(child) not in kept and fp8_eligible(child, min_weight_elements)
    ]
    for parent, name, child in swaps:
        setattr(parent, name, FP8Linear.from_linear(child, granularity))
    return len(swaps)
