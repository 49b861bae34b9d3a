"""The :class:`~gateway.artifacts.ArtifactStore` in a folder: ``root/<job id>/<name>``, each file's SHA-256 in
the hidden ``root/<job id>/.<name>.sha256`` beside it.

Files are written atomically (temp file in the same folder, fsync, rename), the checksum before the data, so
a crash leaves either the whole new file or the old one; in the instant between the two renames the old file
meets the new checksum, which the next read reports as corrupted (a stage whose result file is missing is run
again, rewriting both). Files written before checksums were kept (no ``.sha256``) are read unchecked.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from gateway.artifacts import CHUNK_BYTES, ArtifactCorrupted, check_name, checked, is_whole
from gateway.request_fields import check_job_id
from services.common.stage_io import blob_header
from synchuman.stage_catalog import media_type
from synchuman.v1 import common_pb2


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pieces(handle: BinaryIO, chunk_bytes: int, length: int | None) -> Iterator[bytes]:
    """``length`` bytes (None: up to the end of the file) from the handle's position, in pieces of at most
    ``chunk_bytes``; closes the handle."""
    left = math.inf if length is None else length
    with handle:
        while left > 0 and (piece := handle.read(int(min(chunk_bytes, left)))):
            left -= len(piece)
            yield piece


class FileArtifactStore:
    """Files of jobs under ``root``; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, job_id: str, name: str) -> Path:
        return self.root / check_job_id(job_id) / check_name(name)

    @staticmethod
    def _checksum_path(path: Path) -> Path:
        return path.with_name(f".{path.name}.sha256")

    def put(self, job_id: str, name: str, data: bytes, media: str = "") -> common_pb2.BlobHeader:
        path = self._path(job_id, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = blob_header(name, media or media_type(name), data)
        _write_atomically(self._checksum_path(path), header.sha256.encode())
        _write_atomically(path, data)
        return header

    def has(self, job_id: str, name: str) -> bool:
        return self._path(job_id, name).is_file()

    def _expected(self, path: Path) -> str:
        try:
            return self._checksum_path(path).read_text().strip()
        except FileNotFoundError:
            return ""

    def get(self, job_id: str, name: str) -> bytes:
        path = self._path(job_id, name)
        data = path.read_bytes()
        expected = self._expected(path)
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise ArtifactCorrupted(job_id, name)
        return data

    def chunks(
        self, job_id: str, name: str, chunk_bytes: int = CHUNK_BYTES, start: int = 0, stop: int | None = None
    ) -> Iterator[bytes]:
        whole = is_whole(start, stop)
        path = self._path(job_id, name)
        handle = path.open("rb")  # FileNotFoundError here, before the first piece
        handle.seek(start)
        pieces = _pieces(handle, chunk_bytes, None if stop is None else stop - start)
        return checked(pieces, self._expected(path), job_id, name) if whole else pieces

    def download_url(self, job_id: str, name: str, filename: str) -> str:
        return ""  # a folder has no URL of its own: the gateway sends the bytes

    def remove_job(self, job_id: str) -> int:
        folder = self.root / check_job_id(job_id)
        count = 0
        if folder.is_dir():
            count = sum(1 for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        shutil.rmtree(folder, ignore_errors=True)
        return count
