import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from chestct.dicom import DicomWindow, read_dicom
from chestct.imaging import ImageDecodeError, decode_image, to_grayscale
from chestct.inputs import (
    DecodedInput,
    DicomDecodeError,
    ImagePixelLimitError,
    InputSettings,
    PreparedInput,
    UnsupportedFormatError,
    decode_grayscale,
    prepare_input,
    read_input_file,
)
from chestct.params import load_params
from chestct.paths import REPO_ROOT
from chestct.preprocessing import PreprocessConfig, preprocess_image
from tests.datasets import encode, synthetic_slice
from tests.test_dicom import WINDOW_GRAY, WINDOW_HU, ct_file, huge_claim_file, pydicom_file

SETTINGS = InputSettings()
SLICE = synthetic_slice(np.random.default_rng(0), (96, 80), cancer=True)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def black_bilevel_png(width: int, height: int) -> bytes:
    """Encode a complete black 1-bit PNG, compressing row by row so that memory stays small.

    Pillow would hold a mode "1" image of this size with one byte per pixel.
    """
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter type 0, then the packed bits
    rows_per_block = 1000
    parts = [compressor.compress(row * rows_per_block) for _ in range(height // rows_per_block)]
    parts.append(compressor.compress(row * (height % rows_per_block)))
    parts.append(compressor.flush())

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunks = png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


@pytest.mark.parametrize(
    ("name", "data", "expected_format"),
    [
        ("slice.dcm", encode(SLICE, "PNG", "L"), "PNG"),
        ("slice.png", encode(SLICE, "JPEG", "L"), "JPEG"),
        ("slice.jpg", ct_file(WINDOW_HU), "DICOM"),
        ("slice", ct_file(WINDOW_HU), "DICOM"),
    ],
)
def test_format_detected_by_content(tmp_path, name, data, expected_format):
    path = tmp_path / name
    path.write_bytes(data)

    decoded = read_input_file(path, SETTINGS)

    assert isinstance(decoded, DecodedInput)
    assert decoded.format == expected_format
    assert decoded.gray.dtype == np.uint8
    assert decoded.gray.ndim == 2


def test_png_decodes_like_training():
    decoded = decode_grayscale(encode(SLICE, "PNG", "L"), SETTINGS)

    np.testing.assert_array_equal(decoded.gray, SLICE)


def test_dicom_uses_window():
    decoded = decode_grayscale(ct_file(WINDOW_HU), SETTINGS)

    np.testing.assert_array_equal(decoded.gray, WINDOW_GRAY)


def test_dicom_window_from_settings():
    data = pydicom_file("CT_small.dcm")
    window = DicomWindow(center=40, width=400)

    decoded = decode_grayscale(data, InputSettings(window=window))

    np.testing.assert_array_equal(decoded.gray, read_dicom(data, window, SETTINGS.max_pixels))
    assert not np.array_equal(decoded.gray, decode_grayscale(data, SETTINGS).gray)


def test_text_is_unsupported():
    with pytest.raises(UnsupportedFormatError, match="not an image.*DICOM Part 10"):
        decode_grayscale(b"patient notes, not a picture\n", SETTINGS)


def test_dicom_without_preamble_is_unsupported():
    # A bare data set, without the 128-byte preamble and "DICM", is not DICOM Part 10.
    data = pydicom_file("CT_small.dcm")[132:]

    with pytest.raises(UnsupportedFormatError):
        decode_grayscale(data, SETTINGS)


def test_truncated_png_is_corrupt():
    data = encode(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8), "PNG", "L")

    with pytest.raises(ImageDecodeError, match="truncated or corrupt") as caught:
        decode_grayscale(data[: len(data) // 2], SETTINGS)

    assert not isinstance(caught.value, (UnsupportedFormatError, ImagePixelLimitError))


def test_empty_input_is_corrupt():
    with pytest.raises(ImageDecodeError, match="empty file") as caught:
        decode_grayscale(b"", SETTINGS)

    assert not isinstance(caught.value, (UnsupportedFormatError, ImagePixelLimitError))


def test_truncated_dicom_is_dicom_error():
    data = ct_file(WINDOW_HU)

    with pytest.raises(DicomDecodeError, match="truncated") as caught:
        decode_grayscale(data[:-4], SETTINGS)

    assert not isinstance(caught.value, (UnsupportedFormatError, ImagePixelLimitError))


def test_large_png_hits_pixel_limit():
    data = black_bilevel_png(20000, 20000)

    with pytest.raises(ImagePixelLimitError, match="too many pixels: 20000x20000 is more than the limit of 50,000,000"):
        decode_grayscale(data, SETTINGS)


def test_pixel_limit_from_settings():
    data = encode(SLICE, "PNG", "L")

    with pytest.raises(ImagePixelLimitError):
        decode_grayscale(data, InputSettings(max_pixels=96 * 80 - 1))
    assert decode_grayscale(data, InputSettings(max_pixels=96 * 80)).gray.shape == (96, 80)


def test_large_dicom_hits_pixel_limit():
    with pytest.raises(ImagePixelLimitError) as caught:
        decode_grayscale(huge_claim_file(), SETTINGS)

    assert isinstance(caught.value, DicomDecodeError)


# The child process builds a 20000 x 20000 PNG, decodes it and reports its peak resident memory.
PEAK_MEMORY_SCRIPT = """
import json, sys
from chestct.inputs import ImagePixelLimitError, InputSettings, decode_grayscale
from tests.test_inputs import black_bilevel_png
data = black_bilevel_png(20000, 20000)
try:
    decode_grayscale(data, InputSettings())
    outcome = "decoded"
except ImagePixelLimitError:
    outcome = "pixel limit"
status = open("/proc/self/status").read().splitlines()
peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
json.dump({"outcome": outcome, "png_bytes": len(data), "peak_mib": peak_kib / 1024}, sys.stdout)
"""


def test_large_png_rejected_with_small_memory():
    # A separate process, because the peak resident size (VmHWM) covers the whole process's
    # lifetime. ru_maxrss would not do: Linux keeps it across exec, so the child would report
    # the test runner's own peak.
    result = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY_SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    assert report["outcome"] == "pixel limit"
    assert report["png_bytes"] < 1_000_000
    # Decoding the 400 million pixels would take at least 400 MB (one byte per pixel in Pillow).
    assert report["peak_mib"] < 350, report


def test_prepare_input_matches_training_preprocessing():
    data = encode(SLICE, "PNG", "RGBA")
    config = PreprocessConfig(image_size=64)

    prepared = prepare_input(data, config, SETTINGS)
    expected = preprocess_image(to_grayscale(decode_image(data)), config)

    assert isinstance(prepared, PreparedInput)
    assert prepared.format == "PNG"
    assert prepared.image.shape == (64, 64)
    assert prepared.image.dtype == np.uint8
    np.testing.assert_array_equal(prepared.image, expected)


def test_prepare_input_dicom():
    prepared = prepare_input(pydicom_file("CT_small.dcm"), PreprocessConfig(image_size=32), SETTINGS)

    assert prepared.format == "DICOM"
    assert prepared.image.shape == (32, 32)


def test_prepare_input_validates_config():
    with pytest.raises(ValueError, match="PreprocessConfig"):
        prepare_input(encode(SLICE, "PNG", "L"), {"image_size": 64}, SETTINGS)


@pytest.mark.parametrize(
    ("data", "error_class"),
    [
        (b"plain text", UnsupportedFormatError),
        (black_bilevel_png(20000, 20000), ImagePixelLimitError),
        (ct_file(WINDOW_HU)[:-4], DicomDecodeError),
    ],
)
def test_file_errors_start_with_path(tmp_path, data, error_class):
    path = tmp_path / "upload.bin"
    path.write_bytes(data)

    with pytest.raises(error_class) as caught:
        read_input_file(path, SETTINGS)

    assert str(caught.value).startswith(f"{path}: ")


def test_missing_file_raises_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_input_file(tmp_path / "missing.png", SETTINGS)


def test_settings_from_repository_params():
    section = load_params(REPO_ROOT / "params.yaml")["inference"]

    settings = InputSettings.from_params(section)

    assert settings.window == DicomWindow(center=section["dicom_window_center"], width=section["dicom_window_width"])
    assert settings.max_pixels == section["max_pixels"]


def test_settings_from_params_names_missing_key():
    with pytest.raises(ValueError, match="inference.max_pixels"):
        InputSettings.from_params({"dicom_window_center": -600, "dicom_window_width": 1500})


@pytest.mark.parametrize("max_pixels", [0, -1, 2.5, True, "50000000"])
def test_settings_reject_invalid_max_pixels(max_pixels):
    with pytest.raises(ValueError, match="inference.max_pixels"):
        InputSettings(max_pixels=max_pixels)


def test_settings_reject_window_tuple():
    with pytest.raises(ValueError, match="DicomWindow"):
        InputSettings(window=(-600, 1500))


def test_decode_validates_settings():
    with pytest.raises(ValueError, match="InputSettings"):
        decode_grayscale(encode(SLICE, "PNG", "L"), {"max_pixels": 10})


def test_read_input_file_accepts_string_path(tmp_path):
    path = tmp_path / "slice.png"
    path.write_bytes(encode(SLICE, "PNG", "L"))

    assert read_input_file(str(path), SETTINGS).gray.shape == SLICE.shape


def test_decoded_input_is_not_compared_by_value():
    # Array fields make == ambiguous, so the result classes compare by identity.
    decoded = decode_grayscale(encode(SLICE, "PNG", "L"), SETTINGS)

    assert decoded == decoded
    assert decoded != DecodedInput(gray=decoded.gray.copy(), format="PNG")


def test_decode_rejects_path():
    with pytest.raises(TypeError, match="read_input_file"):
        decode_grayscale(Path("slice.png"), SETTINGS)
