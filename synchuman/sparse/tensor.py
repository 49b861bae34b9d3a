"""Sparse voxel tensor: integer coordinates ``(batch, x, y, z)`` plus per-voxel features.

Rows of one batch item are contiguous with batch 0 first. Everything derived from the coordinates alone
(per-item layout, neighbour maps, window partitions, down/up-sampling maps) is computed once and kept in a
:class:`CoordCache` shared by every tensor with the same coordinates, so repeated blocks and sampler steps
reuse it with no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from synchuman.nn.attention import VarlenLayout


class CoordCache:
    """Lazily computed, coordinate-derived data (keyed by name) for one coordinate set."""

    def __init__(self) -> None:
        self._items: dict[Any, Any] = {}

    def get(self, key: Any, build: Callable[[], Any]) -> Any:
        """Return the cached value for ``key``, building it with ``build()`` on first use."""
        if key not in self._items:
            self._items[key] = build()
        return self._items[key]


class SparseTensor:
    """Sparse features on voxel coordinates.

    Args:
        feats: ``[N, C]`` features (any float dtype).
        coords: int32 ``[N, 4]`` ``(batch, x, y, z)``; batch items contiguous, batch 0 first.
        cache: the coordinate cache to share (pass the parent's when the coordinates are the same).
    """

    def __init__(self, feats: torch.Tensor, coords: torch.Tensor, cache: CoordCache | None = None) -> None:
        if coords.dim() != 2 or coords.shape[1] != 4:
            raise ValueError(f"sparse coords must be [N, 4] (batch, x, y, z); got {tuple(coords.shape)}")
        if feats.shape[0] != coords.shape[0]:
            raise ValueError(f"sparse feats rows {feats.shape[0]} != coords rows {coords.shape[0]}")
        if coords.dtype != torch.int32:
            coords = coords.to(torch.int32)
        self.feats = feats
        self.coords = coords
        self.cache = cache if cache is not None else CoordCache()

    def replace(self, feats: torch.Tensor) -> SparseTensor:
        """Same coordinates (and cache), new features ``[N, C']``."""
        return SparseTensor(feats, self.coords, self.cache)

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    @property
    def layout(self) -> VarlenLayout:
        """Per-batch-item token layout (one host sync the first time, then cached)."""
        return self.cache.get("layout", self._build_layout)

    def _build_layout(self) -> VarlenLayout:
        batch = self.coords[:, 0].long()
        if batch.numel() == 0:
            raise ValueError("sparse tensor has no voxels")
        if bool((batch[1:] < batch[:-1]).any()) or int(batch[0]) != 0:
            raise ValueError("sparse coords must have batch items contiguous and sorted, starting at 0")
        counts = torch.bincount(batch).tolist()
        if min(counts) == 0:
            raise ValueError(f"a batch item has no voxels (voxels per item: {counts})")
        return VarlenLayout.from_seqlens(counts, device=self.coords.device)

    @property
    def batch_size(self) -> int:
        return len(self.layout.seqlens)

    def item(self, i: int) -> SparseTensor:
        """Batch item ``i`` as its own sparse tensor (batch column kept as is)."""
        start = int(sum(self.layout.seqlens[:i]))
        stop = start + self.layout.seqlens[i]
        return SparseTensor(self.feats[start:stop], self.coords[start:stop])

    def per_item(self, values: torch.Tensor) -> torch.Tensor:
        """Broadcast per-item values ``[B, ...]`` to per-voxel ``[N, ...]``."""
        return self.layout.broadcast(values)

    def __repr__(self) -> str:
        return f"SparseTensor(N={self.feats.shape[0]}, C={self.feats.shape[1:]}, dtype={self.dtype})"
