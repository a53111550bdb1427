"""Decoding one input file, DICOM or image, into the model's input, by content.

The command line and the web service read a single CT slice with these functions. A file is
read as DICOM when its content starts as DICOM Part 10 requires (see ``chestct.dicom.is_dicom``),
whatever its name. Any other content is decoded by Pillow through ``chestct.imaging``, exactly
as in training.

Every decoding failure is an ``ImageDecodeError``. Two subclasses mark the cases that a caller
may want to tell apart, for example to choose an HTTP status:

- ``ImagePixelLimitError``: the image has more pixels than ``InputSettings.max_pixels``
  (HTTP 413 Content Too Large);
- ``UnsupportedFormatError``: the content is neither DICOM Part 10 nor an image format that
  Pillow reads (HTTP 415 Unsupported Media Type);
- any other ``ImageDecodeError``, ``DicomDecodeError`` included: an empty, truncated, corrupt
  or unusable file (HTTP 422 Unprocessable Content).
"""

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from chestct.dicom import (
    DicomDecodeError,
    DicomPixelLimitError,
    DicomWindow,
    ImagePixelLimitError,
    is_dicom,
    read_dicom,
)
from chestct.imaging import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, image_info, to_grayscale
from chestct.preprocessing import PreprocessConfig, preprocess_image

__all__ = [
    "DecodedInput",
    "DicomDecodeError",
    "DicomPixelLimitError",
    "ImageDecodeError",
    "ImagePixelLimitError",
    "InputSettings",
    "PreparedInput",
    "UnsupportedFormatError",
    "decode_grayscale",
    "prepare_input",
    "read_input_file",
]

DICOM_FORMAT = "DICOM"


class UnsupportedFormatError(ImageDecodeError):
    """Content that is neither a DICOM Part 10 file nor an image format that Pillow reads."""


@dataclass(frozen=True)
class InputSettings:
    """Decoding parameters from the ``inference`` section of ``params.yaml``.

    ``window`` maps DICOM Hounsfield units to grey levels. ``max_pixels`` is the largest pixel
    count of any input, checked before its pixels are allocated.
    """

    window: DicomWindow = field(default_factory=DicomWindow)
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        if not isinstance(self.window, DicomWindow):
            raise ValueError(f"window must be a DicomWindow, got {type(self.window).__name__}.")
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise ValueError(f"inference.max_pixels must be a positive integer, got {self.max_pixels!r}.")

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> "InputSettings":
        """Build the settings from the ``inference`` section of ``params.yaml``.

        Args:
            section: mapping with ``dicom_window_center``, ``dicom_window_width`` and
                ``max_pixels``. Other keys, such as ``max_upload_bytes``, are ignored.

        Raises:
            ValueError: if a key is missing or a value is invalid.
        """
        if not isinstance(section, dict):
            raise ValueError(f"params.yaml inference section must be a mapping, got {type(section).__name__}.")
        if "max_pixels" not in section:
            raise ValueError("params.yaml is missing inference.max_pixels.")
        return cls(window=DicomWindow.from_params(section), max_pixels=section["max_pixels"])


@dataclass(frozen=True, eq=False)
class DecodedInput:
    """One decoded input file: ``gray``, an ``(H, W) uint8`` image, and ``format``.

    ``format`` is ``"DICOM"`` or the format that Pillow identified (``"PNG"``, ``"JPEG"``...).
    """

    gray: np.ndarray
    format: str


@dataclass(frozen=True, eq=False)
class PreparedInput:
    """One model input: ``image``, the ``(S, S) uint8`` preprocessed slice, and its file's ``format``."""

    image: np.ndarray
    format: str


def decode_grayscale(data: bytes, settings: InputSettings) -> DecodedInput:
    """Decode the bytes of one DICOM or image file into a grayscale image, by content.

    DICOM slices are windowed from Hounsfield units (see ``chestct.dicom``). Other images are
    converted by ``chestct.imaging.to_grayscale``, as in training.

    Args:
        data: the file's content.
        settings: the DICOM window and the pixel limit.

    Returns:
        The ``(H, W) uint8`` image and the detected format.

    Raises:
        ImagePixelLimitError: if the image has more than ``settings.max_pixels`` pixels.
        UnsupportedFormatError: if the content is neither DICOM Part 10 nor an image format.
        ImageDecodeError: if the file is empty, truncated or corrupt, or is a DICOM file that
            is not a single-frame CT slice (``DicomDecodeError``).
        TypeError: if ``data`` is not bytes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be the file's bytes, got {type(data).__name__}; use read_input_file for a path.")
    if not isinstance(settings, InputSettings):
        raise ValueError(f"settings must be InputSettings, got {type(settings).__name__}.")

    data = bytes(data)
    if is_dicom(data):
        return DecodedInput(gray=read_dicom(data, settings.window, settings.max_pixels), format=DICOM_FORMAT)

    try:
        image = decode_image(data, settings.max_pixels)
    except ImageDecodeError as error:
        raise _classify_pillow_error(data, settings.max_pixels, error) from None

    info = image_info(image)
    try:
        gray = to_grayscale(image)
    # Pillow decodes some modes (LAB TIFF) that it cannot convert to grayscale.
    except (OSError, ValueError) as error:
        raise ImageDecodeError(f"unsupported image mode {info.mode}: {error}") from None

    return DecodedInput(gray=gray, format=info.format)


def read_input_file(path: str | Path, settings: InputSettings) -> DecodedInput:
    """Read one DICOM or image file into a grayscale image, by content, whatever its name.

    Args:
        path: the file.
        settings: the DICOM window and the pixel limit.

    Returns:
        The ``(H, W) uint8`` image and the detected format.

    Raises:
        ImageDecodeError: as ``decode_grayscale`` raises it, same class, with a message that
            starts with ``path``.
        OSError: if the file cannot be read.
    """
    path = Path(path)
    data = path.read_bytes()

    try:
        return decode_grayscale(data, settings)
    except ImageDecodeError as error:
        raise type(error)(f"{path}: {error}") from None


def prepare_input(data: bytes, preprocess: PreprocessConfig, settings: InputSettings) -> PreparedInput:
    """Decode one DICOM or image file and preprocess it exactly as in training.

    Args:
        data: the file's content.
        preprocess: the ``preprocess`` parameters the model was trained with.
        settings: the DICOM window and the pixel limit.

    Returns:
        The ``(image_size, image_size) uint8`` model input and the detected format.

    Raises:
        ImageDecodeError: as ``decode_grayscale`` raises it.
    """
    if not isinstance(preprocess, PreprocessConfig):
        raise ValueError(f"preprocess must be a PreprocessConfig, got {type(preprocess).__name__}.")

    decoded = decode_grayscale(data, settings)
    return PreparedInput(image=preprocess_image(decoded.gray, preprocess), format=decoded.format)


def _classify_pillow_error(data: bytes, max_pixels: int, error: ImageDecodeError) -> ImageDecodeError:
    """Return ``error`` as ``UnsupportedFormatError`` or ``ImagePixelLimitError`` where it is one.

    ``decode_image`` raises a plain ``ImageDecodeError`` for every failure, so the header is read
    again, without decoding pixels, to find the cause. The message stays ``decode_image``'s own.
    """
    if not data:
        return error

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except UnidentifiedImageError:
        return UnsupportedFormatError(
            f"{error}. Expected a DICOM Part 10 file (128-byte preamble, then 'DICM') or an image "
            "format such as PNG or JPEG."
        )
    except (OSError, SyntaxError, ValueError):
        return error

    if width * height > max_pixels:
        return ImagePixelLimitError(str(error))
    return error
