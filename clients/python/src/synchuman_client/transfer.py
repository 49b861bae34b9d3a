"""What travels in chunks, shared by the sync and asyncio clients: the photo of a ``SubmitJob`` upload and the
checked reassembly of a ``GetArtifact`` download into bytes, a file or a stream."""

from __future__ import annotations

import hashlib
import io
import mimetypes
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Union

import grpc

from synchuman_client._proto import common_pb2, reconstruction_pb2
from synchuman_client.errors import SyncHumanError

if TYPE_CHECKING:
    from PIL import Image

#: Bytes per upload chunk: the contract's maximum (1 MiB).
CHUNK_BYTES = 1 << 20
#: What ``submit`` takes: encoded image bytes, a file path, or a ``PIL.Image.Image`` (sent as PNG).
Photo = Union[bytes, bytearray, memoryview, str, os.PathLike, "Image.Image"]
#: Where ``download`` writes: None (return the bytes), a file path, or a binary stream.
Destination = str | os.PathLike | IO[bytes] | None


def photo_bytes(photo: Photo) -> tuple[bytes, str]:
    """The encoded bytes of ``photo`` and an informational media type (the server identifies the image from
    its bytes). A PIL image is encoded as PNG (lossless; an alpha channel is kept as the person's mask).
    ``TypeError`` for anything else; ``OSError`` when a path cannot be read."""
    if isinstance(photo, (bytes, bytearray, memoryview)):
        return bytes(photo), "application/octet-stream"
    if isinstance(photo, (str, os.PathLike)):
        path = Path(photo)
        return path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    pil_image = sys.modules.get("PIL.Image")  # a PIL image can only exist when PIL is imported already
    if pil_image is not None and isinstance(photo, pil_image.Image):
        buffer = io.BytesIO()
        photo.save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"
    raise TypeError(f"submit takes bytes, a file path or a PIL image, not {type(photo).__name__}")


def upload_requests(
    photo: bytes,
    options: common_pb2.JobOptions | None = None,
    idempotency_key: str = "",
    media_type: str = "application/octet-stream",
    callback_url: str = "",
) -> Iterator[reconstruction_pb2.SubmitJobRequest]:
    """The messages of a ``SubmitJob`` upload: ``start`` (options, key, callback URL, the photo's header with
    its size and SHA-256), then the photo in chunks of :data:`CHUNK_BYTES`."""
    header = common_pb2.BlobHeader(
        name="input", media_type=media_type, size_bytes=len(photo), sha256=hashlib.sha256(photo).hexdigest()
    )
    start = reconstruction_pb2.SubmitJobStart(
        options=options, idempotency_key=idempotency_key, image=header, callback_url=callback_url
    )
    yield reconstruction_pb2.SubmitJobRequest(start=start)
    for offset in range(0, len(photo), CHUNK_BYTES):
        chunk = common_pb2.BlobChunk(name="input", offset=offset, data=photo[offset : offset + CHUNK_BYTES])
        yield reconstruction_pb2.SubmitJobRequest(chunk=chunk)


def _data_loss(message: str) -> SyncHumanError:
    return SyncHumanError(grpc.StatusCode.DATA_LOSS, message)


class ArtifactReceiver:
    """Reassembles one ``GetArtifact`` stream into ``destination`` while checking it: the header comes first,
    chunk offsets follow on without gaps, and the total size and SHA-256 equal the header's. Any mismatch is a
    :class:`SyncHumanError` with code ``DATA_LOSS``.

    A file path is written to ``.<name>.part`` beside it and renamed only once every check passed (a failed
    download leaves no file); a stream gets the chunks as they arrive (on a failure it holds a partial copy).
    """

    def __init__(self, name: str, destination: Destination = None) -> None:
        self.name = name
        self.header: common_pb2.BlobHeader | None = None
        self._digest = hashlib.sha256()
        self._received = 0
        self._target: Path | None = None
        if destination is None:
            self._sink: IO[bytes] = io.BytesIO()
        elif isinstance(destination, (str, os.PathLike)):
            self._target = Path(destination)
            self._part = self._target.with_name(f".{self._target.name}.part")
            self._sink = self._part.open("wb")
        else:
            self._sink = destination

    def add(self, message: reconstruction_pb2.GetArtifactResponse) -> None:
        """Take the next message of the stream."""
        if message.WhichOneof("payload") == "header":
            if self.header is not None:
                raise _data_loss(f"{self.name}: a second header in the stream")
            self.header = message.header
            return
        chunk = message.chunk
        if self.header is None or chunk.offset != self._received:
            raise _data_loss(f"{self.name}: chunk at offset {chunk.offset} out of order or before the header")
        self._digest.update(chunk.data)
        self._received += len(chunk.data)
        self._sink.write(chunk.data)

    def finish(self) -> common_pb2.BlobHeader:
        """Check size and SHA-256 against the header and complete the destination; returns the header."""
        if self.header is None:
            raise _data_loss(f"{self.name}: the stream had no header")
        if self._received != self.header.size_bytes:
            raise _data_loss(f"{self.name}: got {self._received} of {self.header.size_bytes} bytes")
        sha256 = self._digest.hexdigest()
        if sha256 != self.header.sha256.lower():
            raise _data_loss(f"{self.name}: SHA-256 {sha256} differs from the announced {self.header.sha256}")
        if self._target is not None:
            self._sink.close()
            os.replace(self._part, self._target)
        return self.header

    def data(self) -> bytes:
        """The received bytes (destination None only)."""
        assert isinstance(self._sink, io.BytesIO)
        return self._sink.getvalue()

    def abandon(self) -> None:
        """After a failure: remove the partial file of a path destination."""
        if self._target is not None:
            self._sink.close()
            self._part.unlink(missing_ok=True)
