"""Job files on disk: one folder per job, every file written atomically (temp file in the same folder, fsync,
rename), so a crash leaves either the whole file or none of it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from services.common.stage_io import blob_header
from synchuman.v1 import common_pb2

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: Media type by file extension (the photo "input" keeps the type found at submission).
MEDIA_TYPES = {
    ".png": "image/png",
    ".glb": "model/gltf-binary",
    ".json": "application/json",
    ".ply": "application/octet-stream",
    ".zip": "application/zip",
    ".bin": "application/octet-stream",
}


def media_type(name: str) -> str:
    """The media type of an artifact name (by extension; unknown: ``application/octet-stream``)."""
    return MEDIA_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")


class ArtifactStore:
    """Files of jobs under ``root/<job id>/<name>``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, job_id: str, name: str) -> Path:
        if not _JOB_ID.match(job_id):
            raise ValueError(f"invalid job id {job_id!r}")
        if not _NAME.match(name) or ".." in name:
            raise ValueError(f"invalid artifact name {name!r}: letters, digits, '_', '-' and '.' only")
        return self.root / job_id / name

    def put(self, job_id: str, name: str, data: bytes, media: str = "") -> common_pb2.BlobHeader:
        """Store ``data`` as ``name`` of ``job_id`` atomically; return its header (size, SHA-256)."""
        path = self._path(job_id, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return blob_header(name, media or media_type(name), data)

    def has(self, job_id: str, name: str) -> bool:
        """Whether the file exists."""
        return self._path(job_id, name).is_file()

    def get(self, job_id: str, name: str) -> bytes:
        """The file's bytes; ``FileNotFoundError`` when it does not exist."""
        return self._path(job_id, name).read_bytes()

    def remove_job(self, job_id: str) -> int:
        """Delete every file of ``job_id``; returns how many there were."""
        if not _JOB_ID.match(job_id):
            raise ValueError(f"invalid job id {job_id!r}")
        folder = self.root / job_id
        count = sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
        shutil.rmtree(folder, ignore_errors=True)
        return count
