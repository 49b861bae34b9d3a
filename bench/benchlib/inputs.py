"""Request inputs of the benches: the photo of a job, a stage-1 request's images, a stage-2 request's images
and a person-shaped voxel set. Their content does not change the models' work (every request runs the same
shapes); smooth images compress like rendered views, unlike noise."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from services.common.stage_io import voxels_to_proto
from synchuman.v1 import common_pb2


def photo_like(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth uint8 image of ``shape`` ``[H, W, C]``: random 32x32-pixel blocks."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (-(-shape[0] // 32), -(-shape[1] // 32), shape[2]), dtype=np.uint8)
    return np.kron(small, np.ones((32, 32, 1), np.uint8))[: shape[0], : shape[1]]


def png(image: np.ndarray) -> bytes:
    """uint8 ``[H, W]``, ``[H, W, 3]`` or ``[H, W, 4]`` -> PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def synthetic_photo(path: str | None) -> bytes:
    """The bytes of the file ``path``, or (``None``) a synthetic RGBA person cut-out as PNG (the
    self-test's)."""
    if path:
        return Path(path).read_bytes()
    from synchuman_cli.commands.selftest import synthetic_person

    return png(synthetic_person())


def human_occupancy(target: int, res: int = 64) -> np.ndarray:
    """``[N, 3]`` voxel indices (~``target`` of the ``res^3`` grid) of a shell around a capsule stick figure
    standing along +z: the compact occupancy a person's stage 1 gives."""
    g = (np.stack(np.meshgrid(*[np.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) / res - 0.5
    segments = [  # (start, end, radius) in the [-0.5, 0.5]^3 box, z up
        ((0, 0, 0.30), (0, 0, 0.36), 0.075),  # head
        ((0, 0, -0.02), (0, 0, 0.22), 0.11),  # torso
        ((-0.13, 0, 0.20), (-0.30, 0, 0.02), 0.04),  # arms
        ((0.13, 0, 0.20), (0.30, 0, 0.02), 0.04),
        ((-0.06, 0, -0.02), (-0.08, 0, -0.44), 0.055),  # legs
        ((0.06, 0, -0.02), (0.08, 0, -0.44), 0.055),
    ]
    dist = np.full(len(g), np.inf)
    for a, b, r in segments:
        a, b = np.array(a), np.array(b)
        h = np.clip(((g - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
        dist = np.minimum(dist, np.linalg.norm(g - (a + h[:, None] * (b - a)), axis=1) - r)
    lo, hi = 0.0, 0.2
    for _ in range(40):  # shell thickness giving ~target voxels
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (np.abs(dist) < mid).sum() < target else (lo, mid)
    idx = np.nonzero(np.abs(dist) < hi)[0]
    return np.stack([idx // (res * res), idx // res % res, idx % res], axis=1)


def stage1_inputs() -> dict[str, bytes]:
    """A stage-1 request's PNGs: a person-sized opaque region on a transparent 768^2 canvas
    (``framed.png``) and a 518^2 crop (``conditioning.png``)."""
    framed = np.zeros((768, 768, 4), np.uint8)
    framed[60:740, 250:520, :3] = photo_like(0, (680, 270, 3))
    framed[60:740, 250:520, 3] = 255
    return {"framed.png": png(framed), "conditioning.png": png(photo_like(1, (518, 518, 3)))}


def stage2_inputs(voxels: int) -> tuple[dict[str, bytes], common_pb2.VoxelStructure]:
    """A stage-2 request's PNGs (the 518^2 crop, five 768^2 colour and five normal views) and the stick
    figure's ~``voxels`` cells of the 64^3 grid."""
    blobs = {"conditioning.png": png(photo_like(0, (518, 518, 3)))}
    for kind in ("color", "normal"):
        for i in range(5):
            blobs[f"{kind}_{i}.png"] = png(photo_like(i + (10 if kind == "normal" else 0), (768, 768, 3)))
    return blobs, voxels_to_proto(human_occupancy(voxels), 64)
