"""Sparse voxel tensors and the operations the stage-2 models need (pure PyTorch, CPU and GPU)."""

from synchuman.sparse.conv import SparseConv3d, SubMConv3d, build_neighbour_map
from synchuman.sparse.norm import SparseGroupNorm32
from synchuman.sparse.spatial import downsample, subdivide, upsample
from synchuman.sparse.tensor import CoordCache, SparseTensor
from synchuman.sparse.window import build_window_partition, window_partition

__all__ = [
    "CoordCache",
    "SparseConv3d",
    "SparseGroupNorm32",
    "SparseTensor",
    "SubMConv3d",
    "build_neighbour_map",
    "build_window_partition",
    "downsample",
    "subdivide",
    "upsample",
    "window_partition",
]
