"""Wire helpers of every SyncHuman service and client: blobs on streams, the ``start`` message, images and
voxel structures.

A blob travels as a :class:`BlobHeader` (name, media type, size, SHA-256: :func:`blob_header`) followed by
its chunks of at most 1 MiB (:func:`blob_chunks`; :func:`piece_chunks` for a blob read piece by piece).

* Uploads (client -> service) are a ``start`` message announcing the blobs, then their chunks in order:
  :func:`upload_messages` builds them; the service reads ``start`` with :func:`read_start` and reassembles
  and checks the blobs with :func:`receive_blobs` over :func:`upload_chunks`.
* Outputs (service -> client) are, per blob, a header message then its chunk messages
  (:func:`send_blobs`); the client reassembles and checks them with :class:`BlobAssembler`.
* Images: :func:`decode_image` / :func:`decode_images` (PNG -> uint8 arrays of an exact size) and
  :func:`encode_png` / :func:`encode_pngs`; voxels: :func:`voxels_to_proto` / :func:`voxels_from_proto`.

Every malformed input raises :class:`InvalidInput`, which services turn into INVALID_ARGUMENT with a
``BadRequest`` field violation; a received blob that does not match its header raises :class:`BlobMismatch`.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from synchuman.pipelines.handoff import sorted_voxels
from synchuman.v1 import common_pb2

CHUNK_BYTES = 1 << 20


class InvalidInput(ValueError):
    """A request is malformed; ``field`` names the offending field, the message says what to send instead."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def blob_header(name: str, media_type: str, data: bytes) -> common_pb2.BlobHeader:
    """Header of ``data``: name, media type, size and SHA-256."""
    return common_pb2.BlobHeader(
        name=name, media_type=media_type, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
    )


def blob_chunks(name: str, data: bytes, chunk_bytes: int = CHUNK_BYTES) -> Iterator[common_pb2.BlobChunk]:
    """``data`` as ordered chunks of at most ``chunk_bytes`` (an empty blob sends no chunk)."""
    pieces = (data[offset : offset + chunk_bytes] for offset in range(0, len(data), chunk_bytes))
    return piece_chunks(name, pieces)


def piece_chunks(name: str, pieces: Iterable[bytes]) -> Iterator[common_pb2.BlobChunk]:
    """Consecutive ``pieces`` of blob ``name`` (e.g. read from storage as sent, never held whole) as chunks
    with their offsets."""
    offset = 0
    for piece in pieces:
        yield common_pb2.BlobChunk(name=name, offset=offset, data=piece)
        offset += len(piece)


def send_blobs(
    message_type: Any, blobs: Iterable[tuple[str, str, bytes]]
) -> Generator[Any, None, list[common_pb2.BlobHeader]]:
    """Yield every ``(name, media type, data)`` blob as response messages of ``message_type`` (its header in
    ``blob``, then its chunks); return the headers, in order."""
    headers = []
    for name, media_type, data in blobs:
        header = blob_header(name, media_type, data)
        headers.append(header)
        yield message_type(blob=header)
        for chunk in blob_chunks(name, data):
            yield message_type(chunk=chunk)
    return headers


def upload_messages(message_type: Any, start: Any, blobs: dict[str, bytes]) -> Iterator[Any]:
    """An upload stream of ``message_type``: ``start`` (which announces ``blobs``), then every blob's chunks
    in order."""
    yield message_type(start=start)
    for name, data in blobs.items():
        for chunk in blob_chunks(name, data):
            yield message_type(chunk=chunk)


def read_start(requests: Iterator[Any], expected: str) -> Any:
    """The ``start`` payload of an upload stream's first message; :class:`InvalidInput` naming what
    ``start`` must hold (``expected``) when the stream is empty or begins otherwise."""
    first = next(requests, None)
    if first is None or first.WhichOneof("payload") != "start":
        raise InvalidInput("start", f"the first message must be `start` ({expected})")
    return first.start


def blob_mismatch(header: common_pb2.BlobHeader, data: bytes) -> str:
    """Why ``data`` is not the blob ``header`` announced (size, then SHA-256), or "" when it is."""
    if len(data) != header.size_bytes:
        return f"blob {header.name!r} ended after {len(data)} of {header.size_bytes} announced bytes"
    if hashlib.sha256(data).hexdigest() != header.sha256.lower():
        return f"blob {header.name!r} does not match its announced SHA-256"
    return ""


class BlobMismatch(ValueError):
    """A received blob is out of order, oversized, incomplete or corrupted."""


class BlobAssembler:
    """Reassembles the blobs of a response stream (each a header, then its chunks in order) and checks them
    against their headers: :meth:`add_header`, :meth:`add_chunk` per message, :meth:`finish` at the end."""

    def __init__(self) -> None:
        self.headers: dict[str, common_pb2.BlobHeader] = {}
        self._data: dict[str, bytearray] = {}
        self._current = ""

    def add_header(self, header: common_pb2.BlobHeader) -> None:
        """A new blob begins."""
        self.headers[header.name] = header
        self._data[header.name] = bytearray()
        self._current = header.name

    def add_chunk(self, chunk: common_pb2.BlobChunk) -> None:
        """The next chunk of the current blob; :class:`BlobMismatch` when out of order or over 1 MiB."""
        buffer = self._data.get(chunk.name)
        if chunk.name != self._current or buffer is None or chunk.offset != len(buffer):
            raise BlobMismatch(f"chunk of {chunk.name!r} out of order")
        if len(chunk.data) > CHUNK_BYTES:
            raise BlobMismatch(f"chunk of {chunk.name!r} exceeds 1 MiB")
        buffer.extend(chunk.data)

    def finish(self) -> dict[str, bytes]:
        """Every blob (name -> bytes); :class:`BlobMismatch` when one differs from its header. Call once: each
        buffer is dropped as its bytes are made (a response's blobs are in memory once, not twice)."""
        blobs = {}
        for name, header in self.headers.items():
            data = bytes(self._data.pop(name))
            mismatch = blob_mismatch(header, data)
            if mismatch:
                raise BlobMismatch(mismatch)
            blobs[name] = data
        return blobs

    @property
    def media_types(self) -> dict[str, str]:
        """Media type per blob name, as announced."""
        return {name: header.media_type for name, header in self.headers.items()}


def receive_blobs(
    headers: Sequence[common_pb2.BlobHeader],
    chunks: Iterable[common_pb2.BlobChunk],
    required: Sequence[str],
    max_bytes: int,
    field: str = "start.inputs",
) -> dict[str, bytes]:
    """Reassemble the announced blobs from ``chunks`` and check size and SHA-256 against their headers.

    ``required`` lists the blob names that must be announced (no others are accepted); ``max_bytes`` bounds
    each blob. Chunks must follow the headers' order, each continuing at the byte its blob has reached.
    """
    announced = [h.name for h in headers]
    missing = [name for name in required if name not in announced]
    unknown = [name for name in announced if name not in required]
    if missing or unknown or len(set(announced)) != len(announced):
        raise InvalidInput(
            field,
            f"announce exactly the blobs {list(required)} once each; got {announced}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {unknown})" if unknown else ""),
        )
    for header in headers:
        if header.size_bytes > max_bytes:
            raise InvalidInput(
                field, f"blob {header.name!r} is {header.size_bytes} bytes; the limit is {max_bytes}"
            )
    buffers = {h.name: bytearray() for h in headers}
    order = iter(headers)
    current = next(order, None)
    for chunk in chunks:
        while current is not None and len(buffers[current.name]) == current.size_bytes:
            current = next(order, None)
        if current is None or chunk.name != current.name:
            expected = "no more chunks" if current is None else f"a chunk of {current.name!r}"
            raise InvalidInput("chunk.name", f"got a chunk of {chunk.name!r}, expected {expected}")
        buffer = buffers[current.name]
        if chunk.offset != len(buffer):
            raise InvalidInput(
                "chunk.offset", f"chunk of {chunk.name!r} starts at {chunk.offset}, expected {len(buffer)}"
            )
        if len(chunk.data) > CHUNK_BYTES or len(buffer) + len(chunk.data) > current.size_bytes:
            raise InvalidInput(
                "chunk.data",
                f"chunk of {chunk.name!r} is too large (chunks hold at most {CHUNK_BYTES} bytes and a blob "
                f"no more than its announced size {current.size_bytes})",
            )
        buffer.extend(chunk.data)
    result: dict[str, bytes] = {}
    for header in headers:
        data = bytes(buffers[header.name])
        mismatch = blob_mismatch(header, data)
        if mismatch:
            raise InvalidInput(field, mismatch)
        result[header.name] = data
    return result


def upload_chunks(requests: Iterable[Any]) -> Iterator[common_pb2.BlobChunk]:
    """The ``chunk`` payloads of the rest of an upload stream (``start`` was read; anything else is an
    error).
    """
    for message in requests:
        if message.WhichOneof("payload") != "chunk":
            raise InvalidInput("chunk", "after `start`, send only `chunk` messages")
        yield message.chunk


def decode_image(name: str, data: bytes, size: tuple[int, int], channels: int) -> np.ndarray:
    """Decode PNG bytes to uint8 ``[H, W, channels]`` (channels 3 = RGB, 4 = RGBA) of exactly ``size`` (W,
    H).
    """
    try:
        with Image.open(io.BytesIO(data), formats=("PNG",)) as image:
            if image.size != size:  # checked on the header, before anything is decompressed
                raise InvalidInput(
                    name, f"{name} is {image.size[0]}x{image.size[1]}; send {size[0]}x{size[1]}"
                )
            image.load()
            mode = "RGBA" if channels == 4 else "RGB"
            if channels == 4 and image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
                raise InvalidInput(name, f"{name} has no alpha channel; send the RGBA image from preprocess")
            return np.asarray(image.convert(mode), dtype=np.uint8).copy()
    except InvalidInput:
        raise
    except UnidentifiedImageError:  # its message names the buffer object: say what it means instead
        raise InvalidInput(name, f"{name} is not a PNG image") from None
    except Exception as exc:  # PIL raises many types for broken files
        raise InvalidInput(name, f"{name} is not a readable PNG image ({exc})") from exc


def _pool() -> ThreadPoolExecutor:
    """Shared threads for PNG coding (zlib releases the GIL, so views are coded in parallel)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=min(10, os.cpu_count() or 1), thread_name_prefix="png")
    return _POOL


_POOL: ThreadPoolExecutor | None = None


def encode_pngs(images: Sequence[np.ndarray]) -> list[bytes]:
    """:func:`encode_png` of every image, in parallel, in order."""
    return list(_pool().map(encode_png, images))


def decode_images(blobs: dict[str, bytes], size: tuple[int, int], channels: int) -> dict[str, np.ndarray]:
    """:func:`decode_image` of every named blob, in parallel."""
    names = list(blobs)
    arrays = _pool().map(lambda name: decode_image(name, blobs[name], size, channels), names)
    return dict(zip(names, arrays, strict=True))


def encode_png(image: np.ndarray) -> bytes:
    """uint8 ``[H, W, 3|4]`` to PNG bytes (fast compression: these blobs are intermediates)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def voxels_to_proto(coords: np.ndarray, resolution: int) -> common_pb2.VoxelStructure:
    """Integer coords ``[N, 3]`` (x, y, z) to a :class:`VoxelStructure`, in
    :func:`~synchuman.pipelines.handoff.sorted_voxels` (lexicographic) order."""
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"voxel coords must be [N, 3], got {coords.shape}")
    if coords.size and (coords.min() < 0 or coords.max() >= resolution):
        raise ValueError(f"voxel coords must lie in [0, {resolution}), got [{coords.min()}, {coords.max()}]")
    data = sorted_voxels(coords).astype("<u2").tobytes()
    return common_pb2.VoxelStructure(resolution=resolution, count=len(coords), coords_xyz_u16le=data)


def voxels_from_proto(structure: common_pb2.VoxelStructure, resolution: int) -> np.ndarray:
    """A :class:`VoxelStructure` to int64 coords ``[N, 3]``; checks count, byte size and range."""
    field = "start.structure"
    if structure.resolution != resolution:
        raise InvalidInput(
            f"{field}.resolution", f"resolution is {structure.resolution}; this model uses {resolution}"
        )
    if structure.count == 0:
        raise InvalidInput(f"{field}.count", "the voxel structure is empty; stage 1 found no person")
    if len(structure.coords_xyz_u16le) != structure.count * 6:
        raise InvalidInput(
            f"{field}.coords_xyz_u16le",
            f"{len(structure.coords_xyz_u16le)} bytes do not hold {structure.count} voxels (6 bytes each)",
        )
    coords = np.frombuffer(structure.coords_xyz_u16le, dtype="<u2").reshape(-1, 3).astype(np.int64)
    if coords.max() >= resolution:
        raise InvalidInput(
            f"{field}.coords_xyz_u16le", f"coordinates must be < {resolution}, got {coords.max()}"
        )
    if len(np.unique(coords, axis=0)) != len(coords):
        raise InvalidInput(f"{field}.coords_xyz_u16le", "voxel coordinates contain duplicates")
    return coords
