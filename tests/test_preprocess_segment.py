"""Segmentation quality of the default (offline) segmenter, model selection, and no downloads."""

from __future__ import annotations

import sys
import types

import cv2
import numpy as np
import pytest
from PIL import Image

from synchuman.options import PreprocessOptions
from synchuman.preprocess.decode import DecodedImage
from synchuman.preprocess.errors import SegmenterError
from synchuman.preprocess.pipeline import person_mask
from synchuman.preprocess.segment import RECIPES, available_segmenters, load_segmenter

SIDE = 640  # composites are made at this longer side (keeps the test fast)
MARGIN = 0.1  # background visible around the person, as a fraction of the person's size


def texture_collage(height: int, width: int, rng: np.random.Generator, blur: float = 2.0) -> np.ndarray:
    """Photo-like clutter: 128-px tiles cut from real photographs of brick, grass and gravel, tinted, slightly
    defocused by a Gaussian of ``blur`` pixels (as the background behind a person in focus)."""
    import skimage.data

    tiles = [skimage.data.brick(), skimage.data.grass(), skimage.data.gravel()]
    out = np.zeros((height, width, 3), np.float32)
    for y in range(0, height, 128):
        for x in range(0, width, 128):
            tile = tiles[int(rng.integers(0, 3))].astype(np.float32)
            oy, ox = rng.integers(0, tile.shape[0] - 128), rng.integers(0, tile.shape[1] - 128)
            h, w = min(128, height - y), min(128, width - x)
            out[y : y + h, x : x + w] = tile[oy : oy + h, ox : ox + w, None] * rng.uniform(0.5, 1.1, 3)
    out = np.clip(out, 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(out, (0, 0), blur) if blur else out


def background(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "plain":
        return np.full((height, width, 3), 128, np.uint8)
    if kind == "noise":
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return texture_collage(height, width, rng)


def composite(
    cutout: np.ndarray, kind: str, rng: np.random.Generator, make_background=None
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB photo, bool ground-truth mask): the RGBA cut-out over a background with a margin.

    ``make_background(kind, height, width, rng)`` defaults to :func:`background`."""
    scale = SIDE / max(cutout.shape[:2])
    cutout = cv2.resize(cutout, (round(cutout.shape[1] * scale), round(cutout.shape[0] * scale)),
                        interpolation=cv2.INTER_AREA)
    h, w = cutout.shape[:2]
    my, mx = int(h * MARGIN), int(w * MARGIN)
    photo = (make_background or background)(kind, h + 2 * my, w + 2 * mx, rng).astype(np.float32)
    alpha = cutout[:, :, 3:4] / 255.0
    photo[my : my + h, mx : mx + w] = cutout[:, :, :3] * alpha + photo[my : my + h, mx : mx + w] * (1 - alpha)
    truth = np.zeros(photo.shape[:2], bool)
    truth[my : my + h, mx : mx + w] = cutout[:, :, 3] > 127
    return photo.astype(np.uint8), truth


@pytest.mark.slow
def test_default_segmenter_iou_on_composites(images_dir, segmenter_dir) -> None:
    paths = sorted(images_dir.glob("person_*.png"))
    assert paths, f"no person_*.png in {images_dir}"
    options = PreprocessOptions(segmentation_dir=segmenter_dir)
    scores: dict[str, list[float]] = {}
    for kind in ("plain", "noise", "clutter"):
        rng = np.random.default_rng(0)
        for path in paths:
            photo, truth = composite(np.asarray(Image.open(path).convert("RGBA")), kind, rng)
            mask, _, source, _ = person_mask(DecodedImage(photo, None, "PNG", "RGB"), options)
            assert source == "segmenter:u2netp" and mask.shape == truth.shape and mask.dtype == np.uint8
            predicted = mask > 127
            scores.setdefault(kind, []).append(float((predicted & truth).sum() / (predicted | truth).sum()))
    table = {kind: [round(v, 3) for v in values] for kind, values in scores.items()}
    mean_iou = float(np.mean([v for values in scores.values() for v in values]))
    assert mean_iou >= 0.95, f"mean IoU {mean_iou:.3f} < 0.95: {table}"
    assert np.mean(scores["plain"]) >= 0.97, table


def test_models_are_selected_by_file_name(tmp_path, segmenter_dir) -> None:
    (tmp_path / "u2net_human_seg.onnx").write_bytes((segmenter_dir / "u2netp.onnx").read_bytes())
    assert available_segmenters(tmp_path) == ["u2net_human_seg"]
    segmenter = load_segmenter("u2net_human_seg", tmp_path)
    assert segmenter.recipe == RECIPES["u2net_human_seg"] and segmenter.name == "u2net_human_seg"
    assert load_segmenter("u2net_human_seg", tmp_path) is segmenter  # cached
    photo = np.full((50, 40, 3), 128, np.uint8)
    assert load_segmenter("u2net_human_seg", tmp_path).predict(photo).shape == (50, 40)


def test_missing_model_is_a_clear_error_without_download(tmp_path) -> None:
    with pytest.raises(SegmenterError) as info:
        load_segmenter("birefnet-portrait", tmp_path)
    assert info.value.code == "SEGMENTER_NOT_FOUND"
    assert "birefnet-portrait.onnx" in str(info.value) and "models present: none" in str(info.value)
    with pytest.raises(SegmenterError, match="fetch_segmenter"):
        load_segmenter("", tmp_path)
    with pytest.raises(SegmenterError) as info:
        load_segmenter("../../etc/passwd", tmp_path)
    assert info.value.code == "SEGMENTER_NAME_INVALID"


def test_broken_model_file(tmp_path) -> None:
    (tmp_path / "u2net.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(SegmenterError) as info:
        load_segmenter("u2net", tmp_path)
    assert info.value.code == "SEGMENTER_BROKEN"


def test_rembg_backend_gets_an_explicit_local_session(tmp_path, segmenter_dir, monkeypatch) -> None:
    """rembg (optional) is always given a session built from our folder, so it never downloads."""
    (tmp_path / "u2netp.onnx").write_bytes((segmenter_dir / "u2netp.onnx").read_bytes())
    calls: dict[str, object] = {}

    def new_session(name: str, **kwargs) -> str:
        import os

        calls["home"] = os.environ.get("U2NET_HOME")
        calls["name"] = name
        return "session-object"

    def remove(image, session=None, only_mask=False):
        calls["session"] = session
        calls["only_mask"] = only_mask
        return Image.new("L", image.size, 255)

    fake = types.ModuleType("rembg")
    fake.new_session, fake.remove = new_session, remove
    monkeypatch.setitem(sys.modules, "rembg", fake)
    monkeypatch.delenv("U2NET_HOME", raising=False)
    segmenter = load_segmenter("rembg:u2netp", tmp_path)
    mask = segmenter.predict(np.zeros((30, 20, 3), np.uint8))
    assert calls == {"home": str(tmp_path), "name": "u2netp", "session": "session-object", "only_mask": True}
    assert mask.shape == (30, 20) and mask.min() == 1.0


def test_rembg_backend_without_rembg_installed(tmp_path, segmenter_dir, monkeypatch) -> None:
    (tmp_path / "u2netp.onnx").write_bytes((segmenter_dir / "u2netp.onnx").read_bytes())
    monkeypatch.setitem(sys.modules, "rembg", None)  # import fails
    with pytest.raises(SegmenterError) as info:
        load_segmenter("rembg:u2netp", tmp_path)
    assert info.value.code == "REMBG_NOT_INSTALLED"


def test_alpha_matting_lowers_edge_error_on_a_plain_background(images_dir, segmenter_dir) -> None:
    cutout = np.asarray(Image.open(images_dir / "person_000.png").convert("RGBA"))
    photo, _ = composite(cutout, "plain", np.random.default_rng(0))
    scale = SIDE / max(cutout.shape[:2])
    small = cv2.resize(cutout, (round(cutout.shape[1] * scale), round(cutout.shape[0] * scale)),
                       interpolation=cv2.INTER_AREA)
    h, w = small.shape[:2]
    truth = np.zeros(photo.shape[:2], np.float32)
    truth[int(h * MARGIN) : int(h * MARGIN) + h, int(w * MARGIN) : int(w * MARGIN) + w] = small[:, :, 3] / 255
    edge = (cv2.dilate((truth > 0.02).astype(np.uint8), np.ones((15, 15))) > 0) & (
        cv2.erode((truth > 0.98).astype(np.uint8), np.ones((15, 15))) == 0
    )
    errors = {}
    for matting in (False, True):
        options = PreprocessOptions(segmentation_dir=segmenter_dir, alpha_matting=matting)
        mask, _, _, _ = person_mask(DecodedImage(photo, None, "PNG", "RGB"), options)
        errors[matting] = float(np.abs(mask / 255.0 - truth)[edge].mean())
    assert errors[True] < 0.9 * errors[False], errors


def test_alpha_is_used_ignored_on_request_and_when_empty(segmenter_dir) -> None:
    rgb = np.full((300, 200, 3), 128, np.uint8)
    rgb[60:260, 70:130] = (200, 40, 40)
    alpha = np.zeros((300, 200), np.uint8)
    alpha[60:260, 70:130] = 255
    image = DecodedImage(rgb, alpha, "PNG", "RGBA")
    _, _, source, notes = person_mask(image, PreprocessOptions(segmentation_dir=segmenter_dir))
    assert source == "alpha" and notes == []
    options = PreprocessOptions(segmentation_dir=segmenter_dir, ignore_alpha=True)
    _, _, source, notes = person_mask(image, options)
    assert source == "segmenter:u2netp" and notes == []
    transparent = DecodedImage(rgb, np.zeros_like(alpha), "PNG", "RGBA")
    mask, _, source, notes = person_mask(transparent, PreprocessOptions(segmentation_dir=segmenter_dir))
    assert source == "segmenter:u2netp" and [n.code for n in notes] == ["ALPHA_IGNORED"]
    assert mask[160, 100] > 127 and mask[20, 20] < 128  # the red figure is found from the colours
