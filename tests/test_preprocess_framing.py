"""Framing geometry against hand-computed cases (upstream load_img_face / preprocess_image)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from synchuman.preprocess.framing import (
    alpha_bbox,
    composite_on_white,
    conditioning_box,
    conditioning_crop,
    face_crop,
    frame_multiview,
)

GREEN = (0, 200, 0)
RED = (220, 0, 0)


def person_rect(width: int, height: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Transparent width x height image with an opaque green rectangle over x0..x1, y0..y1 (inclusive)."""
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[y0 : y1 + 1, x0 : x1 + 1] = (*GREEN, 255)
    return rgba


def test_alpha_bbox() -> None:
    alpha = np.zeros((10, 12), np.uint8)
    assert alpha_bbox(alpha) is None
    alpha[2, 3] = 1
    alpha[7, 9] = 200
    assert alpha_bbox(alpha) == (3, 2, 9, 7)
    assert alpha_bbox(alpha, threshold=150) == (9, 7, 9, 7)


def test_frame_multiview_hand_computed() -> None:
    # bbox x 10..59, y 20..179 in a 100x200 image. Upstream crops (10, 20, 59, 179) with exclusive
    # right/bottom edges: 49 x 159. scale = 768/159; new size (int(4.8302*49), int(4.8302*159)) = (236, 768);
    # pasted at ((768-236)//2, 0) = (266, 0).
    rgba = person_rect(100, 200, 10, 20, 59, 179)
    rgba[20:180, 59] = (*RED, 255)  # the last column is dropped by the exclusive crop: no red may survive
    rgba[179, 10:60] = (*RED, 255)  # and so is the last row
    framed = frame_multiview(rgba)
    assert framed.shape == (768, 768, 4) and framed.dtype == np.uint8
    alpha = framed[:, :, 3]
    assert alpha[:, :266].max() == 0 and alpha[:, 266 + 236 :].max() == 0
    assert (alpha[:, 268 : 266 + 234] == 255).all()
    assert (framed[5:-5, 270:498, :3] == GREEN).all()
    assert framed[:, :, 0].max() == 0  # no red anywhere


def test_frame_multiview_wide_person_is_centred_vertically() -> None:
    # bbox x 0..200, y 0..100 -> crop 200 x 100 -> (768, 384) pasted at (0, 192)
    framed = frame_multiview(person_rect(300, 150, 0, 0, 200, 100))
    rows = np.flatnonzero(framed[:, :, 3].any(axis=1))
    cols = np.flatnonzero(framed[:, :, 3].any(axis=0))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (192, 192 + 383, 0, 767)


def test_frame_multiview_rejects_empty_mask() -> None:
    with pytest.raises(ValueError, match="empty"):
        frame_multiview(np.zeros((50, 50, 4), np.uint8))


def test_face_crop_hand_computed() -> None:
    framed = np.zeros((768, 768, 4), np.uint8)
    framed[:, :] = (0, 0, 255, 255)
    framed[0:256, 256:512] = (*RED, 255)  # the face box
    framed[100, 300] = (255, 255, 255, 255)  # a marker: (300, 100) -> ((300-256)*3, 100*3) = (132, 300)
    face = face_crop(framed)
    assert face.shape == (768, 768, 4)
    red = (face[:, :, :3] == RED).all(axis=2)
    assert red.mean() > 0.98  # the whole view is the face box (only the marker's neighbourhood differs)
    near = face[298:304, 130:137, 1]
    assert near.max() > 200 and face[50, 50, 1] == 0


def test_composite_on_white() -> None:
    rgba = np.array([[[200, 100, 0, 0], [200, 100, 0, 255], [200, 100, 0, 51]]], np.uint8)
    out = composite_on_white(rgba)
    assert out.dtype == np.float32 and out.shape == (1, 3, 3)
    np.testing.assert_allclose(out[0, 0], [1, 1, 1])
    np.testing.assert_allclose(out[0, 1], [200 / 255, 100 / 255, 0], rtol=1e-6)
    np.testing.assert_allclose(out[0, 2], 0.2 * np.array([200, 100, 0]) / 255 + 0.8, rtol=1e-6)


def test_conditioning_box_hand_computed() -> None:
    # alpha > 204 over x 100..299, y 50..449 (pixels at exactly 204 do not count).
    # centre (199.5, 249.5); side int(399 * 1.2) = 478; half 239;
    # box (-39.5, 10.5, 438.5, 488.5) -> Python round (half to even) -> (-40, 10, 438, 488)
    alpha = np.zeros((500, 600), np.uint8)
    alpha[50:450, 100:300] = 255
    alpha[0:500, 0:50] = 204
    assert conditioning_box(alpha) == (-40, 10, 438, 488)


def test_conditioning_crop_hand_computed() -> None:
    # person x 100..299, y 100..299 in 400x400: centre (199.5, 199.5), side int(199*1.2) = 238, half 119,
    # box (80.5, 80.5, 318.5, 318.5) -> (80, 80, 318, 318): 238 px scaled to 518, person starts at
    # (100-80)*518/238 = 43.5 px from the top/left edge.
    cond = conditioning_crop(person_rect(400, 400, 100, 100, 299, 299))
    assert cond.shape == (518, 518, 3) and cond.dtype == np.uint8
    assert tuple(cond[259, 259]) == GREEN
    # The person spans source 100..300 (exclusive) of the box 80..318: output 43.5 .. 478.8 (the inclusive
    # max in the midpoint makes it asymmetric, as upstream). Lanczos reaches 6.5 output pixels past an edge.
    assert cond[:36, :].max() == 0 and cond[:, :36].max() == 0
    assert cond[-31:, :].max() == 0 and cond[:, -31:].max() == 0
    assert (cond[52:466, 52:466] == GREEN).all()
    assert cond[:, 44, 1].mean() > 80 and cond[:, 42, 1].mean() < 80  # the edge sits at 43.5


def test_conditioning_crop_premultiplies_and_matches_reference() -> None:
    rng = np.random.default_rng(3)
    rgba = np.zeros((300, 260, 4), np.uint8)
    rgba[40:280, 60:200, :3] = rng.integers(0, 256, (240, 140, 3))
    rgba[40:280, 60:200, 3] = rng.integers(205, 256, (240, 140))
    rgba[40:60, 60:200, 3] = 90  # a translucent band: premultiplied, and not part of the > 0.8 box
    # The reference: the upstream steps written with plain Pillow on the whole image.
    alpha = rgba[:, :, 3]
    ys, xs = np.nonzero(alpha > 0.8 * 255)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max(), ys.max()
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    size = int(max(x1 - x0, y1 - y0) * 1.2)
    box = (cx - size // 2, cy - size // 2, cx + size // 2, cy + size // 2)
    ref = Image.fromarray(rgba, "RGBA").crop(box).resize((518, 518), Image.Resampling.LANCZOS)
    ref = np.asarray(ref).astype(np.float32) / 255
    ref = (ref[:, :, :3] * ref[:, :, 3:4] * 255).astype(np.uint8)
    np.testing.assert_array_equal(conditioning_crop(rgba), ref)


def test_frame_multiview_matches_pillow_reference() -> None:
    rng = np.random.default_rng(4)
    rgba = np.zeros((333, 251, 4), np.uint8)
    rgba[17:301, 33:240] = rng.integers(0, 256, (284, 207, 4))
    rgba[17:301, 33:240, 3] |= 1
    image = Image.fromarray(rgba, "RGBA")
    ys, xs = np.nonzero(rgba[:, :, 3])
    crop = image.crop((xs.min(), ys.min(), xs.max(), ys.max()))
    scale = 768 / max(crop.size)
    crop = crop.resize((int(scale * crop.width), int(scale * crop.height)))
    ref = Image.new("RGBA", (768, 768), 0)
    ref.paste(crop, ((768 - crop.width) // 2, (768 - crop.height) // 2))
    np.testing.assert_array_equal(frame_multiview(rgba), np.asarray(ref))


def test_conditioning_rejects_translucent_only_mask() -> None:
    rgba = person_rect(64, 64, 10, 10, 50, 50)
    rgba[:, :, 3] //= 2
    with pytest.raises(ValueError, match="80%"):
        conditioning_crop(rgba)
