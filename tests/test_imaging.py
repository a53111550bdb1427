import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from chestct.imaging import ImageDecodeError, decode_image, image_info, read_grayscale, to_grayscale
from tests.datasets import encode

GRADIENT = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (8, 1))


def saved(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "1"])
def test_modes_become_uint8_grayscale(mode):
    data = encode(GRADIENT, "PNG", mode)

    gray = to_grayscale(decode_image(data))

    assert gray.shape == GRADIENT.shape
    assert gray.dtype == np.uint8


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P"])
def test_gray_content_survives_mode(mode):
    gray = to_grayscale(decode_image(encode(GRADIENT, "PNG", mode)))

    assert np.abs(gray.astype(int) - GRADIENT).max() <= 1


def test_transparent_pixels_become_black():
    rgba = Image.fromarray(GRADIENT, "L").convert("RGBA")
    rgba.putalpha(0)

    gray = to_grayscale(decode_image(saved(rgba)))

    assert (gray == 0).all()


def test_sixteen_bit_png_is_stretched():
    values = np.linspace(1000, 3000, 64, dtype=np.uint16).reshape(8, 8)
    data = saved(Image.fromarray(values))

    gray = to_grayscale(decode_image(data))

    assert gray.min() == 0
    assert gray.max() == 255


def test_sixteen_bit_png_mode():
    values = np.linspace(1000, 3000, 64, dtype=np.uint16).reshape(8, 8)

    assert decode_image(saved(Image.fromarray(values))).mode.startswith("I")


def test_constant_sixteen_bit_image_is_black():
    values = np.full((8, 8), 500, dtype=np.uint16)

    assert (to_grayscale(decode_image(saved(Image.fromarray(values)))) == 0).all()


def test_jpeg_named_png_decodes_by_content(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(encode(GRADIENT, "JPEG", "RGB"))

    assert image_info(decode_image(path.read_bytes())).format == "JPEG"
    assert read_grayscale(path).shape == GRADIENT.shape


def test_empty_file_rejected():
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")


def test_text_file_rejected():
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(b"patient notes, not a picture\n")


def test_truncated_png_rejected():
    data = encode(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))

    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_pixel_limit_rejects_large_image():
    data = encode(np.zeros((200, 300), dtype=np.uint8), "PNG", "L")

    with pytest.raises(ImageDecodeError, match="too many pixels"):
        decode_image(data, max_pixels=200 * 299)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """Return a PNG that declares ``width`` x ``height`` grayscale pixels but contains no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunks = png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"") + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def test_huge_declared_size_rejected_before_decoding():
    with pytest.raises(ImageDecodeError, match="20000x20000 is more than the limit of 50,000,000"):
        decode_image(png_header_only(20000, 20000))


def test_pixel_limit_above_pillow_default_applies():
    # 14000x14000 is above twice Pillow's own decompression-bomb limit of about 89 million pixels,
    # where Pillow itself would raise.
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode_image(png_header_only(14000, 14000), max_pixels=300_000_000)


def test_read_grayscale_names_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"")

    with pytest.raises(ImageDecodeError, match="broken.png"):
        read_grayscale(path)
