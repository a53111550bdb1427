"""Decoding image files by content into one grayscale array.

Files are identified by their bytes, never by their extension: the Kaggle dataset has JPEG
files named ``.png``. Every supported input mode (RGBA, RGB, palette, grayscale, 16-bit and
32-bit) ends as one ``(H, W) uint8`` array.
"""

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 50 megapixels is far above any CT slice (512x512 is typical) yet refuses decompression bombs
# before their pixels are allocated.
DEFAULT_MAX_PIXELS = 50_000_000

_HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}

# decode_image checks the pixel count against its own max_pixels right after reading the
# header. Pillow's global limit would otherwise cap max_pixels at about 89 million pixels.
Image.MAX_IMAGE_PIXELS = None


class ImageDecodeError(ValueError):
    """A file that cannot be decoded into an image; the message names the reason."""


@dataclass(frozen=True)
class ImageInfo:
    """Metadata of a decoded image: container format (``PNG``, ``JPEG``...), PIL mode, size."""

    format: str
    mode: str
    width: int
    height: int


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image bytes completely, identifying the format by content.

    Raises:
        ImageDecodeError: if the bytes are empty, not an image, larger than ``max_pixels``,
            or truncated or corrupt.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")

    try:
        image = Image.open(io.BytesIO(data))
        _check_pixel_count(image, max_pixels)
        image.load()
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image: the content matches no supported image format") from None
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageDecodeError):
            raise
        raise ImageDecodeError(f"truncated or corrupt image data: {error}") from None

    return image


def image_info(image: Image.Image) -> ImageInfo:
    """Return the format, mode and size of an image opened by ``decode_image``."""
    return ImageInfo(format=image.format or "unknown", mode=image.mode, width=image.width, height=image.height)


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Convert an image of any mode to one ``(H, W) uint8`` grayscale array.

    Colour is reduced with the ITU-R 601 luma weights. Transparent pixels are composited over
    black, the colour of air in a CT slice. 16-bit and 32-bit images are stretched linearly
    from their minimum to their maximum, because their value range depends on the exporter.
    """
    # In place: a transposed copy of every image would cost more than the rest of this function.
    ImageOps.exif_transpose(image, in_place=True)

    if image.mode in _HIGH_DEPTH_MODES:
        return _stretch_to_uint8(np.asarray(image, dtype=np.float64))

    if image.mode in {"P", "PA"}:
        image = image.convert("RGBA")
    if "A" in image.getbands() and image.getchannel("A").getextrema() != (255, 255):
        alpha = np.asarray(image.getchannel("A"), dtype=np.uint16)
        gray = np.asarray(image.convert("L"), dtype=np.uint16)
        return ((gray * alpha + 127) // 255).astype(np.uint8)

    return np.asarray(image.convert("L"), dtype=np.uint8).copy()


def read_grayscale(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file into a ``(H, W) uint8`` grayscale array.

    Raises:
        ImageDecodeError: with the file's path in the message.
    """
    path = Path(path)
    try:
        return to_grayscale(decode_image(path.read_bytes(), max_pixels))
    except ImageDecodeError as error:
        raise ImageDecodeError(f"{path}: {error}") from None


def _check_pixel_count(image: Image.Image, max_pixels: int) -> None:
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise ImageDecodeError(
            f"too many pixels: {image.width}x{image.height} is more than the limit of {max_pixels:,} pixels"
        )


def _stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)
