"""Camera helpers.

Conventions: world space is z-up; camera space is OpenCV (x right, y down, z forward). ``extrinsics`` are
``[..., 4, 4]`` world-to-camera matrices. ``intrinsics`` are *normalised* ``[..., 3, 3]`` matrices
mapping camera coordinates to image coordinates ``(u, v)`` in ``[0, 1]`` (``u`` right, ``v`` down, row 0 at
the top): perspective ``u = fx * x / z + cx``; orthographic ``u = fx * x + cx`` (``fx`` = 1 / visible width
in world units).
"""

from __future__ import annotations

import math

import torch


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """World-to-camera extrinsics ``[..., 4, 4]`` for cameras at ``eye [..., 3]`` looking at ``target [...,
    3]``.

    ``up [..., 3]`` is the world direction that appears upwards in the image (must not be parallel to the
    view).
    """
    eye, target, up = torch.broadcast_tensors(eye, target, up)
    z = torch.nn.functional.normalize(target - eye, dim=-1)
    x = torch.linalg.cross(z, up, dim=-1)
    if bool((x.norm(dim=-1) < 1e-8).any()):
        raise ValueError(
            "look_at: the up vector is parallel to the viewing direction; pick another up vector"
        )
    x = torch.nn.functional.normalize(x, dim=-1)
    y = torch.linalg.cross(z, x, dim=-1)
    rot = torch.stack([x, y, z], dim=-2)
    out = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    out[..., :3, :3] = rot
    out[..., :3, 3] = -(rot @ eye.unsqueeze(-1)).squeeze(-1)
    out[..., 3, 3] = 1.0
    return out


def intrinsics_from_fov(
    fov_x: torch.Tensor | float, fov_y: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Normalised perspective intrinsics ``[..., 3, 3]`` from full field-of-view angles in radians."""
    fov_x = torch.as_tensor(fov_x, dtype=torch.float32)
    fov_y = fov_x if fov_y is None else torch.as_tensor(fov_y, dtype=fov_x.dtype, device=fov_x.device)
    fov_x, fov_y = torch.broadcast_tensors(fov_x, fov_y)
    if bool(((fov_x <= 0) | (fov_x >= math.pi) | (fov_y <= 0) | (fov_y >= math.pi)).any()):
        raise ValueError("intrinsics_from_fov: field of view must lie in (0, pi) radians")
    out = torch.zeros(*fov_x.shape, 3, 3, dtype=fov_x.dtype, device=fov_x.device)
    out[..., 0, 0] = 0.5 / torch.tan(fov_x / 2)
    out[..., 1, 1] = 0.5 / torch.tan(fov_y / 2)
    out[..., 0, 2] = 0.5
    out[..., 1, 2] = 0.5
    out[..., 2, 2] = 1.0
    return out


def fov_from_intrinsics(intrinsics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full fields of view ``(fov_x, fov_y)`` in radians of centred normalised intrinsics ``[..., 3, 3]``."""
    return 2 * torch.atan(0.5 / intrinsics[..., 0, 0]), 2 * torch.atan(0.5 / intrinsics[..., 1, 1])


def orthographic_intrinsics(left: float, right: float, top: float, bottom: float) -> torch.Tensor:
    """Normalised orthographic intrinsics ``[3, 3]`` seeing camera x in ``[left, right]``, y in ``[top,
    bottom]``.

    (Camera y points down, so ``top < bottom``.)
    """
    if right <= left or bottom <= top:
        raise ValueError("orthographic_intrinsics: need left < right and top < bottom (camera y points down)")
    out = torch.eye(3)
    out[0, 0] = 1.0 / (right - left)
    out[1, 1] = 1.0 / (bottom - top)
    out[0, 2] = -left / (right - left)
    out[1, 2] = -top / (bottom - top)
    return out


def perspective_projection(intrinsics: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """OpenGL-style clip matrix ``[..., 4, 4]`` for OpenCV camera coordinates and normalised intrinsics.

    ``clip = P @ [x, y, z, 1]``; after division by ``w = z``, NDC ``x = 2u - 1``, ``y = 2v - 1`` (so NDC
    y=-1 is
    image row 0, the nvdiffrast convention) and NDC ``z`` maps ``[near, far]`` to ``[-1, 1]``.
    """
    fx, fy, cx, cy = (
        intrinsics[..., 0, 0],
        intrinsics[..., 1, 1],
        intrinsics[..., 0, 2],
        intrinsics[..., 1, 2],
    )
    out = torch.zeros(*intrinsics.shape[:-2], 4, 4, dtype=intrinsics.dtype, device=intrinsics.device)
    out[..., 0, 0] = 2 * fx
    out[..., 0, 2] = 2 * cx - 1
    out[..., 1, 1] = 2 * fy
    out[..., 1, 2] = 2 * cy - 1
    out[..., 2, 2] = (far + near) / (far - near)
    out[..., 2, 3] = -2 * far * near / (far - near)
    out[..., 3, 2] = 1.0
    return out


def orthographic_projection(intrinsics: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """Clip matrix ``[..., 4, 4]`` (``w = 1``) for orthographic normalised intrinsics; same NDC as above."""
    fx, fy, cx, cy = (
        intrinsics[..., 0, 0],
        intrinsics[..., 1, 1],
        intrinsics[..., 0, 2],
        intrinsics[..., 1, 2],
    )
    out = torch.zeros(*intrinsics.shape[:-2], 4, 4, dtype=intrinsics.dtype, device=intrinsics.device)
    out[..., 0, 0] = 2 * fx
    out[..., 0, 3] = 2 * cx - 1
    out[..., 1, 1] = 2 * fy
    out[..., 1, 3] = 2 * cy - 1
    out[..., 2, 2] = 2 / (far - near)
    out[..., 2, 3] = -(far + near) / (far - near)
    out[..., 3, 3] = 1.0
    return out


def orbit_eye(yaw: torch.Tensor, pitch: torch.Tensor, radius: float) -> torch.Tensor:
    """Camera positions ``[..., 3]`` on a z-up sphere: ``r * (sin(yaw) cos(pitch), cos(yaw) cos(pitch),
    sin(pitch))``."""
    return radius * torch.stack(
        [torch.sin(yaw) * torch.cos(pitch), torch.cos(yaw) * torch.cos(pitch), torch.sin(pitch)], dim=-1
    )


def orbit_extrinsics(yaw: torch.Tensor, pitch: torch.Tensor, radius: float) -> torch.Tensor:
    """Extrinsics ``[N, 4, 4]`` of cameras on a sphere of ``radius`` looking at the origin, z up."""
    eye = orbit_eye(yaw, pitch, radius)
    z_up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    y_up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    at_pole = (torch.cos(pitch).abs() < 1e-4)[..., None]  # looking straight up or down: any up vector will do
    return look_at(eye, torch.zeros_like(eye), torch.where(at_pole, y_up, z_up))


def radical_inverse_base2(n: torch.Tensor) -> torch.Tensor:
    """Van der Corput sequence in base 2 of non-negative integers ``n`` (any shape), as float64."""
    n = n.to(torch.int64)
    out = torch.zeros(n.shape, dtype=torch.float64, device=n.device)
    scale = 0.5
    for _ in range(32):
        out = out + (n & 1).double() * scale
        n = n >> 1
        scale /= 2
    return out


def sphere_hammersley(num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` evenly spread directions as ``(yaw, pitch)`` float32 ``[num]`` (radians).

    The i-th point uses ``u = i / num`` (uniform in height: ``pitch = acos(1 - 2u) - pi/2``) and the base-2
    radical
    inverse of ``i`` for the azimuth (``yaw = 2 pi r2(i)``), the upstream view layout.
    """
    if num <= 0:
        raise ValueError("sphere_hammersley: num must be positive")
    i = torch.arange(num)
    u = i.double() / num
    pitch = torch.arccos(1 - 2 * u) - math.pi / 2
    yaw = radical_inverse_base2(i) * 2 * math.pi
    return yaw.float(), pitch.float()
