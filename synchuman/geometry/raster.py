"""Triangle rasterisation in PyTorch (CPU and GPU), batched over views.

Pixels are sampled at their centres; image row 0 is the top (camera conventions in :mod:`.camera`). Both faces
sides are drawn (no back-face culling), the nearest surface wins. Each triangle's screen bounding box is
enumerated on a grid sized to the next power of two of its width and height, so small triangles (the common
case
for dense meshes) cost a handful of candidate pixels; the depth test is one ``scatter_reduce(amin)`` of a
packed
``(depth bits << 32) | face id`` key per pixel.

Memory is bounded whatever the mesh: the per-(view, face) work runs on chunks of at most ``max_view_faces``
view-face pairs (faces in slices, every slice scattered into the same depth buffer), and the candidate pixels
on chunks of ``max_candidates``. ``amin`` over a packed key does not depend on the order or the grouping of
the scatters, so every chunking gives the same pixels, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_SENTINEL = torch.iinfo(torch.int64).max
_LOW32 = 0xFFFFFFFF
#: Default bound of view x face pairs rasterised at once (~150 B each: ~1.2 GiB).
MAX_VIEW_FACES = 1 << 23
#: rasteriser backends accepted by :func:`rasterize`
BACKENDS = ("torch", "nvdiffrast", "open3d", "auto")


@dataclass
class RasterOutput:
    """Per-pixel result of :func:`rasterize` for ``B`` views of ``H x W`` pixels.

    Attributes:
        face_id: ``[B, H, W]`` long, the visible face or -1 for background.
        bary: ``[B, H, W, 3]`` float32 perspective-correct barycentrics of the face's corners (0 on
        background),
            or ``None`` when not requested.
        depth: ``[B, H, W]`` float32 camera-space z of the surface (0 on background), or ``None``.
    """

    face_id: torch.Tensor
    bary: torch.Tensor | None
    depth: torch.Tensor | None

    @property
    def mask(self) -> torch.Tensor:
        """``[B, H, W]`` bool, True where a face is visible."""
        return self.face_id >= 0


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that will serve ``device``: ``"auto"`` resolved; ValueError for an unknown name or a
    backend that cannot serve the device; ImportError when the chosen optional package is missing."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown rasteriser backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    from synchuman.geometry import raster_backends

    if backend == "auto":
        preferred = "nvdiffrast" if device.type == "cuda" else "open3d"
        return preferred if raster_backends.available(preferred) else "torch"
    if backend == "nvdiffrast" and device.type != "cuda":
        raise ValueError("the nvdiffrast rasteriser needs CUDA tensors; use 'torch' or 'open3d' on the CPU")
    if backend == "open3d" and device.type != "cpu":
        raise ValueError("the open3d rasteriser runs on CPU tensors; use 'torch' or 'nvdiffrast' on a GPU")
    if backend != "torch":
        raster_backends.import_backend(backend)
    return backend


def camera_space(vertices: torch.Tensor, extrinsics: torch.Tensor) -> torch.Tensor:
    """World ``[V, 3]`` (or ``[B, V, 3]``) -> camera space ``[B, V, 3]`` under ``extrinsics [B, 4, 4]``."""
    return vertices @ extrinsics[:, :3, :3].transpose(1, 2) + extrinsics[:, None, :3, 3]


def project(
    vertices: torch.Tensor,
    extrinsics: torch.Tensor,
    intrinsics: torch.Tensor,
    orthographic: torch.Tensor | bool,
    height: int,
    width: int,
) -> torch.Tensor:
    """Screen positions ``[B, V, 3]``: pixel x, pixel y (0..W, 0..H, centres at +0.5) and camera z.

    Args:
        vertices: ``[V, 3]`` world positions (or ``[B, V, 3]``).
        extrinsics: ``[B, 4, 4]`` world-to-camera. intrinsics: ``[B, 3, 3]`` normalised (see :mod:`.camera`).
        orthographic: bool or ``[B]`` bool per view.
    """
    num_views = extrinsics.shape[0]
    ortho = torch.as_tensor(orthographic, device=vertices.device).reshape(-1).expand(num_views)
    cam = camera_space(vertices, extrinsics)
    z = cam[..., 2:3]
    divisor = torch.where(ortho[:, None, None], torch.ones_like(z), z.clamp(min=1e-8))
    uv = (cam[..., :2] / divisor) @ intrinsics[:, :2, :2].transpose(1, 2) + intrinsics[:, None, :2, 2]
    scale = torch.tensor([width, height], dtype=uv.dtype, device=uv.device)
    return torch.cat([uv * scale, z], dim=-1)


def rasterize(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    extrinsics: torch.Tensor,
    intrinsics: torch.Tensor,
    height: int,
    width: int,
    orthographic: torch.Tensor | bool = False,
    near: float = 1e-3,
    with_bary: bool = True,
    max_candidates: int = 1 << 24,
    backend: str = "torch",
    max_view_faces: int = MAX_VIEW_FACES,
) -> RasterOutput:
    """Rasterise a mesh from ``B`` cameras.

    Args:
        vertices: ``[V, 3]`` (or ``[B, V, 3]``) world positions. faces: ``[F, 3]`` long.
        extrinsics: ``[B, 4, 4]``; intrinsics: ``[B, 3, 3]`` normalised; orthographic: bool or ``[B]`` bool.
        near: faces with a corner at camera z <= near are skipped (nvdiffrast clips them instead).
        with_bary: also return barycentrics and depth (costs ``B*H*W*3`` floats).
        max_candidates: candidate pixels processed per chunk (memory bound, ~40 bytes each; torch only).
        max_view_faces: view x face pairs set up per chunk (memory bound, ~150 bytes each; torch only): the
            faces are rasterised in slices of ``max_view_faces // B`` into one depth buffer (same result).
        backend: one of :data:`BACKENDS`: ``"torch"`` (this module, CPU and GPU), ``"nvdiffrast"`` (CUDA) or
            ``"open3d"`` (CPU ray casting) when installed (:mod:`.raster_backends`), or ``"auto"``: nvdiffrast
            for CUDA tensors and Open3D for CPU tensors when importable, else torch.
    """
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"rasterize: faces must be [F, 3], got {tuple(faces.shape)}")
    if extrinsics.ndim != 3 or intrinsics.shape[0] != extrinsics.shape[0]:
        raise ValueError("rasterize: extrinsics [B, 4, 4] and intrinsics [B, 3, 3] must share B")
    device = vertices.device
    faces = faces.long().to(device)
    extrinsics, intrinsics = extrinsics.to(device).float(), intrinsics.to(device).float()
    num_views, num_faces = extrinsics.shape[0], faces.shape[0]
    ortho = torch.as_tensor(orthographic, device=device).reshape(-1).expand(num_views)
    backend = resolve_backend(backend, device)
    if backend != "torch" and num_faces:
        from synchuman.geometry import raster_backends

        run = {"nvdiffrast": raster_backends.rasterize_nvdiffrast, "open3d": raster_backends.rasterize_open3d}
        args = (extrinsics, intrinsics, height, width, ortho, near, with_bary)
        return run[backend](vertices.float(), faces, *args)
    screen = project(vertices.float(), extrinsics, intrinsics, ortho, height, width)
    buffer = torch.full((num_views * height * width,), _SENTINEL, dtype=torch.int64, device=device)
    step = max(1, max_view_faces // max(1, num_views))
    for first in range(0, num_faces, step):
        tri = screen[:, faces[first : first + step]]  # [B, slice, 3 corners, 3]
        _fill(buffer, tri, ortho, height, width, near, max_candidates, first)
        del tri
    # the buffer becomes the face ids in place (no second B*H*W*8-byte tensor)
    missed = buffer == _SENTINEL
    face_id = buffer.bitwise_and_(_LOW32).masked_fill_(missed, -1).reshape(num_views, height, width)
    del missed
    if not with_bary:
        return RasterOutput(face_id, None, None)
    bary, depth = _barycentrics(screen, faces, face_id, ortho, height, width)
    return RasterOutput(face_id, bary, depth)


def _fill(
    buffer: torch.Tensor,
    tri: torch.Tensor,
    ortho: torch.Tensor,
    height: int,
    width: int,
    near: float,
    max_candidates: int,
    first_face: int = 0,
) -> None:
    """Scatter the nearest packed key of every covered pixel of faces ``first_face + [0, F)`` (``tri [B, F, 3,
    3]``) into ``buffer [B*H*W]``."""
    num_views, num_faces = tri.shape[:2]
    xy, z = tri[..., :2], tri[..., 2]
    lo, hi = xy.amin(dim=2), xy.amax(dim=2)
    x_lo = torch.ceil(lo[..., 0] - 0.5).clamp(min=0)
    y_lo = torch.ceil(lo[..., 1] - 0.5).clamp(min=0)
    x_hi = torch.floor(hi[..., 0] - 0.5).clamp(max=width - 1)
    y_hi = torch.floor(hi[..., 1] - 0.5).clamp(max=height - 1)
    d1, d2 = xy[:, :, 1] - xy[:, :, 0], xy[:, :, 2] - xy[:, :, 0]
    area = d1[..., 0] * d2[..., 1] - d2[..., 0] * d1[..., 1]
    valid = (area.abs() > 1e-10) & (z.amin(dim=2) > near) & (x_hi >= x_lo) & (y_hi >= y_lo)
    size_x = (x_hi - x_lo + 1).clamp(min=1)
    size_y = (y_hi - y_lo + 1).clamp(min=1)
    code = torch.ceil(torch.log2(size_x)).long() * 32 + torch.ceil(torch.log2(size_y)).long()
    idx = valid.reshape(-1).nonzero().squeeze(1)
    codes, order = torch.sort(code.reshape(-1)[idx])
    idx = idx[order]
    buckets, counts = torch.unique_consecutive(codes, return_counts=True)
    flat_tri = tri.reshape(-1, 3, 3)
    box = torch.stack([x_lo, y_lo, x_hi, y_hi], dim=-1).reshape(-1, 4).long()
    flat_ortho = ortho[:, None].expand(num_views, num_faces).reshape(-1)
    # which depth formulas the chunks need, read once here (a read per chunk would stall the queue each time)
    modes = (bool(ortho.any()), bool(ortho.all()))
    start = 0
    for bucket, count in zip(buckets.tolist(), counts.tolist(), strict=True):
        kx, ky = 1 << (bucket // 32), 1 << (bucket % 32)
        chunk = max(1, max_candidates // (kx * ky))
        for s in range(start, start + count, chunk):
            sel = idx[s : min(s + chunk, start + count)]
            _splat(
                buffer,
                sel,
                flat_tri[sel],
                box[sel],
                flat_ortho[sel],
                kx,
                ky,
                num_faces,
                height,
                width,
                first_face,
                modes,
            )
        start += count


def _splat(
    buffer: torch.Tensor,
    sel: torch.Tensor,
    tri: torch.Tensor,
    box: torch.Tensor,
    ortho: torch.Tensor,
    kx: int,
    ky: int,
    num_faces: int,
    height: int,
    width: int,
    first_face: int = 0,
    modes: tuple[bool, bool] | None = None,
) -> None:
    """Candidate pixels of triangles ``sel`` (flat view*F+face ids) on a ``ky x kx`` grid from their box
    corner. In-place arithmetic keeps about 40 bytes per candidate alive (the same values as out-of-place).
    ``modes``: (any, all) of ``ortho`` when the caller knows them (else read here: a device sync)."""
    device = tri.device
    px = box[:, 0, None, None] + torch.arange(kx, device=device)[None, None, :]
    py = box[:, 1, None, None] + torch.arange(ky, device=device)[None, :, None]
    cx, cy = px.float() + 0.5, py.float() + 0.5
    x0, y0 = tri[:, 0, 0, None, None], tri[:, 0, 1, None, None]
    x1, y1 = tri[:, 1, 0, None, None], tri[:, 1, 1, None, None]
    x2, y2 = tri[:, 2, 0, None, None], tri[:, 2, 1, None, None]
    b0 = (x2 - x1) * (cy - y1) - (y2 - y1) * (cx - x1)
    b1 = (x0 - x2) * (cy - y2) - (y0 - y2) * (cx - x2)
    b2 = (x1 - x0) * (cy - y0) - (y1 - y0) * (cx - x0)
    area = b0 + b1
    area += b2
    b0.div_(area), b1.div_(area), b2.div_(area)
    del area
    inside = b0 >= 0
    inside &= b1 >= 0
    inside &= b2 >= 0
    inside &= px <= box[:, 2, None, None]
    inside &= py <= box[:, 3, None, None]
    z0, z1, z2 = tri[:, 0, 2, None, None], tri[:, 1, 2, None, None], tri[:, 2, 2, None, None]
    any_ortho, all_ortho = modes if modes is not None else (bool(ortho.any()), bool(ortho.all()))
    depth = ortho_depth = None
    if any_ortho:  # b0*z0 + b1*z1 + b2*z2
        ortho_depth = b0 * z0
        ortho_depth += b1 * z1
        ortho_depth += b2 * z2
    if not all_ortho:  # 1 / (b0/z0 + b1/z1 + b2/z2)
        depth = b0 / z0
        depth += b1 / z1
        depth += b2 / z2
        depth = 1.0 / depth
    del b0, b1, b2
    if depth is None:
        depth = ortho_depth
    elif ortho_depth is not None:
        depth = torch.where(ortho[:, None, None], ortho_depth, depth)
    del ortho_depth
    key = depth.float().contiguous().view(torch.int32).long()
    del depth
    key.bitwise_left_shift_(32).bitwise_or_((sel % num_faces + first_face)[:, None, None])
    key.masked_fill_(~inside, _SENTINEL)
    del inside
    view = sel // num_faces
    pix = view[:, None, None] * (height * width) + py.clamp(max=height - 1) * width + px.clamp(max=width - 1)
    buffer.scatter_reduce_(0, pix.reshape(-1), key.reshape(-1), reduce="amin")


def _barycentrics(
    screen: torch.Tensor,
    faces: torch.Tensor,
    face_id: torch.Tensor,
    ortho: torch.Tensor,
    height: int,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Perspective-correct barycentrics ``[B, H, W, 3]`` and depth ``[B, H, W]`` of the visible faces
    (``screen [B, V, 3]`` from :func:`project`)."""
    num_views = screen.shape[0]
    device = screen.device
    view = torch.arange(num_views, device=device)[:, None, None, None]
    t = screen[view, faces[face_id.clamp(min=0)]]  # [B, H, W, 3 corners, 3]
    cx = torch.arange(width, device=device).float()[None, None, :] + 0.5
    cy = torch.arange(height, device=device).float()[None, :, None] + 0.5
    x, y, z = t[..., 0], t[..., 1], t[..., 2]
    w0 = (x[..., 2] - x[..., 1]) * (cy - y[..., 1]) - (y[..., 2] - y[..., 1]) * (cx - x[..., 1])
    w1 = (x[..., 0] - x[..., 2]) * (cy - y[..., 2]) - (y[..., 0] - y[..., 2]) * (cx - x[..., 2])
    w2 = (x[..., 1] - x[..., 0]) * (cy - y[..., 0]) - (y[..., 1] - y[..., 0]) * (cx - x[..., 0])
    screen_bary = torch.stack([w0, w1, w2], dim=-1)
    total = screen_bary.sum(dim=-1, keepdim=True)
    screen_bary = screen_bary / torch.where(total.abs() > 0, total, 1.0)
    persp = screen_bary / z.clamp(min=1e-8)
    persp = persp / persp.sum(dim=-1, keepdim=True).clamp(min=1e-20)
    bary = torch.where(ortho[:, None, None, None], screen_bary, persp)
    hit = (face_id >= 0)[..., None]
    bary = torch.where(hit, bary, 0.0)
    depth = (bary * z).sum(dim=-1)
    return bary, depth


def interpolate(attrs: torch.Tensor, faces: torch.Tensor, out: RasterOutput) -> torch.Tensor:
    """Interpolate vertex attributes ``[V, C]`` at the pixels of ``out``: ``[B, H, W, C]`` (0 on
    background)."""
    if out.bary is None:
        raise ValueError("interpolate: rasterize(..., with_bary=True) is needed")
    corners = faces.long()[out.face_id.clamp(min=0)]  # [B, H, W, 3]
    values = attrs[corners]  # [B, H, W, 3, C]
    return (values * out.bary[..., None]).sum(dim=-2)
