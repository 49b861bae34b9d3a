"""Previews of the textured mesh, rendered with the project's rasteriser (:mod:`synchuman.geometry.raster`) on
the mesh's device: a thumbnail from the front 3/4 view and a turntable (one turn around the vertical axis),
encoded as PNG, MP4 (H.264, PyAV) and animated WebP (Pillow).

Look: perspective camera (30 degree field of view) framing the mesh's bounding sphere, pitched 10 degrees
down; texture colour times soft light (ambient 0.45 + 0.55 Lambert from a light above the camera, on smooth
vertex normals), on a neutral light grey background; rendered at twice the size and averaged down
(anti-aliasing).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from synchuman.geometry import camera
from synchuman.geometry.raster import interpolate, rasterize
from synchuman.postprocess.bake import sample_texture

#: Background colour (linear 0..1 RGB, a neutral light grey) and the light's ambient share.
BACKGROUND = (0.92, 0.92, 0.93)
AMBIENT = 0.45
#: Yaw of the front view (the generated front view's azimuth) and the thumbnail's turn from it (3/4 view).
FRONT_YAW = -math.pi
THREE_QUARTER = math.pi / 4
PITCH = math.radians(10.0)
FOV = math.radians(30.0)
SUPERSAMPLE = 2
#: Turntable frame rate (frames per second); 30 frames make a 3 s turn.
FPS = 10


@dataclass
class PreviewMesh:
    """A textured mesh on the render device.

    Attributes:
        vertices: ``[V, 3]`` float32 (z-up, box units); faces ``[F, 3]`` long; uvs ``[V, 2]`` (v up);
        normals: ``[V, 3]`` unit vertex normals; texture ``[T, T, 3]`` float32 in [0, 1], row 0 at ``v = 1``.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    uvs: torch.Tensor
    normals: torch.Tensor
    texture: torch.Tensor


def preview_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray,
    texture: np.ndarray,
    vertex_map: np.ndarray,
    device: torch.device,
) -> PreviewMesh:
    """The :class:`PreviewMesh` of an atlas mesh; normals are averaged over ``vertex_map`` (the welded vertex
    of each atlas vertex), so that chart seams do not show as creases.

    Args: vertices ``[V, 3]``, faces ``[F, 3]``, uvs ``[V, 2]``, vertex_map ``[V]``; texture ``[T, T, 3]``
    uint8.
    """
    v = torch.as_tensor(np.asarray(vertices, dtype=np.float32), device=device)
    f = torch.as_tensor(np.asarray(faces, dtype=np.int64), device=device)
    welded = torch.as_tensor(np.asarray(vertex_map, dtype=np.int64), device=device)
    corners = v[f]
    face_normal = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    accum = torch.zeros(int(welded.max()) + 1, 3, device=device)
    for k in range(3):
        accum.index_add_(0, welded[f[:, k]], face_normal)
    normals = functional.normalize(accum[welded], dim=-1)
    tex = torch.as_tensor(texture, device=device).float() / 255
    uv = torch.as_tensor(np.asarray(uvs, dtype=np.float32), device=device)
    return PreviewMesh(v, f, uv, normals, tex)


def cameras(mesh: PreviewMesh, yaws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(extrinsics [N, 4, 4], intrinsics [N, 3, 3], light directions [N, 3])`` of cameras at ``yaws [N]``
    (radians, :func:`~synchuman.geometry.camera.orbit_eye` convention) around the mesh's bounding sphere."""
    device = mesh.vertices.device
    lo, hi = mesh.vertices.amin(0), mesh.vertices.amax(0)
    centre = (lo + hi) / 2
    radius = float((mesh.vertices - centre).norm(dim=-1).max())
    distance = 1.05 * radius / math.sin(FOV / 2)
    yaws = yaws.to(device=device, dtype=torch.float32)
    direction = camera.orbit_eye(yaws, torch.full_like(yaws, PITCH), 1.0)
    eye = centre + distance * direction
    up = torch.tensor([0.0, 0.0, 1.0], device=device).expand_as(eye)
    extrinsics = camera.look_at(eye, centre.expand_as(eye), up)
    intrinsics = camera.intrinsics_from_fov(FOV).to(device).expand(len(yaws), 3, 3)
    light = functional.normalize(direction + torch.tensor([0.0, 0.0, 0.6], device=device), dim=-1)
    return extrinsics, intrinsics, light


def render(
    mesh: PreviewMesh, yaws: torch.Tensor, size: int, batch: int = 4, backend: str = "torch"
) -> np.ndarray:
    """Render ``[N, size, size, 3]`` uint8 frames from the cameras of :func:`cameras`.

    ``batch``: views rasterised together (memory: about ``batch * (2 size)^2 * 60`` bytes); ``backend``: the
    rasteriser (:func:`~synchuman.geometry.raster.rasterize`).
    """
    extrinsics, intrinsics, light = cameras(mesh, yaws)
    big = size * SUPERSAMPLE
    background = torch.tensor(BACKGROUND, device=mesh.vertices.device)
    frames = []
    for start in range(0, len(yaws), batch):
        part = slice(start, start + batch)
        out = rasterize(
            mesh.vertices, mesh.faces, extrinsics[part], intrinsics[part], big, big, backend=backend
        )
        uv = interpolate(mesh.uvs, mesh.faces, out)
        normal = functional.normalize(interpolate(mesh.normals, mesh.faces, out), dim=-1)
        hit = out.face_id >= 0
        colour = sample_texture(mesh.texture, uv[hit])
        lambert = (normal[hit] * light[part][:, None, None, :].expand_as(normal)[hit]).sum(-1).abs()
        shaded = colour * (AMBIENT + (1 - AMBIENT) * lambert)[:, None]
        image = background.expand(*hit.shape, 3).clone()
        image[hit] = shaded
        small = functional.avg_pool2d(image.permute(0, 3, 1, 2), SUPERSAMPLE).permute(0, 2, 3, 1)
        frames.append((small.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy())
        del out, uv, normal, image
    return np.concatenate(frames)


def thumbnail(mesh: PreviewMesh, size: int = 512, backend: str = "torch") -> np.ndarray:
    """``[size, size, 3]`` uint8 front 3/4 view."""
    return render(mesh, torch.tensor([FRONT_YAW + THREE_QUARTER]), size, backend=backend)[0]


def turntable(mesh: PreviewMesh, frames: int = 30, size: int = 256, backend: str = "torch") -> np.ndarray:
    """``[frames, size, size, 3]`` uint8: one turn, starting at the front view."""
    yaws = FRONT_YAW + 2 * math.pi * torch.arange(frames, dtype=torch.float32) / frames
    return render(mesh, yaws, size, backend=backend)


def mp4_bytes(frames: np.ndarray, fps: int = FPS, crf: int = 23) -> bytes:
    """H.264 MP4 (yuv420p) of ``[N, H, W, 3]`` uint8 frames (``H`` and ``W`` even)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for frame in frames:
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def webp_bytes(frames: np.ndarray, fps: int = FPS, quality: int = 80) -> bytes:
    """Looping animated WebP of ``[N, H, W, 3]`` uint8 frames."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(
        buffer,
        format="WEBP",
        save_all=True,
        append_images=images[1:],
        duration=round(1000 / fps),
        loop=0,
        quality=quality,
        method=4,
    )
    return buffer.getvalue()


def render_previews(
    mesh: PreviewMesh, size: int = 512, frames: int = 30, backend: str = "torch"
) -> tuple[np.ndarray, np.ndarray]:
    """``(thumbnail [size, size, 3], turntable [frames, S, S, 3])`` uint8: the turntable is half of ``size``
    rounded to even pixels (256^2 for 512), ``frames`` at :data:`FPS`."""
    return thumbnail(mesh, size, backend), turntable(mesh, frames, max(64, size // 4 * 2), backend)


def preview_files(thumb: np.ndarray, spin: np.ndarray) -> dict[str, bytes]:
    """``{"preview.png", "turntable.mp4", "turntable.webp"}`` of rendered previews
    (:func:`render_previews`)."""
    from synchuman.postprocess.export import png_bytes

    return {
        "preview.png": png_bytes(thumb),
        "turntable.mp4": mp4_bytes(spin),
        "turntable.webp": webp_bytes(spin),
    }
