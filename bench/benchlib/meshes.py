"""Synthetic meshes, Gaussians and generated views of a person-like body (marching cubes of capsules and
spheres; boxes), shared by the post-processing benches and tests. Coordinates in the [-0.5, 0.5] box, z up."""

from __future__ import annotations

import math

import numpy as np
import torch

from synchuman.geometry.raster import interpolate, rasterize
from synchuman.models.gaussians import SH_C0, Gaussians
from synchuman.postprocess.pipeline import MIRRORED_VIEWS, GeneratedViews, generated_bake_views

# (start, end, radius) capsules of a standing person in the [-0.5, 0.5] box, z up
_BODY_CAPSULES = (
    ((0.0, 0.0, -0.02), (0.0, 0.0, 0.22), 0.11),  # torso
    ((-0.06, 0.0, -0.05), (-0.07, 0.0, -0.44), 0.05),  # legs
    ((0.06, 0.0, -0.05), (0.07, 0.0, -0.44), 0.05),
    ((-0.13, 0.0, 0.24), (-0.32, 0.0, 0.02), 0.035),  # arms
    ((0.13, 0.0, 0.24), (0.32, 0.0, 0.02), 0.035),
    ((0.0, 0.0, 0.26), (0.0, 0.0, 0.31), 0.04),  # neck
)
_HEAD = ((0.0, 0.0, 0.38), 0.075)


def body_sdf(points: torch.Tensor) -> torch.Tensor:
    """Signed distance ``[...]`` of the capsule person at world points ``[..., 3]`` (negative inside)."""
    head = torch.tensor(_HEAD[0], device=points.device)
    sdf = (points - head).norm(dim=-1) - _HEAD[1]
    for a, b, r in _BODY_CAPSULES:
        a_t, b_t = torch.tensor(a, device=points.device), torch.tensor(b, device=points.device)
        ab = b_t - a_t
        t = (((points - a_t) @ ab) / (ab @ ab)).clamp(0, 1)
        sdf = torch.minimum(sdf, (points - (a_t + t[..., None] * ab)).norm(dim=-1) - r)
    return sdf


def body_mesh(resolution: int = 64, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes person of capsules and a sphere head: ``(vertices [V, 3] float32, faces [F, 3] int64)``.

    About ``2 * resolution^2`` triangles (~4.5k at 48, ~240k at 340). The signed distance is evaluated on
    ``device`` slice by slice; marching cubes runs on the CPU (scikit-image).
    """
    from skimage.measure import marching_cubes

    axis = torch.linspace(-0.5, 0.5, resolution, device=device)
    yy, zz = torch.meshgrid(axis, axis, indexing="ij")
    slices = [body_sdf(torch.stack([x.expand_as(yy), yy, zz], dim=-1)).cpu() for x in axis]
    sdf = torch.stack(slices).numpy()
    verts, faces, _, _ = marching_cubes(sdf, 0.0)
    verts = verts / (resolution - 1) - 0.5
    return verts.astype(np.float32), faces.astype(np.int64)


def pattern(points: torch.Tensor) -> torch.Tensor:
    """Known smooth colour ``[N, 3]`` in [0.15, 0.85] of world positions ``[N, 3]``."""
    phase = torch.tensor([0.0, 2.0, 4.0], device=points.device)
    direction = torch.tensor([1.0, 0.3, 0.2], device=points.device)
    return 0.5 + 0.35 * torch.sin(2 * math.pi * 1.5 * (points @ direction)[..., None] + phase)


def render_pattern(
    verts: torch.Tensor, faces: torch.Tensor, extr: torch.Tensor, intr: torch.Tensor, size: int, ortho: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[B, size, size, 3]`` of the mesh painted with :func:`pattern` on white; masks."""
    out = rasterize(verts, faces, extr, intr, size, size, ortho)
    pos = interpolate(verts, faces, out)
    colour = pattern(pos.reshape(-1, 3)).reshape(*pos.shape)
    return torch.where(out.mask[..., None], colour, 1.0), out.mask


def generated_views(verts: torch.Tensor, faces: torch.Tensor, size: int) -> GeneratedViews:
    """The 4 body views + face view rendered with the pipeline's cameras (views 2, 3 stored mirrored)."""
    empty = GeneratedViews(np.zeros((5, size, size, 3), np.uint8))
    images = []
    for i, view in enumerate(generated_bake_views(empty, verts.device)):
        rgb, _ = render_pattern(verts, faces, view.extrinsics[None], view.intrinsics[None], size, True)
        image = (rgb[0] * 255).round().to(torch.uint8).cpu().numpy()
        images.append(image[:, ::-1] if i in MIRRORED_VIEWS else image)
    return GeneratedViews(np.ascontiguousarray(np.stack(images)))


def surface_gaussians(
    verts: torch.Tensor, faces: torch.Tensor, count: int, scale: float, seed: int = 0
) -> Gaussians:
    """``count`` isotropic Gaussians sampled uniformly on the surface, coloured with :func:`pattern`."""
    gen = torch.Generator(device=verts.device).manual_seed(seed)
    tri = verts[faces]
    area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1).norm(dim=-1)
    pick = torch.multinomial(area, count, replacement=True, generator=gen)
    r = torch.rand(count, 2, generator=gen, device=verts.device)
    flip = r.sum(dim=1) > 1
    r = torch.where(flip[:, None], 1 - r, r)
    xyz = tri[pick, 0] + r[:, :1] * (tri[pick, 1] - tri[pick, 0]) + r[:, 1:] * (tri[pick, 2] - tri[pick, 0])
    quats = torch.zeros(count, 4, device=verts.device)
    quats[:, 0] = 1
    return Gaussians(
        xyz=xyz,
        scales=torch.full((count, 3), scale, device=verts.device),
        quats=quats,
        opacities=torch.full((count, 1), 0.9, device=verts.device),
        features_dc=(pattern(xyz) - 0.5) / SH_C0,
    )


def box_mesh(half: float, subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned closed cube of half-size ``half``, each face split into ``2 * n^2`` triangles."""
    n = subdivisions
    verts, faces = [], []
    g = np.linspace(-half, half, n + 1)
    for axis in range(3):
        for sign in (-1.0, 1.0):
            u, v = np.meshgrid(g, g, indexing="ij")
            p = np.zeros((n + 1, n + 1, 3))
            others = [i for i in range(3) if i != axis]
            p[..., axis] = sign * half
            p[..., others[0]], p[..., others[1]] = u, v
            base = sum(len(x) for x in verts)
            verts.append(p.reshape(-1, 3))
            idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1) + base
            a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
            quads = np.stack([np.stack([a, b, c], -1), np.stack([a, c, d], -1)], 0).reshape(-1, 3)
            faces.append(quads if sign > 0 else quads[:, ::-1])
    verts_all = np.concatenate(verts)
    faces_all = np.concatenate(faces)
    uniq, inverse = np.unique(np.round(verts_all, 6), axis=0, return_inverse=True)
    return uniq.astype(np.float32), inverse.reshape(-1)[faces_all].astype(np.int64)
