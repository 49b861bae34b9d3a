"""Shared pytest fixtures: where the parity fixtures and sample images live. Puts ``bench/`` on the import
path: the post-processing and bench tests use the bench library (``benchlib``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
sys.path.insert(0, str(REPO_ROOT / "bench"))


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a folder; otherwise skip the test (or fail it under ``CI=true``)."""
    if path.is_dir():
        return path
    message = f"{what} not found at {path}"
    if _in_ci():
        pytest.fail(f"{message} (CI=true: missing fixtures fail)")
    pytest.skip(message)


def require_tool(path: Path, what: str) -> Path:
    """Return ``path`` if the tool exists (``make setup`` installs it); else skip (fail under CI=true)."""
    if path.exists():
        return path
    message = f"{what} not installed at {path}; run scripts/bootstrap.sh"
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """Root of the parity fixtures: ``$SYNCHUMAN_PARITY_DIR`` or ``../shared/parity``."""
    return require_dir(
        Path(os.environ.get("SYNCHUMAN_PARITY_DIR", SHARED_DIR / "parity")), "parity fixtures"
    )


@pytest.fixture(scope="session")
def images_dir() -> Path:
    """Real photos of people (``person_*.png``) and bad inputs from the field."""
    return require_dir(Path(os.environ.get("SYNCHUMAN_IMAGES_DIR", SHARED_DIR / "images")), "sample images")


@pytest.fixture(scope="session")
def segmenter_dir() -> Path:
    """Folder holding the default segmenter ``u2netp.onnx`` (``scripts/fetch_segmenter.py`` puts it there)."""
    folder = Path(os.environ.get("SYNCHUMAN_SEGMENTATION_DIR", REPO_ROOT / "ckpts" / "segmentation"))
    require_tool(folder / "u2netp.onnx", "default segmenter u2netp.onnx")
    return folder


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint tree (``synchuman ckpts make-tiny``), written once per test session."""
    from synchuman.checkpoints.tiny import write_tiny_tree

    root = tmp_path_factory.mktemp("tiny") / "ckpts"
    write_tiny_tree(root)
    return root


@pytest.fixture(scope="session")
def small_photo(images_dir: Path) -> bytes:
    """The first sample photo of a person as PNG bytes, at most 512 px on a side (a quicker upload and
    preprocessing; framing rescales to 768 anyway)."""
    import io

    from PIL import Image

    image = Image.open(sorted(images_dir.glob("person_*.png"))[0])
    image.thumbnail((512, 512))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
