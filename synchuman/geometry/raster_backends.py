"""Optional rasteriser backends with the output contract of :func:`synchuman.geometry.raster.rasterize`.

- ``"nvdiffrast"`` (CUDA tensors; ``pip install`` NVlabs' nvdiffrast): hardware-style rasterisation through
  ``RasterizeCudaContext``. Clip-space positions come from :func:`.camera.perspective_projection` /
  :func:`.camera.orthographic_projection`, whose NDC already follows nvdiffrast's image convention (NDC
  ``y = -1`` is image row 0). Its barycentrics ``(u, v)`` weight corners ``(0, 1)``, corner 2 gets
  ``1 - u - v``; triangles crossing the near plane are clipped (the PyTorch rasteriser skips them).
- ``"open3d"`` (CPU tensors; ``pip install open3d``): one ray per pixel centre through Open3D's
  ``RaycastingScene``. Rays start on the near plane and their direction has camera-space ``z = 1``, so the hit
  distance plus ``near`` is the camera depth. Open3D's ``primitive_uvs`` ``(u, v)`` weight corners ``(1, 2)``,
  corner 0 gets ``1 - u - v``.

Both return exact perspective-correct barycentrics and camera-space depth, and draw both sides of every face.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from synchuman.geometry import camera
from synchuman.geometry.raster import RasterOutput, camera_space

#: far plane of the nvdiffrast clip matrices (world units; the scenes live in a box of about 1)
FAR = 100.0
_contexts: dict[torch.device, object] = {}


def import_backend(name: str) -> ModuleType:
    """The backend's module (``nvdiffrast.torch`` or ``open3d``), or ImportError saying what to install."""
    module = {"nvdiffrast": "nvdiffrast.torch", "open3d": "open3d"}[name]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"rasteriser backend {name!r} needs the optional package {name!r} ({exc}); install it or use the "
            "default 'torch' backend"
        ) from exc


def available(name: str) -> bool:
    """Whether :func:`import_backend` succeeds for ``name``."""
    try:
        import_backend(name)
    except ImportError:
        return False
    return True


def rasterize_nvdiffrast(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    extrinsics: torch.Tensor,
    intrinsics: torch.Tensor,
    height: int,
    width: int,
    ortho: torch.Tensor,
    near: float,
    with_bary: bool,
) -> RasterOutput:
    """nvdiffrast rasterisation of ``B`` views (arguments as :func:`~synchuman.geometry.raster.rasterize`,
    ``ortho`` a ``[B]`` bool tensor)."""
    dr = import_backend("nvdiffrast")
    device = vertices.device
    if device not in _contexts:
        _contexts[device] = dr.RasterizeCudaContext(device=device)
    cam = camera_space(vertices, extrinsics)
    proj = torch.where(
        ortho[:, None, None],
        camera.orthographic_projection(intrinsics, near, FAR),
        camera.perspective_projection(intrinsics, near, FAR),
    )
    clip = torch.cat([cam, torch.ones_like(cam[..., :1])], dim=-1) @ proj.transpose(1, 2)
    tris = faces.to(device=device, dtype=torch.int32).contiguous()
    rast, _ = dr.rasterize(
        _contexts[device], clip.contiguous(), tris, resolution=[height, width], grad_db=False
    )
    face_id = rast[..., 3].long() - 1
    u, v = rast[..., 0], rast[..., 1]
    bary = torch.stack([u, v, 1 - u - v], dim=-1)
    if not with_bary:
        return RasterOutput(face_id, None, None)
    hit = (face_id >= 0)[..., None]
    bary = torch.where(hit, bary, 0.0)
    view = torch.arange(cam.shape[0], device=device)[:, None, None, None]
    corner_z = cam[..., 2][view, faces.long().to(device)[face_id.clamp(min=0)]]  # [B, H, W, 3]
    return RasterOutput(face_id, bary, (bary * corner_z).sum(dim=-1))


def rasterize_open3d(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    extrinsics: torch.Tensor,
    intrinsics: torch.Tensor,
    height: int,
    width: int,
    ortho: torch.Tensor,
    near: float,
    with_bary: bool,
) -> RasterOutput:
    """Open3D ray casting of ``B`` views (arguments as :func:`~synchuman.geometry.raster.rasterize`; one
    mesh for all views)."""
    if vertices.ndim != 2:
        raise ValueError("the open3d rasteriser takes one mesh for all views: vertices [V, 3]")
    o3d = import_backend("open3d")
    device = vertices.device
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor(vertices.detach().float().cpu().numpy()),
        o3d.core.Tensor(faces.detach().cpu().numpy().astype("uint32")),
    )
    ex, ks = extrinsics.detach().float().cpu(), intrinsics.detach().float().cpu()
    px = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    py = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    v_img, u_img = torch.meshgrid(py, px, indexing="ij")
    ids, uvs, depths = [], [], []
    for b in range(ex.shape[0]):
        x = (u_img - ks[b, 0, 2]) / ks[b, 0, 0]
        y = (v_img - ks[b, 1, 2]) / ks[b, 1, 1]
        if bool(ortho[b]):
            origin = torch.stack([x, y, torch.full_like(x, near)], dim=-1)
            direction = torch.tensor([0.0, 0.0, 1.0]).expand_as(origin)
        else:
            direction = torch.stack([x, y, torch.ones_like(x)], dim=-1)
            origin = direction * near
        rot, trans = ex[b, :3, :3], ex[b, :3, 3]
        rays = torch.cat([(origin - trans) @ rot, direction @ rot], dim=-1)  # camera -> world: R^T (p - t)
        hit = scene.cast_rays(o3d.core.Tensor(rays.reshape(-1, 6).contiguous().numpy()))
        prim = torch.from_numpy(hit["primitive_ids"].numpy().astype("int64"))
        miss = prim == int(scene.INVALID_ID)
        ids.append(torch.where(miss, -1, prim).reshape(height, width))
        uvs.append(torch.from_numpy(hit["primitive_uvs"].numpy()).reshape(height, width, 2))
        depths.append(torch.from_numpy(hit["t_hit"].numpy()).reshape(height, width) + near)
    face_id = torch.stack(ids).to(device)
    if not with_bary:
        return RasterOutput(face_id, None, None)
    uv = torch.stack(uvs).to(device)
    hit = face_id >= 0
    bary = torch.stack([1 - uv[..., 0] - uv[..., 1], uv[..., 0], uv[..., 1]], dim=-1)
    depth = torch.where(hit, torch.stack(depths).to(device), 0.0)
    return RasterOutput(face_id, torch.where(hit[..., None], bary, 0.0), depth)
