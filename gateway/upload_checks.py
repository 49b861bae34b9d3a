"""Checks of a submission's photo and idempotency key, with errors that say what to send instead."""

from __future__ import annotations

import re

import grpc

from gateway.errors import JobError
from services.common.conversions import preprocess_error_details
from services.common.rpc_status import bad_request
from synchuman.preprocess.decode import decode_image
from synchuman.preprocess.errors import InvalidImageError

#: Pillow format -> media type stored with the photo.
IMAGE_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "GIF": "image/gif",
    "AVIF": "image/avif",
    "PPM": "image/x-portable-anymap",
    "TGA": "image/x-tga",
}
MAX_KEY_CHARS = 128
#: The characters of an idempotency key (also the OpenAPI pattern of the form field).
KEY_PATTERN = re.compile("[ -~]*")


def check_idempotency_key(key: str) -> None:
    """INVALID_ARGUMENT for a key longer than :data:`MAX_KEY_CHARS` or with characters other than printable
    ASCII (space to ``~``: what an HTTP header carries, and what :data:`KEY_PATTERN` declares)."""
    if len(key) > MAX_KEY_CHARS or not KEY_PATTERN.fullmatch(key):
        raise JobError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the idempotency key must be at most {MAX_KEY_CHARS} printable ASCII characters",
            bad_request("idempotency_key", "too long or not printable ASCII"),
        )


def checked_photo_media_type(image: bytes, max_bytes: int) -> str:
    """The media type of a photo the preprocess stage will accept; INVALID_ARGUMENT otherwise.

    The photo is decoded in full by the preprocess stage's own decoder
    (:func:`synchuman.preprocess.decode.decode_image`: format allow-list, byte and pixel limits, truncation,
    animation, minimum size), so an empty, oversized, undecodable, truncated, animated or too large
    (decompression bomb) photo fails ``SubmitJob`` itself, with the stage's message and ``google.rpc``
    details (BadRequest on ``image`` + ErrorInfo reason such as ``TRUNCATED_IMAGE``), before the job is
    stored.
    """
    try:
        decoded = decode_image(image, max_bytes=max_bytes)
    except InvalidImageError as error:
        details = preprocess_error_details(error)
        raise JobError(grpc.StatusCode.INVALID_ARGUMENT, str(error), *details) from None
    return IMAGE_TYPES.get(decoded.format, "application/octet-stream")
