"""Upstream-identical image geometry for both stages.

Every function takes and returns numpy arrays; resampling goes through Pillow exactly as the upstream code
does (Pillow resizes RGBA in premultiplied form: transparent pixels never bleed into the person's edges).

* :func:`frame_multiview`: the 768x768 RGBA stage-1 input: crop to the alpha > 0 bounding box (right and
  bottom edges exclusive, as upstream), scale the longer side to 768 (bicubic), paste centred on a
  transparent canvas.
* :func:`face_crop`: the 5th stage-1 view: region x 256-512, y 0-256 of the framed image, upscaled to 768x768.
* :func:`composite_on_white`: ``rgb * a + (1 - a)``, float32 in [0, 1].
* :func:`conditioning_crop`: the 518x518 DINOv2 input of both stages: square of 1.2x the longer side of the
  alpha > 0.8 bounding box, centred, Lanczos-resized, premultiplied on black, truncated to uint8.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Side of the framed stage-1 input and of the face view, in pixels.
MULTIVIEW_SIZE = 768
#: Face region (left, top, right, bottom) of the framed image.
FACE_BOX = (256, 0, 512, 256)
#: Side of the DINOv2 conditioning crop, in pixels (37 x 14).
CONDITIONING_SIZE = 518
#: Conditioning bounding box: pixels with alpha above this fraction of 255.
CONDITIONING_ALPHA = 0.8
#: Conditioning square side as a multiple of the bounding box's longer side.
CONDITIONING_PAD = 1.2


def _check_rgba(rgba: np.ndarray) -> None:
    if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, 4] RGBA array, got {rgba.dtype} {tuple(rgba.shape)}")


def _crop(rgba: np.ndarray, box: tuple[int, int, int, int]) -> Image.Image:
    """Pillow's ``Image.crop(box)`` (right/bottom exclusive, transparent black outside the image), without
    converting the whole image first."""
    left, top, right, bottom = box
    height, width = rgba.shape[:2]
    out = np.zeros((bottom - top, right - left, 4), np.uint8)
    src_x0, src_y0, src_x1, src_y1 = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
    if src_x1 > src_x0 and src_y1 > src_y0:
        out[src_y0 - top : src_y1 - top, src_x0 - left : src_x1 - left] = rgba[src_y0:src_y1, src_x0:src_x1]
    return Image.fromarray(out, "RGBA")


def alpha_bbox(alpha: np.ndarray, threshold: float = 0.0) -> tuple[int, int, int, int] | None:
    """Inclusive bounding box (min_x, min_y, max_x, max_y) of the pixels with ``alpha > threshold``.

    alpha: [H, W] (any numeric dtype, uint8 units for the threshold). None when no pixel passes.
    """
    rows = np.flatnonzero((alpha > threshold).any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero((alpha[rows[0] : rows[-1] + 1] > threshold).any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def frame_multiview(rgba: np.ndarray, size: int = MULTIVIEW_SIZE) -> np.ndarray:
    """The stage-1 input: the person scaled to ``size`` on its longer side, centred on a transparent canvas.

    rgba: uint8 [H, W, 4] with the person mask in alpha. Returns uint8 [size, size, 4].
    Raises ValueError when the alpha bounding box is thinner than 2 pixels (nothing to frame).
    """
    _check_rgba(rgba)
    box = alpha_bbox(rgba[:, :, 3])
    if box is None or box[2] - box[0] < 1 or box[3] - box[1] < 1:
        raise ValueError("the mask is empty or thinner than 2 pixels: nothing to frame")
    crop = _crop(rgba, box)  # exclusive right/bottom edge, as upstream
    width, height = crop.size
    scale = size / max(width, height)
    crop = crop.resize((max(1, int(scale * width)), max(1, int(scale * height))), Image.Resampling.BICUBIC)
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    canvas.paste(crop, ((size - crop.width) // 2, (size - crop.height) // 2))
    return np.asarray(canvas)


def face_crop(framed: np.ndarray, size: int = MULTIVIEW_SIZE) -> np.ndarray:
    """The face view: :data:`FACE_BOX` of the framed image, bicubic-upscaled to [size, size, 4] uint8."""
    _check_rgba(framed)
    face = Image.fromarray(framed, "RGBA").crop(FACE_BOX)
    return np.asarray(face.resize((size, size), Image.Resampling.BICUBIC))


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """RGB over white: float32 [H, W, 3] in [0, 1], ``rgb * a + (1 - a)`` with a = alpha / 255."""
    _check_rgba(rgba)
    values = rgba.astype(np.float32) / 255.0
    alpha = values[:, :, 3:4]
    return values[:, :, :3] * alpha + (1.0 - alpha)


def conditioning_box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    """The pixel box (left, top, right, bottom; right/bottom exclusive) of the conditioning crop.

    Centre = midpoint of the alpha > 0.8*255 bounding box (float); side = int(1.2 * longer bbox side); the
    float box centre -/+ side//2 is rounded with Python's round (half to even), as Pillow does. The box may
    extend past the image; that area is transparent black. Raises ValueError when no pixel is that opaque.
    """
    box = alpha_bbox(alpha, CONDITIONING_ALPHA * 255)
    if box is None:
        raise ValueError("no pixel of the mask is more than 80% opaque: no conditioning crop")
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = int(max(x1 - x0, y1 - y0) * CONDITIONING_PAD) // 2
    return round(cx - half), round(cy - half), round(cx + half), round(cy + half)


def conditioning_crop(rgba: np.ndarray, size: int = CONDITIONING_SIZE) -> np.ndarray:
    """The DINOv2 input of both stages: uint8 [size, size, 3], the person premultiplied by alpha on black.

    rgba: uint8 [H, W, 4]. See :func:`conditioning_box` for the crop; resampling is Lanczos on the RGBA image,
    then ``uint8(rgb/255 * a/255 * 255)`` (truncating, as upstream).
    """
    _check_rgba(rgba)
    left, top, right, bottom = conditioning_box(rgba[:, :, 3])
    if right - left < 1:
        raise ValueError("the opaque part of the mask is a single pixel: no conditioning crop")
    crop = _crop(rgba, (left, top, right, bottom))
    values = np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS)).astype(np.float32) / 255.0
    return (values[:, :, :3] * values[:, :, 3:4] * 255.0).astype(np.uint8)
