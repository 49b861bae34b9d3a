"""2D body landmarks on a photo or a generated view: MediaPipe's BlazePose (the person detector and the "full"
landmark model), run on LiteRT (``ai-edge-litert``) from local files only.

The two ``.tflite`` files ship inside the PyPI wheel ``mediapipe==0.10.14`` (Apache-2.0; model card "BlazePose
GHUM 3D", linked from https://ai.google.dev/edge/mediapipe/solutions/vision/pose_landmarker).
``scripts/fetch_pose_model.py`` extracts them at set-up into ``<ckpts>/pose/`` and checks the checksums pinned
in :data:`synchuman.rig.pose_files.POSE_MODELS`; nothing is downloaded at run time: a missing file is a
:class:`PoseModelError` naming the script.

Steps (:meth:`PoseModel.find`): the image is letterboxed to 224 x 224 and the detector finds the person
(SSD anchors, weighted NMS: :mod:`synchuman.rig.landmarks`); a square ROI around the hips, turned upright
along the detector's hip -> body-size keypoints, is cut out at 256 x 256; the landmark model gives 39 points
of which the first 33 are the BlazePose body landmarks, refined by its heatmap (as MediaPipe's graph does) and
mapped back to image pixels, with visibility = sigmoid(model output), 0 for a point outside the image.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from synchuman.rig.landmarks import (
    DETECTOR_INPUT,
    Detection,
    Roi,
    best_detection,
    decode_detections,
    refine_with_heatmap,
    roi_from_detection,
)
from synchuman.rig.pose_files import FETCH_HINT, POSE_MODELS, missing_pose_files, pose_model_dir

log = logging.getLogger(__name__)

LANDMARK_INPUT = 256
NUM_LANDMARKS = 33
_MODEL_LANDMARKS = 39
_VALUES_PER_LANDMARK = 5
#: The landmark model's pose-presence flag below which the ROI holds no person.
MIN_POSE_PRESENCE = 0.5


class PoseModelError(RuntimeError):
    """The pose model files are missing or cannot be loaded (the message says what to run)."""


@dataclass(frozen=True)
class PoseResult:
    """The person found on one image: ``landmarks`` (33, 3) float32 ``[x_px, y_px, visibility 0..1]``,
    ``score`` the detector's confidence 0..1, ``presence`` the landmark model's pose flag 0..1."""

    landmarks: np.ndarray
    score: float
    presence: float


def as_rgb(image: np.ndarray, background: int = 255) -> np.ndarray:
    """(H, W, 3) uint8 RGB from (H, W, 3|4) uint8; RGBA is composited over a flat ``background`` grey."""
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3|4) uint8 image, got {image.shape} {image.dtype}")
    if image.shape[2] == 3:
        return image
    alpha = image[..., 3:].astype(np.float32) / 255.0
    return (image[..., :3] * alpha + background * (1.0 - alpha) + 0.5).astype(np.uint8)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _cv_matrix(crop_to_image: np.ndarray) -> np.ndarray:
    """The same map for OpenCV's convention (pixel centres at integers instead of at +0.5)."""
    matrix = crop_to_image.copy()
    matrix[:, 2] += matrix[:, :2].sum(axis=1) * 0.5 - 0.5
    return matrix


def _shrunk(rgb: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """``rgb`` area-averaged by ``factor`` when below 1 (else unchanged) and the (2,) x/y scale applied."""
    height, width = rgb.shape[:2]
    if factor >= 1.0:
        return rgb, np.ones(2)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), np.array(size) / np.array([width, height])


class PoseModel:
    """The loaded detector and landmark model. Thread-safe (one inference at a time); reuse one instance
    (:func:`load_pose_model`)."""

    def __init__(self, folder: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        missing = missing_pose_files(folder)
        if missing:
            raise PoseModelError(f"pose model file(s) missing: {', '.join(map(str, missing))}; {FETCH_HINT}")
        paths = [folder / model.name for model in POSE_MODELS]
        try:
            self._detector, self._landmarker = (
                Interpreter(model_path=str(path), num_threads=1) for path in paths
            )
            for interpreter in (self._detector, self._landmarker):
                interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise PoseModelError(f"cannot load the pose model in {folder}: {exc}") from exc
        self.folder = folder
        self._lock = threading.Lock()

    def _run(self, interpreter: object, tensor: np.ndarray) -> dict[str, np.ndarray]:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], tensor[None])
        interpreter.invoke()
        return {d["name"]: interpreter.get_tensor(d["index"])[0] for d in interpreter.get_output_details()}

    def detect(self, rgb: np.ndarray) -> Detection | None:
        """The most confident person on ``rgb`` ((H, W, 3) uint8), or None."""
        small, scale = _shrunk(rgb, DETECTOR_INPUT / max(rgb.shape[:2]))
        offset = (DETECTOR_INPUT - np.array(small.shape[1::-1])) // 2
        square = np.zeros((DETECTOR_INPUT, DETECTOR_INPUT, 3), dtype=np.uint8)
        square[offset[1]:offset[1] + small.shape[0], offset[0]:offset[0] + small.shape[1]] = small
        with self._lock:
            out = self._run(self._detector, square.astype(np.float32) / 127.5 - 1.0)
        decoded, scores = decode_detections(out["Identity"], out["Identity_1"][:, 0])
        best = best_detection(decoded, scores)
        if best is None:
            return None
        box, keypoints, score = best
        to_px = lambda p: (p * DETECTOR_INPUT - offset) / scale  # noqa: E731
        return Detection(box=to_px(box.reshape(2, 2)).ravel(), keypoints=to_px(keypoints), score=score)

    def landmarks_in(self, rgb: np.ndarray, roi: Roi) -> tuple[np.ndarray, float]:
        """(33, 3) float32 landmarks of the person in ``roi`` of ``rgb``; the model's presence flag 0..1."""
        crop_to_image = roi.to_image(LANDMARK_INPUT)
        crop = cv2.warpAffine(
            rgb, _cv_matrix(crop_to_image), (LANDMARK_INPUT, LANDMARK_INPUT),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0,
        )
        with self._lock:
            out = self._run(self._landmarker, crop.astype(np.float32) / 255.0)
        raw = out["Identity"].reshape(_MODEL_LANDMARKS, _VALUES_PER_LANDMARK)[:NUM_LANDMARKS]
        in_crop = refine_with_heatmap(raw[:, :2], out["Identity_3"], LANDMARK_INPUT)
        points = in_crop @ crop_to_image[:, :2].T + crop_to_image[:, 2]
        # A point the model places outside the image is not seen on it, whatever the model's visibility says.
        height, width = rgb.shape[:2]
        on_image = (points >= 0).all(axis=1) & (points[:, 0] < width) & (points[:, 1] < height)
        visibility = np.where(on_image, _sigmoid(raw[:, 3]), 0.0)
        presence = float(out["Identity_1"].ravel()[0])
        return np.concatenate([points, visibility[:, None]], axis=1).astype(np.float32), presence

    def find(self, image: np.ndarray) -> PoseResult | None:
        """The person on ``image`` ((H, W, 3|4) uint8; RGBA over white) or None when there is none."""
        rgb = as_rgb(image)
        detection = self.detect(rgb)
        if detection is None:
            return None
        roi = roi_from_detection(detection)
        # A large ROI is cut from an area-averaged smaller copy (no aliasing), then mapped back.
        small, scale = _shrunk(rgb, 2 * LANDMARK_INPUT / roi.size)
        small_roi = Roi(centre=roi.centre * scale, size=roi.size * np.mean(scale), angle=roi.angle)
        landmarks, presence = self.landmarks_in(small, small_roi)
        if presence < MIN_POSE_PRESENCE:
            return None
        landmarks[:, :2] /= scale
        return PoseResult(landmarks=landmarks, score=detection.score, presence=presence)

    def landmarks(self, image: np.ndarray) -> np.ndarray | None:
        """(33, 3) float32 ``[x_px, y_px, visibility]`` of the person on ``image``, or None when none."""
        result = self.find(image)
        return None if result is None else result.landmarks


@lru_cache(maxsize=4)
def _load(folder: Path) -> PoseModel:
    model = PoseModel(folder)
    log.info("pose model loaded", extra={"folder": str(folder)})
    return model


def load_pose_model(folder: Path | None = None) -> PoseModel:
    """The pose model of ``folder`` (default :func:`pose_model_dir`), loaded once and cached.
    PoseModelError when its files are missing or broken."""
    return _load(Path(folder or pose_model_dir()).resolve())
