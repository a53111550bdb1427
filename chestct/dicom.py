"""Reading one DICOM CT slice into the grayscale image the model expects.

A DICOM Part 10 file is parsed in memory with pydicom. Its stored values become Hounsfield
units (HU) through the Rescale Slope and Rescale Intercept, and a linear lung window maps
``center - width / 2`` to 0 and ``center + width / 2`` to 255. The window stored in the file
itself (Window Center and Window Width) is ignored, so that every slice is mapped with the same
window. MONOCHROME1 slices are inverted after windowing, so the result looks as a DICOM viewer
displays it.

Header attributes are checked before any pixel data is decoded: pixel data present, modality
CT, one frame, one grayscale sample per pixel, the pixel count and a decodable transfer syntax.

Error messages and log records name technical attributes only (transfer syntax, modality,
size, rescale parameters), never a value that could identify a patient (name, IDs, dates).
"""

import io
import logging
import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from chestct.imaging import ImageDecodeError

logger = logging.getLogger(__name__)

# A DICOM Part 10 file starts with a 128-byte preamble followed by the magic bytes "DICM"
# (DICOM PS3.10, section 7.1).
_PREAMBLE_LENGTH = 128
_MAGIC = b"DICM"

_GRAYSCALE_INTERPRETATIONS = ("MONOCHROME1", "MONOCHROME2")

# Values quoted in messages must match their value representation (DICOM PS3.5, table 6.2-1):
# a code string (CS) such as Modality, or a UID. A value from a damaged file can run on into
# the elements after it, so anything else is described without being quoted.
_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")
_UID_STRING = re.compile(r"[0-9.]{1,64}")

# pydicom's warnings and log records quote element values, such as "Invalid value for VR CS:
# '...'". While read_dicom runs, records of the "pydicom" logger, where pydicom's warn_and_log
# writes, are dropped and counted, and pydicom's UserWarnings, which repeat them, are ignored.
_PYDICOM_LOGGER = "pydicom"
_PYDICOM_MODULES = r"pydicom(\.|$)"
_dropped_records: ContextVar[list[int] | None] = ContextVar("chestct_dicom_dropped_records", default=None)


class ImagePixelLimitError(ImageDecodeError):
    """An image whose pixel count exceeds the limit, raised before its pixels are allocated.

    Defined here rather than in ``chestct.inputs`` because that module imports this one, and
    DICOM pixel-limit errors must be instances of it too.
    """


class DicomDecodeError(ImageDecodeError):
    """A DICOM file that cannot be turned into a CT slice. The message names the reason."""


class DicomPixelLimitError(DicomDecodeError, ImagePixelLimitError):
    """A DICOM file whose Rows x Columns x frames exceeds the pixel limit."""


@dataclass(frozen=True)
class DicomWindow:
    """Linear display window in Hounsfield units: ``center`` and ``width``.

    The default, center -600 HU and width 1500 HU, is a lung window. It spans -1350 HU, below
    air at -1000 HU, to 150 HU, soft tissue.
    """

    center: float = -600.0
    width: float = 1500.0

    def __post_init__(self):
        for name in ("center", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"inference.dicom_window_{name} must be a finite number of HU, got {value!r}.")
            # Stored as float so that YAML integers and floats give equal windows.
            object.__setattr__(self, name, float(value))

        if self.width <= 0:
            raise ValueError(f"inference.dicom_window_width must be greater than 0 HU, got {self.width!r}.")

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> "DicomWindow":
        """Build a window from the ``inference`` section of ``params.yaml``.

        Args:
            section: mapping with ``dicom_window_center`` and ``dicom_window_width``.

        Raises:
            ValueError: if a key is missing or a value is invalid.
        """
        missing = [f"inference.{key}" for key in ("dicom_window_center", "dicom_window_width") if key not in section]
        if missing:
            raise ValueError(f"params.yaml is missing {', '.join(missing)}.")
        return cls(center=section["dicom_window_center"], width=section["dicom_window_width"])


def is_dicom(data: bytes) -> bool:
    """Return whether ``data`` is a DICOM Part 10 file: a 128-byte preamble, then ``DICM``."""
    return data[_PREAMBLE_LENGTH : _PREAMBLE_LENGTH + len(_MAGIC)] == _MAGIC


def apply_window(hounsfield: np.ndarray, window: DicomWindow) -> np.ndarray:
    """Map Hounsfield units to grey levels with a linear window.

    ``center - width / 2`` maps to 0 and ``center + width / 2`` to 255. Values outside the
    window are clipped, and the rest are rounded to the nearest grey level.

    Args:
        hounsfield: array of HU values.
        window: the display window.

    Returns:
        ``uint8`` array of the same shape.
    """
    return _apply_window_in_place(np.array(hounsfield, dtype=np.float64), window)


def read_dicom(data: bytes, window: DicomWindow, max_pixels: int) -> np.ndarray:
    """Decode one DICOM CT slice into a windowed grayscale image.

    Args:
        data: the bytes of a DICOM Part 10 file. They are parsed in memory, never written to disk.
        window: the display window applied to Hounsfield units.
        max_pixels: largest Rows x Columns x frames accepted, checked before decoding.

    Returns:
        ``(Rows, Columns) uint8`` array.

    Raises:
        DicomPixelLimitError: if the slice has more than ``max_pixels`` pixels.
        DicomDecodeError: if the file is not DICOM Part 10, is truncated or malformed, has no
            pixel data, is not a single-frame grayscale CT slice, or uses a compression that the
            installed packages cannot decode.
        ValueError: if ``window`` or ``max_pixels`` is invalid.
    """
    if not isinstance(window, DicomWindow):
        raise ValueError(f"window must be a DicomWindow, got {type(window).__name__}.")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}.")

    with _pydicom_output_dropped():
        dataset = _parse(data)
        header = _read_header(dataset)
        _check_header(header, max_pixels)
        _check_decoder(header.transfer_syntax)
        stored = _decode_pixels(dataset, header)

    hounsfield = _rescale_to_hounsfield(stored, header)
    gray = _apply_window_in_place(hounsfield, window)

    if header.photometric_interpretation == "MONOCHROME1":
        # MONOCHROME1 displays the lowest value as white.
        gray = 255 - gray

    logger.debug(
        "Decoded a %dx%d DICOM CT slice (%s, %s, rescale slope %g, intercept %g).",
        header.rows,
        header.columns,
        header.transfer_syntax.name,
        header.photometric_interpretation,
        header.rescale_slope,
        header.rescale_intercept,
    )
    return gray


class _DropWhileReading(logging.Filter):
    """Drop, and count, the log records emitted while ``read_dicom`` runs in this thread or task."""

    def filter(self, record: logging.LogRecord) -> bool:
        dropped = _dropped_records.get()
        if dropped is None:
            return True
        dropped[0] += 1
        return False


# A logger's filters do not apply to records that its children pass up, so the pixel modules'
# own loggers get the filter too: pydicom's decoders log a traceback at ERROR on every failure.
_drop_while_reading = _DropWhileReading()
for _name in (_PYDICOM_LOGGER, "pydicom.pixels.decoders.base", "pydicom.pixels.utils"):
    logging.getLogger(_name).addFilter(_drop_while_reading)


@contextmanager
def _pydicom_output_dropped() -> Iterator[None]:
    # NOTE: warning filters are process-wide, so pydicom's UserWarnings stay ignored after the
    # first call. warn_and_log writes each of them to the "pydicom" logger too, so outside
    # read_dicom they still reach the logs.
    if not any(_is_pydicom_ignore_filter(entry) for entry in warnings.filters):
        warnings.filterwarnings("ignore", category=UserWarning, module=_PYDICOM_MODULES)

    dropped = [0]
    token = _dropped_records.set(dropped)
    try:
        yield
    finally:
        _dropped_records.reset(token)
        if dropped[0]:
            logger.debug("Dropped %d pydicom log records, which may quote element values.", dropped[0])


def _is_pydicom_ignore_filter(entry: tuple) -> bool:
    # The module of a filter is a compiled pattern, or a plain string in Python's default filters.
    action, _, category, module, _ = entry
    pattern = getattr(module, "pattern", module)
    return action == "ignore" and category is UserWarning and pattern == _PYDICOM_MODULES


@dataclass(frozen=True)
class _SliceHeader:
    """Technical attributes of a DICOM data set, read before its pixel data is decoded."""

    has_pixel_data: bool
    modality: str | None
    frames: int
    rows: int | None
    columns: int | None
    samples_per_pixel: int | None
    photometric_interpretation: str | None
    transfer_syntax: UID | None
    rescale_slope: float
    rescale_intercept: float


def _parse(data: bytes) -> Dataset:
    if not is_dicom(data):
        raise DicomDecodeError(
            "not a DICOM Part 10 file: expected a 128-byte preamble followed by 'DICM'. "
            "Export the slice as a DICOM file with file meta information."
        )

    try:
        return pydicom.dcmread(io.BytesIO(data))
    # pydicom raises many exception types on malformed input (InvalidDicomError, EOFError,
    # struct.error, ValueError, KeyError, NotImplementedError...). Its messages may quote
    # element values, so only the exception type is reported.
    except Exception as error:
        raise DicomDecodeError(
            f"truncated or corrupt DICOM file: pydicom could not parse it ({_qualified_name(error)})"
        ) from None


def _read_header(dataset: Dataset) -> _SliceHeader:
    slope, intercept = _rescale_parameters(dataset)
    file_meta = getattr(dataset, "file_meta", None)
    transfer_syntax = _read_attribute(file_meta, "TransferSyntaxUID", UID) if file_meta is not None else None
    frames = _read_attribute(dataset, "NumberOfFrames", int)

    return _SliceHeader(
        has_pixel_data="PixelData" in dataset,
        modality=_read_attribute(dataset, "Modality", str),
        frames=1 if frames is None else frames,
        rows=_read_attribute(dataset, "Rows", int),
        columns=_read_attribute(dataset, "Columns", int),
        samples_per_pixel=_read_attribute(dataset, "SamplesPerPixel", int),
        photometric_interpretation=_read_attribute(dataset, "PhotometricInterpretation", str),
        transfer_syntax=transfer_syntax,
        rescale_slope=slope,
        rescale_intercept=intercept,
    )


def _read_attribute(dataset: Dataset, keyword: str, convert: type) -> Any:
    """Return the converted value of ``keyword``, or None when it is absent or empty."""
    try:
        value = dataset.get(keyword)
        if value is None or value == "":
            return None
        return convert(value)
    # Element values are converted from their raw bytes on first access, so a malformed value
    # raises here with any of several exception types.
    except Exception:
        raise DicomDecodeError(f"invalid {keyword} attribute: its value cannot be read as {convert.__name__}") from None


def _rescale_parameters(dataset: Dataset) -> tuple[float, float]:
    """Return the Rescale Slope and Rescale Intercept, defaulting to 1 and 0 when absent.

    Enhanced CT files store them in the Pixel Value Transformation Sequence of the per-frame or
    shared functional groups, rather than at the top level.
    """
    sources = [dataset]
    for group_keyword in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        transformation = _first_item(_first_item(dataset, group_keyword), "PixelValueTransformationSequence")
        if transformation is not None:
            sources.append(transformation)

    slope, intercept = 1.0, 0.0
    for source in sources:
        if "RescaleSlope" in source or "RescaleIntercept" in source:
            slope = _read_attribute(source, "RescaleSlope", float)
            intercept = _read_attribute(source, "RescaleIntercept", float)
            slope = 1.0 if slope is None else slope
            intercept = 0.0 if intercept is None else intercept
            break

    if not math.isfinite(slope) or slope == 0 or not math.isfinite(intercept):
        raise DicomDecodeError(
            f"invalid rescale parameters: slope {slope:g} and intercept {intercept:g}. "
            "Expected a finite non-zero slope and a finite intercept."
        )
    return slope, intercept


def _first_item(dataset: Dataset | None, keyword: str) -> Dataset | None:
    if dataset is None:
        return None
    try:
        sequence = dataset.get(keyword)
        return sequence[0] if sequence else None
    except Exception:
        raise DicomDecodeError(f"invalid {keyword}: the sequence cannot be read") from None


def _check_header(header: _SliceHeader, max_pixels: int) -> None:
    if not header.has_pixel_data:
        raise DicomDecodeError(
            "the DICOM file has no pixel data: it is not an image (for example a structured report "
            "or an RT plan), or it is truncated before its pixel data. Send a CT image slice."
        )

    if header.modality is None:
        raise DicomDecodeError(
            "the DICOM file has no Modality attribute, but this model needs a CT slice (Modality CT)."
        )
    modality = header.modality.strip()
    if modality != "CT":
        described = repr(modality) if _CODE_STRING.fullmatch(modality) else "not a valid code string"
        raise DicomDecodeError(
            f"the DICOM modality is {described}, not CT: this model classifies chest CT slices only. Send a CT slice."
        )

    if header.frames > 1:
        raise DicomDecodeError(
            f"the DICOM file has {header.frames} frames: a single CT slice per file is expected. "
            "Export the slice to classify as a single-frame file."
        )
    if header.frames < 1:
        raise DicomDecodeError(f"invalid NumberOfFrames {header.frames}: expected 1.")

    _check_grayscale(header)
    _check_size(header, max_pixels)


_COLOUR_INTERPRETATIONS = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR", "YBR_PARTIAL_420"}


def _check_grayscale(header: _SliceHeader) -> None:
    if header.samples_per_pixel not in (None, 1):
        raise DicomDecodeError(
            f"the DICOM slice has {header.samples_per_pixel} samples per pixel: expected 1 (a grayscale CT slice)."
        )
    if header.photometric_interpretation not in _GRAYSCALE_INTERPRETATIONS:
        if header.photometric_interpretation is None:
            found = "no PhotometricInterpretation"
        elif header.photometric_interpretation in _COLOUR_INTERPRETATIONS:
            found = "a colour image"
        else:
            found = "an unsupported PhotometricInterpretation"
        raise DicomDecodeError(
            f"the DICOM slice has {found}: expected PhotometricInterpretation MONOCHROME1 or MONOCHROME2."
        )


def _check_size(header: _SliceHeader, max_pixels: int) -> None:
    if header.rows is None or header.columns is None or header.rows < 1 or header.columns < 1:
        raise DicomDecodeError("the DICOM slice has missing or zero Rows or Columns.")

    pixels = header.rows * header.columns * header.frames
    if pixels > max_pixels:
        frames = f" x {header.frames} frames" if header.frames > 1 else ""
        raise DicomPixelLimitError(
            f"too many pixels: {header.columns}x{header.rows}{frames} is more than the limit of {max_pixels:,} pixels"
        )


def _check_decoder(transfer_syntax: UID | None) -> None:
    if transfer_syntax is None:
        raise DicomDecodeError(
            "the DICOM file meta information has no Transfer Syntax UID, so its pixel data cannot be "
            "decoded. Rewrite the file with a DICOM toolkit, for example dcmconv from DCMTK."
        )

    try:
        decoder = get_decoder(transfer_syntax)
        available, missing = decoder.is_available, decoder.missing_dependencies
    except NotImplementedError:
        available, missing = False, []

    if not available:
        plugins = f" ({'; '.join(missing)})" if missing else ""
        raise DicomDecodeError(
            f"unsupported compression: the transfer syntax {_describe_uid(transfer_syntax)} cannot be "
            "decoded with the installed packages. Decompress the file first, for example with dcmdjpeg or dcmdjpls "
            f"from DCMTK or gdcmconv --raw from GDCM, or install a pydicom plugin that decodes it{plugins}."
        )


def _decode_pixels(dataset: Dataset, header: _SliceHeader) -> np.ndarray:
    try:
        stored = dataset.pixel_array
    # The decoders (pydicom's own, Pillow, plugins) raise various types on damaged pixel data.
    # Their messages quote Image Pixel attributes: binary numbers, and text values checked above.
    except Exception as error:
        if header.transfer_syntax.is_compressed:
            raise DicomDecodeError(
                f"the compressed DICOM pixel data ({header.transfer_syntax.name}) could not be decoded: {error}. "
                "The file may be damaged, or use a variant that the installed decoders do not support, such "
                "as 12-bit JPEG; decompress it first, for example with dcmdjpeg from DCMTK or gdcmconv --raw."
            ) from None
        raise DicomDecodeError(
            f"truncated or corrupt DICOM pixel data ({header.transfer_syntax.name}): {error}"
        ) from None

    expected = (header.rows, header.columns)
    if stored.shape != expected:
        raise DicomDecodeError(
            f"the decoded DICOM pixel data has shape {stored.shape}, expected {expected} from Rows and Columns."
        )
    return stored


def _rescale_to_hounsfield(stored: np.ndarray, header: _SliceHeader) -> np.ndarray:
    hounsfield = stored.astype(np.float64)
    hounsfield *= header.rescale_slope
    hounsfield += header.rescale_intercept
    return hounsfield


def _apply_window_in_place(hounsfield: np.ndarray, window: DicomWindow) -> np.ndarray:
    # In place, because a 50-megapixel slice takes 400 MB per float64 copy.
    hounsfield -= window.center - window.width / 2
    hounsfield *= 255.0 / window.width
    np.clip(hounsfield, 0.0, 255.0, out=hounsfield)
    np.rint(hounsfield, out=hounsfield)
    return hounsfield.astype(np.uint8)


def _qualified_name(error: Exception) -> str:
    kind = type(error)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _describe_uid(uid: UID) -> str:
    if uid.is_transfer_syntax:
        return f"{uid.name} ({uid})"
    if _UID_STRING.fullmatch(uid):
        return f"with the unknown UID {str(uid)!r}"
    return "with an invalid UID"
