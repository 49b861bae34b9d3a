"""The pose model's files: which wheel they come from, their pinned checksums and where they are kept.

Light on purpose (no numpy, OpenCV or LiteRT import): ``scripts/fetch_pose_model.py``, ``synchuman ckpts
pull`` and the checkpoint tools read it. The files are MediaPipe's BlazePose person detector and "full"
landmark model from the PyPI wheel ``mediapipe==0.10.14`` (Apache-2.0).
"""

from __future__ import annotations

import os
from pathlib import Path

from synchuman.checkpoints.layout import CheckpointLayout, default_root
from synchuman.checkpoints.wheel_models import WheelModel

POSE_WHEEL = "mediapipe==0.10.14"
POSE_DETECTOR = WheelModel(
    requirement=POSE_WHEEL,
    member="mediapipe/modules/pose_detection/pose_detection.tflite",
    name="pose_detection.tflite",
    sha256="9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c",
    size=2_959_046,
)
POSE_LANDMARKER = WheelModel(
    requirement=POSE_WHEEL,
    member="mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
    name="pose_landmark_full.tflite",
    sha256="e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f",
    size=6_440_512,
)
POSE_MODELS = (POSE_DETECTOR, POSE_LANDMARKER)
#: Environment variable naming the folder of the two files (default ``$SYNCHUMAN_CKPTS/pose``).
POSE_DIR_ENV = "SYNCHUMAN_POSE_DIR"
FETCH_HINT = "run scripts/fetch_pose_model.py (or `synchuman ckpts pull`)"


def pose_model_dir() -> Path:
    """``$SYNCHUMAN_POSE_DIR``, else the checkpoint root's ``pose/`` folder."""
    folder = os.environ.get(POSE_DIR_ENV)
    return Path(folder) if folder else CheckpointLayout(default_root()).pose


def missing_pose_files(folder: Path) -> list[Path]:
    """The pose model files absent (or empty) in ``folder``; [] when both are there."""
    paths = [folder / model.name for model in POSE_MODELS]
    return [path for path in paths if not path.is_file() or path.stat().st_size == 0]
