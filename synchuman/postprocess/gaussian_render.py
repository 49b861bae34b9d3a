"""Rendering of 3D Gaussians with the upstream 2D screen-space filter.

Upstream renders with a mip-splatting style rasteriser: ``kernel_size`` (0.1 px^2) is added to the diagonal of
every projected 2D covariance and the opacity is scaled by ``sqrt(det(cov) / det(cov + k I))``. gsplat's
``rasterize_mode="antialiased"`` with ``eps2d=kernel_size`` is the same filter. Colours are SH degree 0
(``0.5 + C0 * features_dc``, clamped at 0), background black.

Backends: ``gsplat`` (CUDA only) and ``torch``, a dense, exact and slow reference for small scenes (tests run
the same code path on CPU).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from synchuman.models.gaussians import Gaussians


def gsplat_available(device: torch.device) -> bool:
    """True when gsplat imports and ``device`` is CUDA."""
    if device.type != "cuda":
        return False
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def render_gaussians(
    gaussians: Gaussians,
    extrinsics: torch.Tensor,
    intrinsics: torch.Tensor,
    resolution: int,
    kernel_size: float = 0.1,
    backend: str = "auto",
    near: float = 0.01,
    far: float = 100.0,
    views_per_batch: int = 16,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Render ``B`` perspective views, ``views_per_batch`` at a time (gsplat's per-batch buffers grow with
    views x Gaussians: 95 views of 600k Gaussians at once need several GB; each view's image is the same
    either way).

    Args:
        gaussians: activated Gaussians (``xyz [N, 3]``, ``scales [N, 3]`` std-devs, ``quats [N, 4]`` wxyz,
            ``opacities [N, 1]``, ``features_dc [N, 3]``) on the target device.
        extrinsics: ``[B, 4, 4]`` world-to-camera (OpenCV); intrinsics ``[B, 3, 3]`` normalised.
        resolution: square image size in pixels.
        backend: ``"gsplat"``, ``"torch"`` or ``"auto"`` (gsplat on CUDA when installed).
        on_step: ``on_step(views done, B)`` after every batch.
    Returns:
        ``(rgb [B, H, W, 3] float32 in [0, 1], alpha [B, H, W] float32, backend used)``.
    """
    device = gaussians.xyz.device
    if backend == "auto":
        backend = "gsplat" if gsplat_available(device) else "torch"
    if backend not in ("gsplat", "torch"):
        raise ValueError(f"render_gaussians: unknown backend {backend!r} (use auto, gsplat or torch)")
    if views_per_batch < 1:
        raise ValueError(f"render_gaussians: views_per_batch must be >= 1, got {views_per_batch}")
    rgbs, alphas = [], []
    for start in range(0, len(extrinsics), views_per_batch):
        views = slice(start, start + views_per_batch)
        rgb, alpha = _render_batch(
            gaussians, extrinsics[views], intrinsics[views], resolution, kernel_size, backend, near, far
        )
        rgbs.append(rgb)
        alphas.append(alpha)
        if on_step is not None:
            on_step(min(start + views_per_batch, len(extrinsics)), len(extrinsics))
    return torch.cat(rgbs), torch.cat(alphas), backend


def _render_batch(
    gaussians: Gaussians,
    extrinsics: torch.Tensor,
    intrinsics: torch.Tensor,
    resolution: int,
    kernel_size: float,
    backend: str,
    near: float,
    far: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of views with ``backend`` (arguments as :func:`render_gaussians`)."""
    device = gaussians.xyz.device
    colors = gaussians.colors.clamp(min=0.0)
    ks = intrinsics.to(device).float().clone()
    ks[:, :2] *= resolution
    viewmats = extrinsics.to(device).float()
    if backend == "gsplat":
        import gsplat

        rgb, alpha, _ = gsplat.rasterization(
            gaussians.xyz,
            gaussians.quats,
            gaussians.scales,
            gaussians.opacities.reshape(-1),
            colors,
            viewmats,
            ks,
            resolution,
            resolution,
            near_plane=near,
            far_plane=far,
            eps2d=kernel_size,
            rasterize_mode="antialiased",
        )  # background: black (gsplat's default)
        return rgb.clamp(0, 1), alpha[..., 0]
    images = [
        _render_torch(gaussians, colors, viewmats[i], ks[i], resolution, kernel_size, near, far)
        for i in range(len(viewmats))
    ]
    return torch.stack([im[0] for im in images]), torch.stack([im[1] for im in images])


def _quat_to_matrix(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[N, 3, 3]`` of quaternions ``[N, 4]`` (wxyz, normalised here)."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)


def _render_torch(
    g: Gaussians,
    colors: torch.Tensor,
    viewmat: torch.Tensor,
    k_px: torch.Tensor,
    resolution: int,
    kernel_size: float,
    near: float,
    far: float,
    pixels_per_chunk: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One view: EWA projection, 2D filter, depth-sorted front-to-back compositing over all Gaussians."""
    rot_w, t_w = viewmat[:3, :3], viewmat[:3, 3]
    cam = g.xyz @ rot_w.T + t_w
    keep = (cam[:, 2] > near) & (cam[:, 2] < far)
    cam, colors = cam[keep], colors[keep]
    rot = _quat_to_matrix(g.quats[keep])
    scales, opacity = g.scales[keep], g.opacities[keep, 0]
    cov_world = rot @ torch.diag_embed(scales * scales) @ rot.transpose(1, 2)
    cov_cam = rot_w @ cov_world @ rot_w.T
    fx, fy, cx, cy = k_px[0, 0], k_px[1, 1], k_px[0, 2], k_px[1, 2]
    x, y, z = cam.unbind(-1)
    jac = torch.zeros(len(cam), 2, 3, dtype=cam.dtype, device=cam.device)
    jac[:, 0, 0], jac[:, 0, 2] = fx / z, -fx * x / (z * z)
    jac[:, 1, 1], jac[:, 1, 2] = fy / z, -fy * y / (z * z)
    cov2d = jac @ cov_cam @ jac.transpose(1, 2)
    det_before = cov2d[:, 0, 0] * cov2d[:, 1, 1] - cov2d[:, 0, 1] ** 2
    cov2d = cov2d + kernel_size * torch.eye(2, device=cam.device)
    det_after = cov2d[:, 0, 0] * cov2d[:, 1, 1] - cov2d[:, 0, 1] ** 2
    opacity = opacity * torch.sqrt((det_before / det_after).clamp(min=0))
    conic = torch.stack([cov2d[:, 1, 1], -cov2d[:, 0, 1], cov2d[:, 0, 0]], dim=-1) / det_after[:, None]
    mean2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)
    order = torch.argsort(z)
    mean2d, conic, opacity, colors = mean2d[order], conic[order], opacity[order], colors[order]
    coords = torch.arange(resolution, device=cam.device, dtype=cam.dtype) + 0.5
    pix = torch.stack(torch.meshgrid(coords, coords, indexing="xy"), dim=-1).reshape(-1, 2)
    rgb_out, alpha_out = [], []
    for start in range(0, len(pix), pixels_per_chunk):
        d = pix[start : start + pixels_per_chunk, None, :] - mean2d[None]
        power = (
            -0.5 * (conic[:, 0] * d[..., 0] ** 2 + conic[:, 2] * d[..., 1] ** 2)
            - conic[:, 1] * d[..., 0] * d[..., 1]
        )
        alpha = (opacity * torch.exp(power.clamp(max=0))).clamp(max=0.999)
        alpha = torch.where(alpha >= 1 / 255, alpha, 0.0)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], dim=1), dim=1)
        weight = alpha * trans
        rgb_out.append(weight @ colors)
        alpha_out.append(weight.sum(dim=1))
    rgb = torch.cat(rgb_out).reshape(resolution, resolution, 3)
    return rgb.clamp(0, 1), torch.cat(alpha_out).reshape(resolution, resolution)
