"""Safe image decoding: format allow-list, size and pixel limits, EXIF orientation, any colour mode to 8-bit.

Pillow never runs with ``LOAD_TRUNCATED_IMAGES``: a file whose data ends early fails to decode here instead of
yielding a half-grey picture.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from synchuman.preprocess.errors import InvalidImageError

Image.init()  # register every plugin, so that the allow-list below sees what this Pillow can read
#: Formats Pillow may use to open uploads (others, e.g. EPS through Ghostscript, are refused).
ALLOWED_FORMATS: tuple[str, ...] = tuple(
    f for f in ("JPEG", "PNG", "WEBP", "AVIF", "BMP", "TIFF", "GIF", "PPM", "TGA") if f in Image.OPEN
)
#: Default pixel limit (width x height after decoding): larger images are refused as decompression bombs.
DEFAULT_MAX_PIXELS = 64_000_000
#: Default byte limit of an upload.
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
#: The smallest accepted image side in pixels.
MIN_SIDE = 16


@dataclass(frozen=True)
class DecodedImage:
    """An upright 8-bit image.

    ``rgb``: uint8 [H, W, 3]. ``alpha``: uint8 [H, W] or None when the file has no alpha channel.
    ``format``: Pillow's format name (``"JPEG"``, ``"PNG"`` ...). ``mode``: the file's original colour mode.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    format: str
    mode: str

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.rgb.shape[1], self.rgb.shape[0]

    def rgba(self) -> np.ndarray:
        """uint8 [H, W, 4]; alpha 255 when the file has none."""
        alpha = self.alpha if self.alpha is not None else np.full(self.rgb.shape[:2], 255, np.uint8)
        return np.dstack([self.rgb, alpha])


def _to_uint8_gray(image: Image.Image) -> np.ndarray:
    """uint8 [H, W] from a high-bit-depth or float single-channel image (``I;16*``, ``I``, ``F``)."""
    values = np.asarray(image)
    if values.dtype.kind == "f":
        finite = values[np.isfinite(values)]
        top = float(finite.max()) if finite.size else 1.0
        scale = 255.0 if top <= 1.0 else 255.0 / max(top, 1e-6) if top > 255.0 else 1.0
        return np.clip(np.nan_to_num(values) * scale, 0, 255).astype(np.uint8)
    values = values.astype(np.int64)
    if image.mode.startswith("I;16") or values.max(initial=0) > 255:
        scaled = values // 257 if values.max(initial=0) <= 65535 else values >> 24
        return np.clip(scaled, 0, 255).astype(np.uint8)
    return np.clip(values, 0, 255).astype(np.uint8)


def _to_rgb_alpha(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Convert any Pillow mode to (uint8 RGB [H, W, 3], uint8 alpha [H, W] or None)."""
    mode = image.mode
    if mode == "P":
        has_alpha = "transparency" in image.info or image.palette is not None and image.palette.mode == "RGBA"
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode in ("LA", "La", "RGBa"):
        image = image.convert("RGBA")
    elif mode == "L" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode in ("I", "F") or mode.startswith("I;16"):
        gray = _to_uint8_gray(image)
        return np.repeat(gray[:, :, None], 3, axis=2), None
    elif mode not in ("RGB", "RGBA"):  # 1, L, CMYK, YCbCr, LAB, HSV, RGBX
        image = image.convert("RGB")
    values = np.asarray(image)
    if image.mode == "RGBA":
        return np.ascontiguousarray(values[:, :, :3]), np.ascontiguousarray(values[:, :, 3])
    return np.ascontiguousarray(values), None


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> DecodedImage:
    """Decode an uploaded photo into an upright 8-bit image.

    Applies the EXIF orientation; palette, grayscale, 16-bit, float and CMYK inputs become RGB (plus alpha
    when the file has one). Raises :class:`InvalidImageError` (never anything else for bad bytes) when the
    data is empty, too large, not an image in an allowed format, truncated or corrupt, animated, or has more
    than ``max_pixels`` pixels. Multi-picture JPEGs (MPO, e.g. iPhone photos with a depth or gain map) use
    their first picture.
    """
    if not data:
        raise InvalidImageError("EMPTY_FILE", "the file is empty (0 bytes); send a JPEG, PNG or WebP photo")
    if len(data) > max_bytes:
        raise InvalidImageError(
            "FILE_TOO_LARGE",
            f"the file is {len(data) / 2**20:.1f} MiB, above the limit of {max_bytes / 2**20:.0f} MiB; "
            "send a smaller or more compressed photo",
        )
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise InvalidImageError(
            "NOT_AN_IMAGE",
            f"the file is not an image in a supported format ({', '.join(ALLOWED_FORMATS)}); "
            "send a JPEG, PNG or WebP photo",
        ) from None
    except Image.DecompressionBombError:
        raise _too_many_pixels(None, max_pixels) from None
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise many types on hostile headers
        raise InvalidImageError(
            "CORRUPT_IMAGE", f"the image header is corrupt ({exc}); re-export the photo"
        ) from None
    with image:
        return decode_pil(image, max_pixels)


def decode_pil(image: Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """An opened Pillow image (from :func:`decode_image` or a caller's ``Image.open``) -> upright 8-bit
    :class:`DecodedImage`, with :func:`decode_image`'s checks on size, frames and damaged data (raising
    :class:`InvalidImageError`)."""
    width, height = image.size
    if width * height > max_pixels:
        raise _too_many_pixels((width, height), max_pixels)
    if min(width, height) < MIN_SIDE:
        raise InvalidImageError(
            "IMAGE_TOO_SMALL", f"the image is only {width}x{height} pixels; send a photo of at least "
            f"{MIN_SIDE}x{MIN_SIDE} (ideally 512 pixels or more on the short side)"
        )
    frames = _frame_count(image)
    if frames > 1 and image.format != "MPO":
        raise InvalidImageError(
            "ANIMATED_IMAGE",
            f"the {image.format} file is animated ({frames} frames); send a single still photo "
            "(export one frame as PNG or JPEG)",
        )
    source_format = "JPEG" if image.format == "MPO" else image.format or "unknown"
    source_mode = image.mode
    try:
        image.load()
        upright = ImageOps.exif_transpose(image)
        rgb, alpha = _to_rgb_alpha(upright)
    except Image.DecompressionBombError:
        raise _too_many_pixels((width, height), max_pixels) from None
    except Exception as exc:  # noqa: BLE001 - hostile data makes Pillow raise many types
        if "truncated" in str(exc) or isinstance(exc, (EOFError, struct.error)):
            raise InvalidImageError(
                "TRUNCATED_IMAGE",
                f"the {source_format} file is truncated ({exc}); the upload or copy was probably cut "
                "short: send the complete original file",
            ) from None
        raise InvalidImageError(
            "CORRUPT_IMAGE",
            f"the {source_format} file is damaged ({type(exc).__name__}: {exc}); re-export the photo or "
            "send the original file",
        ) from None
    return DecodedImage(rgb=rgb, alpha=alpha, format=source_format, mode=source_mode)


def _frame_count(image: Image.Image) -> int:
    """Frames (pages) in the file; counting them parses the rest of it (GIF frames, TIFF pages), so damage
    found there is CORRUPT_IMAGE."""
    try:
        return int(getattr(image, "n_frames", 1))
    except Exception as exc:  # noqa: BLE001 - hostile data makes Pillow raise many types
        raise InvalidImageError(
            "CORRUPT_IMAGE",
            f"the {image.format} file is damaged ({type(exc).__name__}: {exc}); re-export the photo or send "
            "the original file",
        ) from None


def _too_many_pixels(size: tuple[int, int] | None, max_pixels: int) -> InvalidImageError:
    what = f"{size[0]}x{size[1]} pixels" if size else "too many pixels"
    return InvalidImageError(
        "TOO_MANY_PIXELS",
        f"the image has {what}, above the limit of {max_pixels / 1e6:.0f} megapixels (decompression-bomb "
        "guard); downscale it (the person needs only about 1000 pixels of height)",
    )
