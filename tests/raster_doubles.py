"""Stand-ins for the optional rasteriser packages, written from their documented contracts (small scenes).

- :func:`fake_open3d`: ``open3d.t.geometry.RaycastingScene`` (``add_triangles``, ``cast_rays`` returning
  ``t_hit`` in units of the ray direction's length (inf on a miss), ``primitive_ids`` (``INVALID_ID`` on a
  miss) and ``primitive_uvs`` ``(u, v)`` with hit ``= (1 - u - v) a + u b + v c``) and ``open3d.core.Tensor``.
- :func:`fake_nvdiffrast`: ``nvdiffrast.torch.rasterize(ctx, pos, tri, resolution)`` on clip-space positions
  ``[B, V, 4]``: pixel centres at NDC ``x = 2 (px + 0.5) / W - 1``, ``y = 2 (py + 0.5) / H - 1`` (row 0 at
  ``y = -1``), output ``(u, v, z/w, triangle_id + 1)`` with perspective-correct ``u``, ``v`` weighting
  corners 0 and 1, the smallest ``z/w`` winning, 0 everywhere on the background.
Brute force over every pixel and triangle: for meshes of a few hundred faces at a few dozen pixels.
"""

from __future__ import annotations

from types import ModuleType, SimpleNamespace

import numpy as np
import torch


class _O3dTensor:
    def __init__(self, array) -> None:  # noqa: ANN001 - numpy array
        self._array = np.asarray(array)

    def numpy(self) -> np.ndarray:
        return self._array


class _RaycastingScene:
    INVALID_ID = 2**32 - 1

    def __init__(self) -> None:
        self.tris = np.zeros((0, 3, 3), np.float32)

    def add_triangles(self, vertices: _O3dTensor, triangles: _O3dTensor) -> int:
        self.tris = vertices.numpy()[triangles.numpy().astype(np.int64)].astype(np.float64)
        return 0

    def cast_rays(self, rays: _O3dTensor) -> dict[str, _O3dTensor]:
        r = rays.numpy().astype(np.float64)
        origin, direction = r[:, None, :3], r[:, None, 3:]
        a, b, c = (self.tris[None, :, i] for i in range(3))
        e1, e2 = b - a, c - a
        p = np.cross(direction, e2)
        det = (e1 * p).sum(-1)
        ok = np.abs(det) > 1e-12
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        s = origin - a
        u = (s * p).sum(-1) * inv
        q = np.cross(s, e1)
        v = (direction * q).sum(-1) * inv
        t = (e2 * q).sum(-1) * inv
        valid = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
        t = np.where(valid, t, np.inf)
        best = t.argmin(axis=1)
        rows = np.arange(len(r))
        t_best = t[rows, best]
        hit = np.isfinite(t_best)
        uvs = np.stack([u[rows, best], v[rows, best]], axis=-1) * hit[:, None]
        return {
            "t_hit": _O3dTensor(t_best.astype(np.float32)),
            "primitive_ids": _O3dTensor(np.where(hit, best, self.INVALID_ID).astype(np.uint32)),
            "primitive_uvs": _O3dTensor(uvs.astype(np.float32)),
        }


def fake_open3d() -> ModuleType:
    module = ModuleType("open3d")
    module.t = SimpleNamespace(geometry=SimpleNamespace(RaycastingScene=_RaycastingScene))  # type: ignore[attr-defined]
    module.core = SimpleNamespace(Tensor=_O3dTensor)  # type: ignore[attr-defined]
    return module


class _RasterizeCudaContext:
    def __init__(self, device=None) -> None:  # noqa: ANN001 - as the real one
        self.device = device


def _nv_rasterize(ctx, pos, tri, resolution, ranges=None, grad_db=True):  # noqa: ANN001, ANN202
    height, width = resolution
    views = pos.shape[0]
    x = (2 * (torch.arange(width, dtype=torch.float64) + 0.5) / width - 1)[None, :].expand(height, width)
    y = (2 * (torch.arange(height, dtype=torch.float64) + 0.5) / height - 1)[:, None].expand(height, width)
    px, py = x.reshape(-1, 1), y.reshape(-1, 1)  # [P, 1]
    out = torch.zeros(views, height * width, 4)
    for b in range(views):
        corners = pos[b].double()[tri.long()]  # [F, 3, 4]
        w = corners[..., 3]
        ndc = corners[..., :3] / w[..., None]
        (x0, x1, x2), (y0, y1, y2) = ndc[..., 0].T, ndc[..., 1].T
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        l0 = ((x1 - px) * (y2 - py) - (x2 - px) * (y1 - py)) / area
        l1 = ((x2 - px) * (y0 - py) - (x0 - px) * (y2 - py)) / area
        l2 = 1 - l0 - l1
        inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0) & (area.abs() > 1e-12) & (w > 0).all(dim=1)
        zw = l0 * ndc[:, 0, 2] + l1 * ndc[:, 1, 2] + l2 * ndc[:, 2, 2]
        zw = torch.where(inside & (zw >= -1) & (zw <= 1), zw, torch.inf)
        best = zw.argmin(dim=1)
        rows = torch.arange(len(px))
        hit = torch.isfinite(zw[rows, best])
        p0, p1, p2 = (lam[rows, best] / w[best, i] for i, lam in enumerate((l0, l1, l2)))
        total = p0 + p1 + p2
        rast = torch.stack([p0 / total, p1 / total, zw[rows, best], (best + 1).double()], dim=-1)
        out[b] = torch.where(hit[:, None], rast, 0.0).float()
    return out.reshape(views, height, width, 4), None


def fake_nvdiffrast() -> ModuleType:
    module = ModuleType("nvdiffrast.torch")
    module.RasterizeCudaContext = _RasterizeCudaContext  # type: ignore[attr-defined]
    module.rasterize = _nv_rasterize  # type: ignore[attr-defined]
    return module
