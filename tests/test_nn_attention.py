"""Attention dispatch: packed/windowed attention equals per-sequence dense attention; backend switching."""

from __future__ import annotations

import sys

import pytest
import torch

from synchuman.nn.attention import (
    VarlenLayout,
    WindowPartition,
    attention,
    attention_backend,
    get_attention_backend,
    set_attention_backend,
)
from synchuman.nn.transformer import ModulatedTransformerCrossBlock


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    w = torch.softmax(q.transpose(0, 1) @ k.transpose(0, 1).transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
    return (w @ v.transpose(0, 1)).transpose(0, 1)


def test_varlen_matches_per_sequence_reference() -> None:
    torch.manual_seed(0)
    lens = [5, 1, 7, 3]
    q, k, v = (torch.randn(sum(lens), 2, 8) for _ in range(3))
    layout = VarlenLayout.from_seqlens(lens)
    out = layout.self_attention(q, k, v)
    ref = torch.cat(
        [_reference(a, b, c) for a, b, c in zip(q.split(lens), k.split(lens), v.split(lens), strict=True)]
    )
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_cross_attention_per_item_context() -> None:
    torch.manual_seed(1)
    lens = [4, 6]
    q = torch.randn(10, 2, 4)
    k, v = torch.randn(2, 3, 2, 4), torch.randn(2, 3, 2, 4)
    out = VarlenLayout.from_seqlens(lens).cross_attention(q, k, v)
    ref = torch.cat([_reference(q[:4], k[0], v[0]), _reference(q[4:], k[1], v[1])])
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_windowed_attention_stays_in_windows() -> None:
    torch.manual_seed(2)
    ids = torch.tensor([3, 1, 3, 0, 1, 1, 3, 0, 2, 2, 2, 0])
    q, k, v = (torch.randn(ids.numel(), 2, 4) for _ in range(3))
    out = WindowPartition.from_window_ids(ids).self_attention(q, k, v)
    for w in ids.unique():
        m = ids == w
        torch.testing.assert_close(out[m], _reference(q[m], k[m], v[m]), atol=1e-6, rtol=1e-5)


def test_dense_and_packed_block_agree() -> None:
    torch.manual_seed(3)
    block = ModulatedTransformerCrossBlock(16, 8, 2, qk_rms_norm=True).eval()
    mod, ctx = torch.randn(2, 16), torch.randn(2, 3, 8)
    x = torch.randn(8, 16)  # items of 5 and 3 tokens (variable-length path)
    packed = block(x, mod, ctx, layout=VarlenLayout.from_seqlens([5, 3]))
    per_item = [block(x[None, :5], mod[:1], ctx[:1])[0], block(x[None, 5:], mod[1:], ctx[1:])[0]]
    torch.testing.assert_close(packed, torch.cat(per_item), atol=1e-5, rtol=1e-5)
    uniform = block(x[:6], mod, ctx, layout=VarlenLayout.from_seqlens([3, 3]))  # equal lengths: dense path
    torch.testing.assert_close(uniform, block(x[:6].reshape(2, 3, 16), mod, ctx).reshape(6, 16))


def test_backend_is_a_runtime_setting() -> None:
    assert get_attention_backend() == "auto"
    with pytest.raises(ValueError, match="unknown attention backend"):
        set_attention_backend("magic")
    with attention_backend("sdpa"):
        q = torch.randn(1, 3, 1, 4)
        assert attention(q, q, q).shape == (1, 3, 1, 4)
    assert get_attention_backend() == "auto"


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match=r"\[B, L, H, D\]"):
        attention(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="non-empty"):
        VarlenLayout.from_seqlens([3, 0])


class FakeFlashAttention3:
    """Stand-in for FlashAttention-3's ``flash_attn_interface`` (same call signatures, SDPA inside), recording
    which entry point ran."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def flash_attn_func(self, q, k, v):  # type: ignore[no-untyped-def]
        self.calls.append("dense")
        return _reference_batched(q, k, v)


def _reference_batched(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.stack([_reference(a, b, c) for a, b, c in zip(q, k, v, strict=True)])


@pytest.fixture
def fake_fa3(monkeypatch):
    """FlashAttention-3 'installed', built for head dim 64 without variable lengths (as
    the benchmark build), on a Hopper GPU (CPU tensors stand in for fp16 CUDA ones: the
    dtype/device check and the capability query are patched)."""
    from synchuman.nn import attention as module

    fake = FakeFlashAttention3()
    monkeypatch.setitem(module._modules, "flash_attn3", fake)
    monkeypatch.setattr(
        module, "FLASH_ATTENTION3", module.FlashAttention3Build(frozenset({64}), varlen=False)
    )
    monkeypatch.setattr(module, "_half_precision_cuda", lambda tensors: True)
    monkeypatch.setattr(module, "_hopper", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    return fake


def test_auto_uses_flash_attention3_for_the_head_dims_it_was_built_for(fake_fa3, monkeypatch) -> None:
    from synchuman.nn import attention as module

    monkeypatch.setattr(module, "FLASH_ATTENTION3_MIN_SCORES", 2 * 3 * 5 * 5)
    q, k, v = (torch.randn(2, 5, 3, 64) for _ in range(3))
    torch.testing.assert_close(attention(q, k, v), _reference_batched(q, k, v), atol=1e-5, rtol=1e-5)
    assert fake_fa3.calls == ["dense"]
    small = torch.randn(1, 4, 2, 32)  # head dim 32 is not in the build: SDPA
    attention(small, small, small)
    few = torch.randn(1, 5, 3, 64)  # fewer scores than the threshold: SDPA (the faster kernel there)
    attention(few, few, few)
    layout = VarlenLayout.from_seqlens([30, 20])  # varlen not in the build: padded SDPA
    packed = torch.randn(50, 2, 64)
    layout.self_attention(packed, packed, packed)
    assert fake_fa3.calls == ["dense"]
    with attention_backend("sdpa"):  # an explicit SDPA choice wins
        attention(q, k, v)
    assert fake_fa3.calls == ["dense"]


def test_the_backend_choice_compiles_without_graph_breaks(fake_fa3, monkeypatch) -> None:
    from synchuman.nn import attention as module

    monkeypatch.setattr(module, "FLASH_ATTENTION3_MIN_SCORES", 1)
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v: attention(q, k, v) * 2, backend="eager", fullgraph=True)
    q, k, v = (torch.randn(2, 5, 3, 64) for _ in range(3))
    torch.testing.assert_close(compiled(q, k, v), 2 * _reference_batched(q, k, v), atol=1e-5, rtol=1e-5)
    assert fake_fa3.calls == ["dense"]
    torch._dynamo.reset()


def test_without_flash_attention3_auto_is_sdpa_and_asking_for_it_names_the_package(monkeypatch) -> None:
    from synchuman.nn import attention as module

    monkeypatch.delitem(module._modules, "flash_attn3", raising=False)
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)  # not importable
    monkeypatch.setattr(module.importlib.util, "find_spec", lambda name: None)
    assert module._probe_flash_attention3() is None
    q = torch.randn(1, 4, 2, 64)
    torch.testing.assert_close(attention(q, q, q), _reference_batched(q, q, q), atol=1e-5, rtol=1e-5)
    with pytest.raises(ImportError, match="flash_attn_3"):
        set_attention_backend("flash_attn3")
    assert get_attention_backend() == "auto"


def test_the_probe_reads_the_head_dims_of_the_installed_build(monkeypatch) -> None:
    import types

    from synchuman.nn import attention as module

    flags = {f"FLASHATTENTION_DISABLE_HDIM{d}": d not in (64, 128) for d in (64, 96, 128, 192, 256)}
    monkeypatch.setitem(module._modules, "flash_attn3", FakeFlashAttention3())
    monkeypatch.setitem(
        sys.modules, "flash_attn_config", types.SimpleNamespace(CONFIG={"build_flags": flags})
    )
    monkeypatch.setattr(module.importlib.util, "find_spec", lambda name: object())
    build = module._probe_flash_attention3()
    assert build == module.FlashAttention3Build(frozenset({64, 128}), varlen=True)
