"""Schemathesis set-up for the gateway's HTTP bridge (tests only; ``SCHEMATHESIS_HOOKS=schemathesis_hooks``
with ``tests/`` on ``PYTHONPATH``).

No schema can say "a decodable photo", so the photo media types of ``POST /v1/jobs`` (the raw body and the
multipart ``image`` part) are generated as real photos (32 to 64 pixels a side, random pixels) in the format
the media type names; "valid data must be accepted" is then checked for everything else (options,
idempotency key, parameters).
"""

from __future__ import annotations

import io

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image

#: media type -> Pillow format of the generated photo
FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "application/octet-stream": "PNG"}


@st.composite
def photos(draw: st.DrawFn, fmt: str) -> bytes:
    """A random photo in Pillow format ``fmt``."""
    width, height = draw(st.integers(32, 64)), draw(st.integers(32, 64))
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


for media_type, fmt in FORMATS.items():
    schemathesis.openapi.media_type(media_type, photos(fmt))
