"""Job files: the :class:`ArtifactStore` interface, file names, and :func:`open_artifact_store`.

A job's files are addressed by ``(job id, name)``. Every store keeps each file's SHA-256 next to it when it is
written and checks it when the file is read back (:class:`ArtifactCorrupted` on a mismatch), and writes a
file atomically: a reader sees the whole file or none of it. Implementations: :mod:`gateway.artifacts_file`
(a folder, ``file:///PATH``: the default) and :mod:`gateway.artifacts_s3` (``s3://BUCKET/PREFIX`` on any
S3-compatible service). A file stored without a media type gets its stage's
(:func:`synchuman.stage_catalog.media_type`); job ids are checked with
:func:`gateway.request_fields.check_job_id`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from synchuman.v1 import common_pb2

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Bytes per piece when files are streamed (downloads, multipart uploads).
CHUNK_BYTES = 1 << 20


class ArtifactCorrupted(Exception):
    """A stored file does not match the SHA-256 recorded when it was written (or has none recorded)."""

    def __init__(self, job_id: str, name: str, reason: str = "") -> None:
        super().__init__(f"{job_id}/{name}: {reason or 'SHA-256 differs from the one stored when written'}")


def checked(pieces: Iterable[bytes], expected: str, job_id: str, name: str) -> Iterator[bytes]:
    """``pieces`` of a stored file, passed on as they come except the last, which follows only once the
    SHA-256 of all of them equals ``expected`` (hex; empty: not checked): on a mismatch
    :class:`ArtifactCorrupted` is raised instead, so a damaged file is never passed on whole (an HTTP
    download breaks off short of its Content-Length)."""
    digest = hashlib.sha256()
    held: bytes | None = None
    for piece in pieces:
        digest.update(piece)
        if held is not None:
            yield held
        held = piece
    if expected and digest.hexdigest() != expected:
        raise ArtifactCorrupted(job_id, name)
    if held is not None:
        yield held


def is_whole(start: int, stop: int | None) -> bool:
    """Whether bytes ``start`` to ``stop`` (offsets in bytes, ``stop`` exclusive; None: the end) are the whole
    file; ``ValueError`` for a negative or empty span."""
    if start < 0 or (stop is not None and stop <= start):
        raise ValueError(f"bytes {start} to {stop} are no part of a file")
    return start == 0 and stop is None


def check_name(name: str) -> str:
    """``name`` if it is a valid artifact name; ``ValueError`` otherwise."""
    if not _NAME.match(name) or ".." in name:
        raise ValueError(f"invalid artifact name {name!r}: letters, digits, '_', '-' and '.' only")
    return name


class ArtifactStore(Protocol):
    """Where job files live. Implementations must be safe to call from several threads."""

    def put(self, job_id: str, name: str, data: bytes, media: str = "") -> common_pb2.BlobHeader:
        """Store ``data`` as ``name`` of ``job_id`` atomically with its SHA-256 (replacing an older file);
        return its header (name, media type, size, SHA-256)."""

    def has(self, job_id: str, name: str) -> bool:
        """Whether the file exists."""

    def get(self, job_id: str, name: str) -> bytes:
        """The file's bytes, checked against the stored SHA-256; ``FileNotFoundError`` when missing,
        :class:`ArtifactCorrupted` on a mismatch."""

    def chunks(
        self, job_id: str, name: str, chunk_bytes: int = CHUNK_BYTES, start: int = 0, stop: int | None = None
    ) -> Iterator[bytes]:
        """Bytes ``start`` to ``stop`` (offsets in bytes, ``stop`` exclusive; None: to the end) of the file in
        pieces of at most ``chunk_bytes``, read as they are consumed (the file is never held whole).
        ``FileNotFoundError`` when missing, before the first piece. The whole file (the defaults) is
        checked against its SHA-256 before its last piece (:class:`ArtifactCorrupted` then); a part is not
        (that needs all of it: a client checks a resumed download against the SHA-256 of the header)."""

    def download_url(self, job_id: str, name: str, filename: str) -> str:
        """A short-lived URL a client may download the file from directly, saved as ``filename``; ``""``
        when this store does not hand out such URLs (then the gateway sends the bytes itself)."""

    def remove_job(self, job_id: str) -> int:
        """Delete every file of ``job_id``; returns how many there were."""


def open_artifact_store(url: str, data_dir: Path) -> ArtifactStore:
    """The artifact store named by ``url``: ``""`` (default: ``DATA_DIR/artifacts``), ``file:///ABS/PATH``
    (or ``file://REL/PATH``) or ``s3://BUCKET[/PREFIX][?presigned_downloads=SECONDS]`` (endpoint, region
    and credentials from the usual AWS variables and config files, e.g. ``AWS_ENDPOINT_URL``,
    ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``; ``presigned_downloads``: see :mod:`gateway.artifacts_s3`).
    Other schemes are refused with the list of supported ones.
    """
    from gateway.artifacts_file import FileArtifactStore

    if not url:
        return FileArtifactStore(data_dir / "artifacts")
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "file" and rest:
        return FileArtifactStore(Path(rest))
    if sep and scheme == "s3" and rest.strip("/"):
        from gateway.artifacts_s3 import S3ArtifactStore

        return S3ArtifactStore.at(rest)
    raise ValueError(
        f"unsupported artifact store URL {url!r}: use file:///PATH or s3://BUCKET/PREFIX "
        "(or leave it empty for DATA_DIR/artifacts)"
    )
