"""Checks of a submission's photo and idempotency key, with errors that say what to send instead."""

from __future__ import annotations

import io

import grpc

from gateway.errors import JobError
from services.common.stage_runtime import bad_request

#: Pillow format -> media type stored with the photo.
IMAGE_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "GIF": "image/gif",
    "MPO": "image/jpeg",
}
MAX_KEY_CHARS = 128


def check_idempotency_key(key: str) -> None:
    """INVALID_ARGUMENT for a key longer than :data:`MAX_KEY_CHARS` or with unprintable characters."""
    if len(key) > MAX_KEY_CHARS or not key.isprintable():
        raise JobError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the idempotency key must be at most {MAX_KEY_CHARS} printable characters",
            bad_request("idempotency_key", "too long or not printable"),
        )


def photo_media_type(image: bytes, max_bytes: int) -> str:
    """The photo's media type; INVALID_ARGUMENT when it is empty, over ``max_bytes`` or not an image."""
    if not image:
        raise JobError(
            grpc.StatusCode.INVALID_ARGUMENT, "the photo is empty", bad_request("image", "no bytes sent")
        )
    if len(image) > max_bytes:
        raise JobError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the photo is {len(image)} bytes; the limit is {max_bytes}",
            bad_request("image", "too large"),
        )
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image)) as opened:
            kind = opened.format or ""
    except (UnidentifiedImageError, OSError) as exc:
        raise JobError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "the upload is not a readable image; send a JPEG, PNG or WebP photo",
            bad_request("image", str(exc)),
        ) from exc
    return IMAGE_TYPES.get(kind, "application/octet-stream")
