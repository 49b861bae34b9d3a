"""Resolution changes of sparse tensors: 2x down-sampling (pooling), its inverse up-sampling, subdivision.

Each operation caches its coordinate maps in the source tensor's :class:`CoordCache`, so the coarse/fine
tensors of later calls share coordinates *and* caches (neighbour maps, layouts) with earlier ones.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from synchuman.sparse.tensor import CoordCache, SparseTensor


@dataclass(frozen=True, eq=False)
class _LevelMap:
    """Coordinates and cache of the other level plus the fine -> coarse row map."""

    coords: torch.Tensor
    cache: CoordCache
    parent: torch.Tensor  # long [N_fine]: coarse row of each fine voxel


@dataclass(frozen=True, eq=False)
class _FineLink:
    """What a coarse level keeps of the fine level it was pooled from (the fine cache held weakly)."""

    coords: torch.Tensor
    cache: weakref.ReferenceType[CoordCache]
    parent: torch.Tensor  # long [N_fine]: coarse row of each fine voxel

    def level(self) -> _LevelMap:
        """The fine level; its cache is rebuilt empty if nothing holds the original any more."""
        return _LevelMap(self.coords, self.cache() or CoordCache(), self.parent)


def _build_downsample(x: SparseTensor, factor: int) -> tuple[_LevelMap, torch.Tensor]:
    """The coarse level and the float32 number of fine voxels per coarse cell."""
    c = x.coords.long()
    coarse = torch.cat([c[:, :1], torch.div(c[:, 1:], factor, rounding_mode="floor")], dim=1)
    radix = int(coarse[:, 1:].max()) + 1
    keys = ((coarse[:, 0] * radix + coarse[:, 1]) * radix + coarse[:, 2]) * radix + coarse[:, 3]
    unique_keys, parent = torch.unique(keys, sorted=True, return_inverse=True)
    z = unique_keys % radix
    y = (unique_keys // radix) % radix
    xx = (unique_keys // (radix * radix)) % radix
    b = unique_keys // (radix**3)
    coarse_coords = torch.stack([b, xx, y, z], dim=1).to(torch.int32)
    coarse_cache = CoordCache()
    # The coarse level remembers how to go back up, but refers to the fine cache only weakly: the fine cache
    # holds the coarse one, so a strong link back would make a reference cycle that keeps every cached map of
    # the request (neighbour maps of all levels, the decoders' subdivisions) alive until a full garbage
    # collection.
    coarse_cache.get(("upsample", factor), lambda: _FineLink(x.coords, weakref.ref(x.cache), parent))
    counts = torch.bincount(parent, minlength=coarse_coords.shape[0]).float()
    return _LevelMap(coarse_coords, coarse_cache, parent), counts


def downsample(x: SparseTensor, factor: int = 2) -> SparseTensor:
    """Pool voxels into ``floor(coord / factor)`` cells; output rows sorted by ``(b, x, y, z)``.

    Features are ``sum / (count + 1)`` per cell (upstream's ``scatter_reduce(zeros, 'mean')`` counts the
    initial zero). ``[N, C]`` -> ``[M, C]``.
    """
    level, counts = x.cache.get(("downsample", factor), lambda: _build_downsample(x, factor))
    sums = x.feats.new_zeros(level.coords.shape[0], x.feats.shape[1], dtype=torch.float32)
    sums.index_add_(0, level.parent, x.feats.float())
    pooled = (sums / (counts + 1)[:, None]).to(x.feats.dtype)
    return SparseTensor(pooled, level.coords, level.cache)


def upsample(x: SparseTensor, factor: int = 2) -> SparseTensor:
    """Inverse of :func:`downsample` on the same coordinates: every fine voxel takes its cell's features,
    in the original fine row order. ``[M, C]`` -> ``[N, C]``."""

    def missing() -> _FineLink:
        raise ValueError("upsample needs a tensor produced by downsample (no cached fine coordinates)")

    level = x.cache.get(("upsample", factor), missing).level()
    return SparseTensor(x.feats[level.parent], level.coords, level.cache)


# Child offsets in row-major (x, y, z) order with z fastest: (0,0,0), (0,0,1), (0,1,0), ..., (1,1,1).
_CHILD_OFFSETS = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=torch.int32)


def _build_subdivide(x: SparseTensor) -> _LevelMap:
    n = x.coords.shape[0]
    offsets = torch.cat([torch.zeros(8, 1, dtype=torch.int32), _CHILD_OFFSETS], dim=1).to(x.coords.device)
    scale = torch.tensor([1, 2, 2, 2], dtype=torch.int32, device=x.coords.device)
    children = (x.coords * scale)[:, None, :] + offsets[None]
    parent = torch.arange(n, device=x.coords.device).repeat_interleave(8)
    return _LevelMap(children.reshape(-1, 4), CoordCache(), parent)


def subdivide(x: SparseTensor) -> SparseTensor:
    """Split every voxel into its 8 children (parent-major, child coord ``2 * parent + offset``), copying
    features. ``[N, C]`` -> ``[8N, C]``."""
    level = x.cache.get("subdivide", lambda: _build_subdivide(x))
    return SparseTensor(x.feats[level.parent], level.coords, level.cache)
