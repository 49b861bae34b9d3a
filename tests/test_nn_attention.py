"""Attention dispatch: packed/windowed attention equals per-sequence dense attention; backend switching."""

from __future__ import annotations

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
    assert get_attention_backend() == "sdpa"
    with pytest.raises(ValueError, match="unknown attention backend"):
        set_attention_backend("magic")
    with attention_backend("sdpa"):
        q = torch.randn(1, 3, 1, 4)
        assert attention(q, q, q).shape == (1, 3, 1, 4)
    assert get_attention_backend() == "sdpa"


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match=r"\[B, L, H, D\]"):
        attention(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="non-empty"):
        VarlenLayout.from_seqlens([3, 0])
