"""Downloads of job files over the HTTP bridge (``GET /v1/jobs/{id}/artifacts/{name}``), resumable:

* the bytes are streamed from the artifact store (:meth:`~gateway.artifacts.ArtifactStore.chunks`, as the
  gRPC ``GetArtifact`` reads them), never held whole; ``Content-Length`` is the file's size;
* ``ETag`` is the file's SHA-256 recorded by the job (``Job.artifacts``); ``If-None-Match`` naming it: 304;
* ``Range`` of one byte range (``bytes=FIRST-LAST``, ``bytes=FIRST-``, ``bytes=-COUNT``): 206 with
  ``Content-Range``, or 416 with ``Content-Range: bytes */SIZE`` when no byte of it is in the file; with
  ``If-Range`` other than the ETag the whole file is sent (it changed since the first part);
* with an artifact store that hands out presigned URLs (S3 with ``--s3-presigned-downloads``): 307 to one,
  after the checks above, so the bytes go from S3 to the client directly.

A part is not checked against the SHA-256 (that needs the whole file): a client checks the assembled file
against the ETag.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import grpc
from fastapi.responses import Response, StreamingResponse

from gateway.errors import JobError
from gateway.request_fields import invalid
from gateway.tenants import TenantJobs
from synchuman.v1 import common_pb2

#: The forms of ``Range`` served: one byte range (offsets in bytes, up to 18 digits).
RANGE_FORMS = "bytes=FIRST-LAST, bytes=FIRST- or bytes=-COUNT (offsets in bytes, LAST included)"
_RANGE = re.compile(r"bytes=([0-9]{0,18})-([0-9]{0,18})")


class RangeNotSatisfiable(JobError):
    """No byte of the asked range lies in the file: gRPC ``OUT_OF_RANGE``, HTTP 416 with
    ``Content-Range: bytes */SIZE``."""

    http_status = 416

    def __init__(self, size: int) -> None:
        message = (
            f"the range asks for no byte of the file's {size} bytes; ask within bytes=0-{size - 1}"
            if size
            else "the file is empty, so no range of it exists; download it without Range"
        )
        super().__init__(grpc.StatusCode.OUT_OF_RANGE, message, *invalid("Range", message).details)
        self.http_headers = {"Content-Range": f"bytes */{size}"}


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The ``(start, stop)`` offsets in bytes (``stop`` exclusive) that a ``Range`` header asks of a file of
    ``size`` bytes, clipped to the file; None for no header. INVALID_ARGUMENT (400) when it is not one byte
    range or its LAST comes before its FIRST, :class:`RangeNotSatisfiable` (416) when no byte of it is in
    the file."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or not (match[1] or match[2]):
        raise invalid("Range", f"Range {header[:80]!r} is not one byte range: send {RANGE_FORMS}")
    first, last = match[1], match[2]
    if not first:  # the last COUNT bytes
        if int(last) == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - int(last)), size
    if last and int(last) < int(first):
        raise invalid("Range", f"Range {header!r} ends before it starts: send {RANGE_FORMS}")
    if int(first) >= size:
        raise RangeNotSatisfiable(size)
    return int(first), min(size, int(last) + 1) if last else size


def names_etag(if_none_match: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` list of entity tags names ``etag`` (weak comparison: ``W/`` ignored) or
    is ``*``."""
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return bool(tags & {"*", etag})


def _listed(manager: TenantJobs, job_id: str, name: str) -> common_pb2.BlobHeader:
    """The header (size, SHA-256, media type) of the job's file ``name`` as the job lists it."""
    for artifact in manager.get(job_id).artifacts:
        if artifact.blob.name == name:
            return artifact.blob
    # not listed: the manager's answer, NOT_FOUND naming the job's files (or the file, listed just now)
    return manager.artifact_pieces(job_id, name)[0]


def _pieces(manager: TenantJobs, job_id: str, name: str, span: tuple[int, int] | None) -> Iterator[bytes]:
    """The file, or bytes ``span`` of it, from the artifact store; NOT_FOUND when it went in the meantime."""
    start, stop = span or (0, None)
    try:
        return manager.artifacts.chunks(job_id, name, start=start, stop=stop)
    except FileNotFoundError:
        raise JobError(
            grpc.StatusCode.NOT_FOUND, f"job {job_id}'s file {name!r} was deleted while it was asked for"
        ) from None


def artifact_response(
    manager: TenantJobs, job_id: str, name: str, asked_range: str, if_none_match: str, if_range: str
) -> Response:
    """The answer to a download of the file ``name`` of job ``job_id`` with the request's ``Range``,
    ``If-None-Match`` and ``If-Range`` headers ("": absent); see the module docstring. Blocking: call it
    from a worker thread."""
    header = _listed(manager, job_id, name)
    etag = f'"{header.sha256}"'
    validators = {"ETag": etag, "Accept-Ranges": "bytes"}
    if if_none_match and names_etag(if_none_match, etag):
        return Response(status_code=304, headers=validators)
    span = byte_range(asked_range if not if_range or if_range.strip() == etag else "", header.size_bytes)
    filename = f"{job_id}-{name}"
    url = manager.artifacts.download_url(job_id, name, filename)
    if url:
        return Response(status_code=307, headers={**validators, "Location": url, "Cache-Control": "no-store"})
    start, stop = span or (0, header.size_bytes)
    part = {"Content-Range": f"bytes {start}-{stop - 1}/{header.size_bytes}"} if span else {}
    return StreamingResponse(
        _pieces(manager, job_id, name, span),
        status_code=206 if span else 200,
        media_type=header.media_type or "application/octet-stream",
        headers={
            **validators,
            **part,
            "Content-Length": str(stop - start),
            "Content-Disposition": f'attachment; filename="{filename}"',
        },
    )
