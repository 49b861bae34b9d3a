"""Swin-style window partitions of sparse voxels (cached per coordinates, window size and shift)."""

from __future__ import annotations

import torch

from synchuman.nn.attention import WindowPartition
from synchuman.sparse.tensor import SparseTensor


def build_window_partition(coords: torch.Tensor, window_size: int, shift: int) -> WindowPartition:
    """Group voxels by ``(batch, floor((xyz + shift) / window_size))`` (no wrap-around).

    Args:
        coords: int ``[N, 4]`` ``(b, x, y, z)``; window_size: edge of a cubic window; shift: added to x, y, z.
    """
    if window_size < 1:
        raise ValueError(f"window_size must be >= 1; got {window_size}")
    c = coords.long()
    cells = torch.div(c[:, 1:] + shift, window_size, rounding_mode="floor")
    radix = int(cells.max()) + 1
    ids = ((c[:, 0] * radix + cells[:, 0]) * radix + cells[:, 1]) * radix + cells[:, 2]
    return WindowPartition.from_window_ids(ids)


def window_partition(x: SparseTensor, window_size: int, shift: int) -> WindowPartition:
    """Cached :func:`build_window_partition` for ``x``'s coordinates."""
    key = ("window", window_size, shift)
    return x.cache.get(key, lambda: build_window_partition(x.coords, window_size, shift))
