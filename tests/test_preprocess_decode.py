"""Decoding: every supported mode becomes upright 8-bit RGB(A); every bad input a clear InvalidImageError."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from synchuman.preprocess.decode import decode_image
from synchuman.preprocess.errors import InvalidImageError


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def gradient(width: int = 64, height: int = 48) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    return np.concatenate(
        [np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
         np.full((height, width, 1), 100, np.float32)], axis=2
    ).astype(np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (8-bit gray) with a token IDAT: a decompression-bomb header."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def expect_error(data: bytes, code: str, **kwargs) -> InvalidImageError:
    with pytest.raises(InvalidImageError) as info:
        decode_image(data, **kwargs)
    assert info.value.code == code, (info.value.code, str(info.value))
    assert str(info.value)  # a message for a person
    return info.value


# ---- good inputs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF"])
def test_rgb_formats_decode(fmt: str) -> None:
    rgb = gradient()
    kwargs = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    out = decode_image(encode(Image.fromarray(rgb), fmt, **kwargs))
    assert out.rgb.shape == (48, 64, 3) and out.rgb.dtype == np.uint8
    assert out.alpha is None
    tolerance = 0 if fmt in ("PNG", "BMP", "TIFF") else 12
    assert np.abs(out.rgb.astype(int) - rgb).mean() <= tolerance


def test_exif_orientation_is_applied() -> None:
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[0:5, 0:5] = (255, 0, 0)  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be rotated 90 degrees clockwise to be upright
    out = decode_image(encode(Image.fromarray(rgb), "PNG", exif=exif))
    assert out.size == (20, 40)  # width and height swapped
    # after a clockwise rotation the stored top-left corner is at the top-right
    assert out.rgb[2, 17, 0] == 255 and out.rgb[2, 2, 0] == 0


def test_palette_with_transparency_gives_alpha() -> None:
    image = Image.new("P", (32, 32), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (8, 8, 24, 24))
    out = decode_image(encode(image, "PNG", transparency=0))
    assert out.alpha is not None
    assert out.alpha[0, 0] == 0 and out.alpha[16, 16] == 255
    assert tuple(out.rgb[16, 16]) == (255, 0, 0)


def test_grayscale_and_la() -> None:
    gray = gradient()[:, :, 0]
    out = decode_image(encode(Image.fromarray(gray, "L"), "PNG"))
    assert out.alpha is None and (out.rgb == gray[:, :, None]).all()
    la = Image.merge("LA", [Image.fromarray(gray, "L"), Image.fromarray(255 - gray, "L")])
    out = decode_image(encode(la, "PNG"))
    assert out.alpha is not None and (out.alpha == 255 - gray).all()


def test_16bit_grayscale_is_scaled_to_8bit() -> None:
    values = np.array([[0, 257 * 100, 65535, 257 * 7]], np.uint16).repeat(16, 0).repeat(8, 1)
    out = decode_image(encode(Image.fromarray(values), "PNG"))
    assert out.rgb.dtype == np.uint8
    assert list(out.rgb[0, ::8, 0]) == [0, 100, 255, 7]


def test_16bit_rgba_png(tmp_path) -> None:
    import cv2

    values = np.zeros((24, 24, 4), np.uint16)
    values[..., 2] = 65535  # red in OpenCV's BGRA order
    values[..., 3] = 257 * 128
    path = tmp_path / "rgba16.png"
    cv2.imwrite(str(path), values)
    out = decode_image(path.read_bytes())
    assert tuple(out.rgb[3, 3]) == (255, 0, 0) and out.alpha is not None and out.alpha[3, 3] == 128


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # no cyan/black, full magenta+yellow = red
    out = decode_image(encode(cmyk, "JPEG", quality=95))
    assert out.mode == "CMYK" and out.alpha is None
    r, g, b = out.rgb[16, 16].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_single_frame_gif_is_accepted() -> None:
    out = decode_image(encode(Image.fromarray(gradient()).convert("P"), "GIF"))
    assert out.rgb.shape == (48, 64, 3)


# ---- bad inputs --------------------------------------------------------------------------------------------


def test_zero_bytes() -> None:
    expect_error(b"", "EMPTY_FILE")


@pytest.mark.parametrize(
    "data", [b"hello, this is not an image\n" * 10, b"\x00" * 1000, b"%PDF-1.7\n" + b"x" * 100]
)
def test_non_image_data(data: bytes) -> None:
    expect_error(data, "NOT_AN_IMAGE")


def test_real_truncated_phone_jpeg(images_dir) -> None:
    error = expect_error((images_dir / "photo_truncated.jpeg").read_bytes(), "TRUNCATED_IMAGE")
    assert "truncated" in str(error) and "complete original file" in str(error)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_files(fmt: str) -> None:
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)), fmt)
    with pytest.raises(InvalidImageError) as info:
        decode_image(data[: len(data) * 2 // 3])
    assert info.value.code in ("TRUNCATED_IMAGE", "CORRUPT_IMAGE", "NOT_AN_IMAGE")


def test_corrupt_png_data() -> None:
    data = bytearray(encode(Image.fromarray(gradient()), "PNG"))
    start = data.index(b"IDAT") + 8
    data[start : start + 40] = bytes(range(40))
    expect_error(bytes(data), "CORRUPT_IMAGE")


def test_decompression_bomb_above_our_limit() -> None:
    # 10000 x 8000 = 80 MP: above our 64 MP default, below Pillow's own bomb limit -> our header check.
    error = expect_error(png_header_only(10000, 8000), "TOO_MANY_PIXELS")
    assert "10000x8000" in str(error)


def test_decompression_bomb_above_pillow_limit() -> None:
    expect_error(png_header_only(30000, 30000), "TOO_MANY_PIXELS")  # Pillow's DecompressionBombError


def test_pixel_limit_is_configurable() -> None:
    data = encode(Image.fromarray(gradient()), "PNG")
    expect_error(data, "TOO_MANY_PIXELS", max_pixels=1000)
    expect_error(data, "FILE_TOO_LARGE", max_bytes=100)


def test_tiny_image() -> None:
    expect_error(encode(Image.new("RGB", (8, 8)), "PNG"), "IMAGE_TOO_SMALL")


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_files(fmt: str) -> None:
    frames = [Image.new("RGB", (32, 32), color) for color in ("red", "green", "blue")]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    error = expect_error(data, "ANIMATED_IMAGE")
    assert "3 frames" in str(error)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"])
def test_mutated_files_never_escape_as_other_errors(fmt: str) -> None:
    """Random byte corruption and cuts: either a decoded image or InvalidImageError, nothing else."""
    rng = np.random.default_rng(zlib.crc32(fmt.encode()))
    image = Image.fromarray(gradient(96, 80))
    good = encode(image.convert("P") if fmt == "GIF" else image, fmt)
    for _ in range(40):
        data = bytearray(good)
        for position in rng.integers(0, len(data), size=int(rng.integers(1, 12))):
            data[position] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            data = data[: int(rng.integers(1, len(data)))]
        try:
            out = decode_image(bytes(data))
        except InvalidImageError as error:
            assert error.code and str(error)
        else:
            assert out.rgb.dtype == np.uint8 and out.rgb.ndim == 3
