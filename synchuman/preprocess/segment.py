"""Person segmentation from local ONNX files only: no download ever happens at run time.

Models live in one folder (``ckpts/segmentation/`` by default, see :func:`segmentation_dir`) and are selected
by file stem: ``u2netp`` (the default, extracted by ``scripts/fetch_segmenter.py``), or any rembg model file a
user drops there under rembg's name (``u2net``, ``u2net_human_seg``, ``silueta``, ``isnet-general-use``,
``birefnet-general``, ``bria-rmbg`` ...). They run directly on onnxruntime with rembg's pre- and
post-processing (:data:`RECIPES`), which is 2-3x faster than going through rembg. The name ``rembg:<name>``
runs the same file through the optional ``rembg`` package instead, always with an explicit session created
from that folder (``U2NET_HOME`` is pointed at it), so rembg cannot download either.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from synchuman.preprocess.errors import SegmenterError

DEFAULT_SEGMENTER = "u2netp"
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_HALF = ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0))
#: A model output whose maximum stays below this found nothing: it is not min-max stretched (which would turn
#: noise into a mask), so an image without a person yields an empty mask.
NOTHING_SALIENT = 0.5
#: A segmenter model name (the file stem in the segmentation folder).
SEGMENTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Recipe:
    """How a model family wants its input and gives its output.

    ``size``: square input side in pixels. ``mean``/``std``: per-channel normalisation of RGB scaled by the
    image maximum (rembg's convention). ``sigmoid``: apply a sigmoid to the first output before min-max
    scaling.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    sigmoid: bool = False


_U2NET = Recipe(320, *_IMAGENET)
_ISNET = Recipe(1024, *_HALF)
_BIREFNET = Recipe(1024, *_IMAGENET, sigmoid=True)

#: rembg model names (file stems) this module knows how to run.
RECIPES: dict[str, Recipe] = {
    "u2net": _U2NET,
    "u2netp": _U2NET,
    "u2net_human_seg": _U2NET,
    "silueta": _U2NET,
    "isnet-general-use": _ISNET,
    "isnet-anime": _ISNET,
    "bria-rmbg": Recipe(1024, *_IMAGENET),
    **{
        f"birefnet-{kind}": _BIREFNET
        for kind in ("general", "general-lite", "portrait", "dis", "hrsod", "cod", "massive")
    },
}


def segmentation_dir() -> Path:
    """The model folder: ``$SYNCHUMAN_SEGMENTATION_DIR``, else ``$SYNCHUMAN_CKPTS/segmentation``, else the
    repository's ``ckpts/segmentation``."""
    if os.environ.get("SYNCHUMAN_SEGMENTATION_DIR"):
        return Path(os.environ["SYNCHUMAN_SEGMENTATION_DIR"])
    root = os.environ.get("SYNCHUMAN_CKPTS")
    return (Path(root) if root else Path(__file__).resolve().parents[2] / "ckpts") / "segmentation"


def available_segmenters(folder: Path | None = None) -> list[str]:
    """Sorted names of the ``*.onnx`` files in the model folder."""
    folder = folder or segmentation_dir()
    return sorted(p.stem for p in folder.glob("*.onnx")) if folder.is_dir() else []


class Segmenter:
    """A loaded person segmentation model. Thread-safe; reuse one instance (see :func:`load_segmenter`)."""

    def __init__(self, name: str, path: Path, recipe: Recipe | None, threads: int = 0) -> None:
        import onnxruntime as ort

        self.name = name
        self.path = path
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise SegmenterError(
                "SEGMENTER_BROKEN", f"cannot load segmentation model {path}: {exc}"
            ) from None
        inputs = self._session.get_inputs()
        self._input_name = inputs[0].name
        if recipe is None:
            side = inputs[0].shape[-1]
            if side != 320:
                raise SegmenterError(
                    "SEGMENTER_UNKNOWN",
                    f"do not know how to run {path.name} (input side {side}); name the file after its rembg "
                    f"model ({', '.join(sorted(RECIPES))})",
                )
            recipe = _U2NET
        self.recipe = recipe

    def _run(self, small: np.ndarray) -> np.ndarray:
        """One inference: float32 [size, size, 3] RGB scaled to [0, 1] -> float32 [size, size] in [0, 1]."""
        small = (small - np.asarray(self.recipe.mean, np.float32)) / np.asarray(self.recipe.std, np.float32)
        batch = np.ascontiguousarray(small.transpose(2, 0, 1)[None])
        pred = self._session.run(None, {self._input_name: batch})[0][0, 0].astype(np.float32)
        if self.recipe.sigmoid:
            pred = 1.0 / (1.0 + np.exp(-pred))
        low, high = float(pred.min()), float(pred.max())
        if high < NOTHING_SALIENT:
            return pred
        return (pred - low) / max(high - low, 1e-6)

    def _predict_view(self, rgb: np.ndarray, mirror: bool) -> np.ndarray:
        """One view: float32 [H, W] in [0, 1] for uint8 [H, W, 3], optionally averaged with its mirror."""
        size = self.recipe.size
        small = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
        small /= max(float(small.max()), 1e-6)
        pred = self._run(small)
        if mirror:
            pred = 0.5 * (pred + self._run(np.ascontiguousarray(small[:, ::-1]))[:, ::-1])
        height, width = rgb.shape[:2]
        return np.clip(cv2.resize(pred, (width, height), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)

    def predict(self, rgb: np.ndarray, mirror: bool = True, zoom: bool = True) -> np.ndarray:
        """Foreground probability of each pixel.

        rgb: uint8 [H, W, 3]. Each view is area-resized to the model's square input and scaled by its maximum
        (rembg's convention). With ``mirror`` the predictions of a view and of its mirror image are averaged
        (it recovers limbs and sleeves that a single pass misses). With ``zoom`` a second view is cropped to
        the first view's person box plus 10 % and the two are averaged, the second counting as 0 outside its
        crop (more model resolution on the person; stray detections far from it fall below 0.5).
        Returns float32 [H, W] in [0, 1]; each pass is min-max scaled like rembg unless its maximum is below
        :data:`NOTHING_SALIENT`.
        """
        prob = self._predict_view(rgb, mirror)
        if not zoom:
            return prob
        rows = np.flatnonzero((prob > 0.5).any(axis=1))
        if rows.size == 0:
            return prob
        cols = np.flatnonzero((prob[rows[0] : rows[-1] + 1] > 0.5).any(axis=0))
        pad = int(0.1 * max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))
        height, width = prob.shape
        top, bottom = max(0, rows[0] - pad), min(height, rows[-1] + pad + 1)
        left, right = max(0, cols[0] - pad), min(width, cols[-1] + pad + 1)
        if (top, left, bottom, right) == (0, 0, height, width):
            return prob
        zoomed = np.zeros_like(prob)
        crop = np.ascontiguousarray(rgb[top:bottom, left:right])
        zoomed[top:bottom, left:right] = self._predict_view(crop, mirror)
        return 0.5 * (prob + zoomed)


class RembgSegmenter:
    """The same local model run through the optional ``rembg`` package, with an explicit session."""

    def __init__(self, name: str, path: Path) -> None:
        os.environ["U2NET_HOME"] = str(path.parent)
        try:
            import rembg
        except ImportError:
            raise SegmenterError(
                "REMBG_NOT_INSTALLED", f"segmenter 'rembg:{name}' needs the optional package rembg "
                f"(pip install rembg); or use '{name}', which runs the same file without it"
            ) from None
        self.name = f"rembg:{name}"
        self.path = path
        self._rembg: Any = rembg
        self._session = rembg.new_session(name, providers=["CPUExecutionProvider"])

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """Same contract as :meth:`Segmenter.predict` (one pass, rembg's own resizing)."""
        from PIL import Image

        mask = self._rembg.remove(Image.fromarray(rgb), session=self._session, only_mask=True)
        return np.asarray(mask.convert("L"), np.float32) / 255.0


_CACHE: dict[tuple[str, str, float], Segmenter | RembgSegmenter] = {}
_LOCK = threading.Lock()


def segmenter_stem(name: str) -> str:
    """The model file stem of a segmenter name (``u2netp``, ``rembg:isnet-general-use``); SegmenterError
    SEGMENTER_NAME_INVALID for anything else (a path, an empty or over-long name)."""
    stem = name.removeprefix("rembg:")
    if not SEGMENTER_NAME.fullmatch(stem):
        raise SegmenterError(
            "SEGMENTER_NAME_INVALID",
            f"invalid segmenter name {name[:80]!r}: use a model name such as {DEFAULT_SEGMENTER!r} (up to 64 "
            "letters, digits, '_', '.' and '-', optionally after 'rembg:')",
        )
    return stem


def load_segmenter(name: str = "", folder: Path | None = None) -> Segmenter | RembgSegmenter:
    """Load (once, then cached) the segmenter ``name`` (default :data:`DEFAULT_SEGMENTER`) from ``folder``.

    Raises :class:`SegmenterError` for a malformed name or a model file that is not in the folder; the message
    lists the models that are.
    """
    folder = folder or segmentation_dir()
    name = name or DEFAULT_SEGMENTER
    via_rembg = name.startswith("rembg:")
    stem = segmenter_stem(name)
    path = folder / f"{stem}.onnx"
    if not path.is_file():
        present = ", ".join(available_segmenters(folder)) or "none"
        hint = (
            "run scripts/fetch_segmenter.py (or make setup)"
            if stem == DEFAULT_SEGMENTER
            else f"put {stem}.onnx (rembg's file) into {folder}"
        )
        raise SegmenterError(
            "SEGMENTER_NOT_FOUND", f"segmentation model {path} is missing: {hint}; models present: {present}"
        )
    key = (name, str(path), path.stat().st_mtime)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = (
                RembgSegmenter(stem, path) if via_rembg else Segmenter(stem, path, RECIPES.get(stem))
            )
        return _CACHE[key]
