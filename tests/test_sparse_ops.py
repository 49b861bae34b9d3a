"""Sparse ops against dense references: submanifold conv, pooling/unpooling, subdivision, group norm."""

from __future__ import annotations

import torch
from torch.nn import functional

from synchuman.sparse import SparseGroupNorm32, SparseTensor, SubMConv3d, downsample, subdivide, upsample


def _random_sparse(n: int = 40, res: int = 6, batch: int = 2, channels: int = 3) -> SparseTensor:
    g = torch.Generator().manual_seed(0)
    parts = []
    for b in range(batch):
        cells = torch.randperm(res**3, generator=g)[:n].sort().values
        xyz = torch.stack([cells // (res * res), cells // res % res, cells % res], dim=1)
        parts.append(torch.cat([torch.full((n, 1), b), xyz], dim=1))
    coords = torch.cat(parts).int()
    return SparseTensor(torch.randn(coords.shape[0], channels, generator=g), coords)


def test_submanifold_conv_matches_dense_conv() -> None:
    x = _random_sparse()
    conv = SubMConv3d(3, 5, 3)
    torch.nn.init.normal_(conv.bias)
    out = conv(x).feats
    dense = torch.zeros(2, 3, 6, 6, 6)
    c = x.coords.long()
    dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = x.feats
    weight = conv.weight.permute(0, 4, 1, 2, 3)  # [out, in, kx, ky, kz]
    ref = functional.conv3d(dense, weight, conv.bias, padding=1)[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_pointwise_conv_reinterprets_weight_buffer() -> None:
    x = _random_sparse(channels=4)
    conv = SubMConv3d(4, 2, 1)
    expected = x.feats @ conv.weight.detach().reshape(4, 2) + conv.bias.detach()
    torch.testing.assert_close(conv(x).feats, expected)
    assert not torch.allclose(expected, x.feats @ conv.weight.detach()[:, 0, 0, 0, :].T + conv.bias.detach())


def test_downsample_counts_the_initial_zero_and_upsample_inverts() -> None:
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 1], [0, 3, 0, 0], [1, 0, 0, 1]], dtype=torch.int32)
    x = SparseTensor(torch.tensor([[2.0], [4.0], [6.0], [8.0]]), coords)
    coarse = downsample(x)
    assert coarse.coords.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]]
    assert coarse.feats[:, 0].tolist() == [2.0, 3.0, 4.0]  # sum / (count + 1)
    fine = upsample(coarse)
    assert torch.equal(fine.coords, coords)
    assert fine.feats[:, 0].tolist() == [2.0, 2.0, 3.0, 4.0]
    assert downsample(x).cache is coarse.cache  # coordinate maps are reused


def test_subdivide_child_order() -> None:
    x = SparseTensor(
        torch.tensor([[1.0], [2.0]]), torch.tensor([[0, 1, 2, 3], [0, 0, 0, 0]], dtype=torch.int32)
    )
    y = subdivide(x)
    assert y.coords[:8, 1:].tolist()[:3] == [[2, 4, 6], [2, 4, 7], [2, 5, 6]]
    assert y.feats[:8, 0].eq(1).all() and y.feats[8:, 0].eq(2).all()


def test_group_norm_is_per_item() -> None:
    x = _random_sparse(channels=4)
    norm = SparseGroupNorm32(2, 4)
    torch.nn.init.normal_(norm.weight)
    out = norm(x).feats
    for b, rows in enumerate(x.feats.split(list(x.layout.seqlens))):
        ref = functional.group_norm(rows.T[None], 2, norm.weight, norm.bias)[0].T
        torch.testing.assert_close(out[b * 40 : (b + 1) * 40], ref, atol=1e-5, rtol=1e-5)
