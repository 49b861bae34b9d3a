"""Attention dispatch: dense, variable-length (packed per-sample) and windowed attention.

All entry points compute plain ``softmax(Q K^T / sqrt(D)) V`` (no dropout, no causal mask).

Tensor conventions:
- dense: ``q`` ``[B, Lq, H, D]``, ``k``/``v`` ``[B, Lk, H, D]`` -> ``[B, Lq, H, D]``;
- packed (variable length): ``q``/``k``/``v`` ``[N, H, D]`` holding the tokens of all sequences back to back,
  described by a :class:`VarlenLayout` (sequence lengths, ``cu_seqlens`` and cached gather indices);
- windowed: packed tokens plus a :class:`WindowPartition` (a permutation to window order + a layout).

The backend is a runtime setting (:func:`set_attention_backend` or the :func:`attention_backend` context
manager). ``"sdpa"`` (``torch.nn.functional.scaled_dot_product_attention``) always works. The default,
``"auto"``, uses FlashAttention-3 (the optional ``flash_attn_3`` package built from the ``hopper/`` folder of
Dao-AILab/flash-attention, built by the operator; head dims the build lacks fall back) for large
fp16/bf16 calls on a Hopper GPU whose head dim the installed build has (:data:`FLASH_ATTENTION3_MIN_SCORES`),
and SDPA for everything else.
``"flash_attn3"``, ``"flash_attn"`` and ``"xformers"`` ask for one package: they are imported lazily the first
time they are used and only apply to fp16/bf16 CUDA tensors (anything else silently uses SDPA, which
computes the same function).

Layouts and partitions are built once per token set (one host sync each) and are meant to be reused across
all blocks and all sampler steps, so the hot path has no host synchronisation.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType

import torch
from torch.nn import functional

BACKENDS = ("auto", "sdpa", "flash_attn3", "flash_attn", "xformers")
#: backend -> (module to import, package to name when it is missing)
_PACKAGES = {
    "flash_attn3": ("flash_attn_interface", "flash_attn_3 (FlashAttention-3, built from source)"),
    "flash_attn": ("flash_attn", "flash_attn"),
    "xformers": ("xformers.ops", "xformers"),
}
_backend = "auto"
_modules: dict[str, ModuleType] = {}


def set_attention_backend(name: str) -> None:
    """Select the attention backend for subsequent calls: ``"auto"`` | ``"sdpa"`` | ``"flash_attn3"`` |
    ``"flash_attn"`` | ``"xformers"``.

    Raises ``ValueError`` for an unknown name and ``ImportError`` (with the package to install) when the
    optional package of the chosen backend is not importable.
    """
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name in _PACKAGES:
        _import_backend(name)
    _backend = name


def get_attention_backend() -> str:
    """The backend currently used by :func:`attention` and the packed/windowed variants."""
    return _backend


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Context manager form of :func:`set_attention_backend`; restores the previous backend on exit."""
    previous = _backend
    set_attention_backend(name)
    try:
        yield
    finally:
        set_attention_backend(previous)


def _import_backend(name: str) -> ModuleType:
    if name not in _modules:
        module_name, package = _PACKAGES[name]
        try:
            _modules[name] = importlib.import_module(module_name)
        except ImportError as exc:
            raise ImportError(
                f"attention backend {name!r} needs the optional package {package}; "
                "install it or use the default 'auto' / 'sdpa' backend"
            ) from exc
    return _modules[name]


@dataclass(frozen=True)
class FlashAttention3Build:
    """What the installed FlashAttention-3 build can run (its build flags)."""

    head_dims: frozenset[int]
    varlen: bool


def _probe_flash_attention3() -> FlashAttention3Build | None:
    """The installed FlashAttention-3 build, or ``None`` when the package is not importable."""
    if importlib.util.find_spec("flash_attn_interface") is None:
        return None
    try:
        _import_backend("flash_attn3")
        flags = importlib.import_module("flash_attn_config").CONFIG["build_flags"]
    except (ImportError, AttributeError, KeyError):
        return None
    dims = frozenset(d for d in (64, 96, 128, 192, 256) if not flags.get(f"FLASHATTENTION_DISABLE_HDIM{d}"))
    return FlashAttention3Build(dims, varlen=not flags.get("FLASHATTENTION_DISABLE_VARLEN"))


#: Probed once at import, so that code compiled with torch.compile reads a constant here (an import inside
#: the traced attention call would break the graph).
FLASH_ATTENTION3 = _probe_flash_attention3()
_hopper: dict[int, bool] = {}


def _is_hopper(index: int) -> bool:
    """CUDA device ``index`` is a Hopper GPU (compute capability 9.x)."""
    if index not in _hopper:
        _hopper[index] = torch.cuda.get_device_capability(index)[0] == 9
    return _hopper[index]


if FLASH_ATTENTION3 is not None:
    # A constant for torch.compile. Only where FlashAttention-3 is installed: the decorator imports
    # torch._dynamo, seconds of start-up that an eager service without FlashAttention-3 need not pay.
    _is_hopper = torch.compiler.assume_constant_result(_is_hopper)


#: Below this many score entries per call (batch x heads x query tokens x key tokens) cuDNN's fused SDPA
#: kernel beats FlashAttention-3 at head dim 64 on an H200 (bench/RESULTS.md, bench_attention.py fp16: FA3
#: is 12 % faster at 10 x 5 x 18432^2 and 9 % at 10 x 10 x 4608^2, 16-130 % slower on the smaller calls).
FLASH_ATTENTION3_MIN_SCORES = 10**9


def _flash_attention3_serves(q: torch.Tensor, k: torch.Tensor, varlen: bool) -> bool:
    """FlashAttention-3 is installed, was built for this head dim (and variable lengths when asked), the
    call is large enough for it to be the faster kernel and ``q`` lives on a Hopper GPU."""
    build = FLASH_ATTENTION3
    if build is None or q.shape[-1] not in build.head_dims or (varlen and not build.varlen):
        return False
    scores = q.shape[-2] * q.shape[-3] * k.shape[-3] * (1 if varlen else q.shape[0])
    if scores < FLASH_ATTENTION3_MIN_SCORES:
        return False
    return _is_hopper(q.device.index or 0)


def _half_precision_cuda(tensors: Sequence[torch.Tensor]) -> bool:
    """All tensors are fp16/bf16 on a CUDA device (what the fast kernels take)."""
    return all(t.is_cuda and t.dtype in (torch.float16, torch.bfloat16) for t in tensors)


def _fast_backend(*tensors: torch.Tensor, varlen: bool = False) -> str:
    """The configured backend if it can serve these tensors (``varlen``: packed sequences), else
    ``"sdpa"``."""
    if _backend == "sdpa" or not _half_precision_cuda(tensors):
        return "sdpa"
    if _backend in ("auto", "flash_attn3"):
        return "flash_attn3" if _flash_attention3_serves(tensors[0], tensors[1], varlen) else "sdpa"
    return _backend


def _check_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: bool) -> None:
    rank = 3 if packed else 4
    if q.dim() != rank or k.dim() != rank or v.dim() != rank:
        shape = "[N, H, D]" if packed else "[B, L, H, D]"
        raise ValueError(
            f"attention expects q, k, v shaped {shape}; "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[-2:] != k.shape[-2:] or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"attention heads/dims disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Dense multi-head attention.

    Args:
        q: ``[B, Lq, H, D]``; k, v: ``[B, Lk, H, D]`` (same dtype and device).
        key_mask: optional boolean ``[B, 1, 1, Lk]`` (``True`` = attend); padded keys are excluded.
    Returns:
        ``[B, Lq, H, D]``.
    """
    _check_heads(q, k, v, packed=False)
    backend = _fast_backend(q, k, v) if key_mask is None else "sdpa"
    if backend == "flash_attn3":
        return _import_backend("flash_attn3").flash_attn_func(q, k, v)
    if backend == "flash_attn":
        return _import_backend("flash_attn").flash_attn_func(q, k, v)
    if backend == "xformers":
        return _import_backend("xformers").memory_efficient_attention(q, k, v)
    out = functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=key_mask
    )
    return out.transpose(1, 2)


@dataclass(frozen=True, eq=False)
class VarlenLayout:
    """How ``N`` packed tokens split into ``S`` consecutive sequences (built once, reused everywhere).

    Attributes:
        seqlens: length of each sequence (host ints, sum ``N``).
        cu_seqlens: int32 ``[S + 1]`` cumulative lengths on the tokens' device.
        max_seqlen: ``max(seqlens)``.
        seq_index: long ``[N]``: which sequence each token belongs to.
        pad_index: long ``[S, max_seqlen]``: packed row of each padded slot (0 for padding), or ``None``
            when all sequences have the same length (padding is then a reshape).
        unpad_index: long ``[N]``: flat padded slot of each packed token (``None`` when uniform).
        key_mask: bool ``[S, 1, 1, max_seqlen]`` (``True`` = real token), ``None`` when uniform.
    """

    seqlens: tuple[int, ...]
    cu_seqlens: torch.Tensor
    max_seqlen: int
    seq_index: torch.Tensor
    pad_index: torch.Tensor | None
    unpad_index: torch.Tensor | None
    key_mask: torch.Tensor | None

    @classmethod
    def from_seqlens(cls, seqlens: Sequence[int], device: torch.device | str = "cpu") -> VarlenLayout:
        """Build the layout for sequences of the given (positive) lengths, stored on ``device``."""
        lens = tuple(int(n) for n in seqlens)
        if not lens or min(lens) <= 0:
            raise ValueError(f"variable-length attention needs at least one non-empty sequence; got {lens}")
        device = torch.device(device)
        lens_t = torch.tensor(lens, dtype=torch.long, device=device)
        cu = torch.zeros(len(lens) + 1, dtype=torch.int32, device=device)
        cu[1:] = torch.cumsum(lens_t, 0).to(torch.int32)
        max_len = max(lens)
        seq_index = torch.repeat_interleave(torch.arange(len(lens), device=device), lens_t)
        if len(set(lens)) == 1:
            return cls(lens, cu, max_len, seq_index, None, None, None)
        slot = torch.arange(max_len, device=device)
        valid = slot[None, :] < lens_t[:, None]  # [S, Lmax]
        pad_index = torch.where(valid, cu[:-1, None].long() + slot[None, :], 0)
        unpad_index = torch.nonzero(valid.reshape(-1)).squeeze(1)
        return cls(lens, cu, max_len, seq_index, pad_index, unpad_index, valid[:, None, None, :])

    @property
    def num_tokens(self) -> int:
        return sum(self.seqlens)

    @property
    def uniform(self) -> bool:
        return self.pad_index is None

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Packed ``[N, ...]`` -> padded ``[S, max_seqlen, ...]`` (padding rows hold arbitrary values)."""
        if self.pad_index is None:
            return x.reshape(len(self.seqlens), self.max_seqlen, *x.shape[1:])
        return x[self.pad_index]

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """Padded ``[S, max_seqlen, ...]`` -> packed ``[N, ...]``."""
        flat = x.reshape(-1, *x.shape[2:])
        return flat if self.unpad_index is None else flat[self.unpad_index]

    def broadcast(self, per_sequence: torch.Tensor) -> torch.Tensor:
        """Per-sequence values ``[S, ...]`` -> per-token values ``[N, ...]``."""
        return per_sequence[self.seq_index]

    def self_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention within each sequence. ``q``, ``k``, ``v``: ``[N, H, D]`` -> ``[N, H, D]``."""
        _check_heads(q, k, v, packed=True)
        backend = _fast_backend(q, k, v, varlen=True)
        if backend in ("flash_attn3", "flash_attn"):
            return _import_backend(backend).flash_attn_varlen_func(
                q, k, v, self.cu_seqlens, self.cu_seqlens, self.max_seqlen, self.max_seqlen
            )
        if backend == "xformers":
            xops = _import_backend("xformers")
            mask = xops.fmha.BlockDiagonalMask.from_seqlens(list(self.seqlens))
            return xops.memory_efficient_attention(q[None], k[None], v[None], attn_bias=mask)[0]
        out = attention(self.pad(q), self.pad(k), self.pad(v), key_mask=self.key_mask)
        return self.unpad(out)

    def cross_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Packed queries attend to their own sequence's dense context.

        Args:
            q: ``[N, H, D]`` packed queries; k, v: ``[S, Lk, H, D]`` one context per sequence.
        Returns:
            ``[N, H, D]``.
        """
        if k.shape[0] != len(self.seqlens):
            raise ValueError(f"cross attention: {len(self.seqlens)} sequences but context batch {k.shape[0]}")
        return self.unpad(attention(self.pad(q), k, v))


@dataclass(frozen=True, eq=False)
class WindowPartition:
    """Packed tokens grouped into windows: ``order`` sorts tokens by window, ``layout`` splits them.

    Attributes:
        order: long ``[N]``: token indices in window order (windows consecutive).
        inverse: long ``[N]``: position of each token in ``order``.
        layout: the :class:`VarlenLayout` of the windows (one sequence per non-empty window).
    """

    order: torch.Tensor
    inverse: torch.Tensor
    layout: VarlenLayout

    @classmethod
    def from_window_ids(cls, window_ids: torch.Tensor) -> WindowPartition:
        """Partition tokens by an integer window id per token (``[N]``, any non-negative ints)."""
        if window_ids.dim() != 1 or window_ids.numel() == 0:
            raise ValueError(f"window ids must be a non-empty 1-D tensor; got {tuple(window_ids.shape)}")
        order = torch.argsort(window_ids, stable=True)
        _, counts = torch.unique_consecutive(window_ids[order], return_counts=True)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        layout = VarlenLayout.from_seqlens(counts.tolist(), device=window_ids.device)
        return cls(order, inverse, layout)

    def self_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention restricted to each window. ``q``, ``k``, ``v``: ``[N, H, D]`` -> ``[N, H, D]``."""
        out = self.layout.self_attention(q[self.order], k[self.order], v[self.order])
        return out[self.inverse]
