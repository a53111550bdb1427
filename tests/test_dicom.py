import io
import logging
import random
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset, FileMetaDataset, dcmwrite
from pydicom.pixels import get_decoder
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless

from chestct.dicom import (
    DicomDecodeError,
    DicomPixelLimitError,
    DicomWindow,
    ImagePixelLimitError,
    apply_window,
    is_dicom,
    read_dicom,
)
from chestct.imaging import DEFAULT_MAX_PIXELS, ImageDecodeError
from tests.datasets import encode

# pydicom's wheel ships these files. They are opened by path because
# pydicom.data.get_testdata_file tries to download any file that is not installed.
PYDICOM_TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"

PATIENT_NAME = "Quixote^Dulcinea"
PATIENT_ID = "PID-93417-Z"
PRIVATE_VALUES = ("Quixote", "Dulcinea", PATIENT_ID)

LUNG_WINDOW = DicomWindow()

# The lung window spans -1350 HU to 150 HU at 0.17 grey levels per HU, so 100 * k HU above
# -1350 HU maps to 17 * k, a whole grey level rather than a rounding tie.
WINDOW_HU = np.array([[-1350, -1250, -850], [-350, 50, 150], [-2000, 1000, -1150]], dtype=np.int16)
WINDOW_GRAY = np.array([[0, 17, 85], [170, 238, 255], [0, 255, 34]], dtype=np.uint8)


def pydicom_file(name: str) -> bytes:
    return (PYDICOM_TEST_FILES / name).read_bytes()


def ct_dataset(stored: np.ndarray, modality: str | None = "CT", photometric: str = "MONOCHROME2") -> Dataset:
    """Build a CT slice data set with 16-bit pixels and a patient name and ID."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientName = PATIENT_NAME
    dataset.PatientID = PATIENT_ID
    if modality is not None:
        dataset.Modality = modality

    signed = stored.dtype.kind == "i"
    dataset.Rows, dataset.Columns = stored.shape[-2:]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = int(signed)
    dataset.PixelData = stored.astype("<i2" if signed else "<u2").tobytes()
    return dataset


def to_bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def ct_file(stored: np.ndarray, **attributes) -> bytes:
    """Write a CT slice with ``attributes`` set on the data set (``RescaleSlope=2``...)."""
    dataset = ct_dataset(stored)
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    return to_bytes(dataset)


def hand_window(hounsfield: float, center: float = -600.0, width: float = 1500.0) -> int:
    """Window one HU value with plain arithmetic, as ``chestct.dicom`` documents it."""
    scaled = (hounsfield - (center - width / 2)) * 255.0 / width
    return round(min(max(scaled, 0.0), 255.0))


def test_ct_small_matches_hand_computation():
    data = pydicom_file("CT_small.dcm")
    dataset = pydicom.dcmread(io.BytesIO(data))
    stored = np.frombuffer(dataset.PixelData, dtype="<i2").reshape(128, 128)

    gray = read_dicom(data, LUNG_WINDOW, DEFAULT_MAX_PIXELS)

    assert gray.shape == (128, 128)
    assert gray.dtype == np.uint8
    assert float(dataset.RescaleSlope) == 1.0
    assert float(dataset.RescaleIntercept) == -1024.0
    for row, col in [(0, 0), (32, 32), (10, 50), (64, 64), (127, 127), (100, 20)]:
        assert gray[row, col] == hand_window(int(stored[row, col]) - 1024), (row, col)


def test_ct_small_known_pixels():
    gray = read_dicom(pydicom_file("CT_small.dcm"), LUNG_WINDOW, DEFAULT_MAX_PIXELS)

    # Stored 175 is -849 HU, (-849 + 1350) * 0.17 = 85.17; stored 1447 is 423 HU, above the window.
    assert gray[0, 0] == 85
    assert gray[10, 50] == 255


def test_window_maps_hounsfield_units():
    gray = read_dicom(ct_file(WINDOW_HU), LUNG_WINDOW, DEFAULT_MAX_PIXELS)

    np.testing.assert_array_equal(gray, WINDOW_GRAY)


def test_apply_window_matches_hand_values():
    np.testing.assert_array_equal(apply_window(WINDOW_HU, LUNG_WINDOW), WINDOW_GRAY)


def test_apply_window_leaves_input_unchanged():
    hounsfield = WINDOW_HU.astype(np.float64)

    apply_window(hounsfield, LUNG_WINDOW)

    np.testing.assert_array_equal(hounsfield, WINDOW_HU)


def test_window_parameters_change_output():
    data = pydicom_file("CT_small.dcm")
    stored = np.frombuffer(pydicom.dcmread(io.BytesIO(data)).PixelData, dtype="<i2").reshape(128, 128)
    hounsfield = stored.astype(np.float64) - 1024

    narrow = read_dicom(data, DicomWindow(center=0, width=100), DEFAULT_MAX_PIXELS)
    lung = read_dicom(data, LUNG_WINDOW, DEFAULT_MAX_PIXELS)

    assert (narrow[hounsfield <= -50] == 0).all()
    assert (narrow[hounsfield >= 50] == 255).all()
    inside = (hounsfield > -40) & (hounsfield < 40)
    assert inside.any()
    assert ((narrow[inside] > 0) & (narrow[inside] < 255)).all()
    assert not np.array_equal(narrow, lung)
    for row, col in [(0, 0), (32, 32), (64, 64)]:
        assert narrow[row, col] == hand_window(hounsfield[row, col], center=0, width=100), (row, col)


def test_monochrome1_inverts():
    monochrome2 = read_dicom(ct_file(WINDOW_HU), LUNG_WINDOW, DEFAULT_MAX_PIXELS)
    monochrome1 = read_dicom(
        ct_file(WINDOW_HU, PhotometricInterpretation="MONOCHROME1"), LUNG_WINDOW, DEFAULT_MAX_PIXELS
    )

    np.testing.assert_array_equal(monochrome1, 255 - WINDOW_GRAY)
    np.testing.assert_array_equal(monochrome1, 255 - monochrome2)


def test_rescale_slope_and_intercept_honoured():
    # HU = 2 * stored - 1350, so these stored values give WINDOW_HU.
    stored = (WINDOW_HU + 1350) // 2
    assert (2 * stored - 1350 == WINDOW_HU).all()

    gray = read_dicom(ct_file(stored, RescaleSlope=2, RescaleIntercept=-1350), LUNG_WINDOW, DEFAULT_MAX_PIXELS)

    np.testing.assert_array_equal(gray, WINDOW_GRAY)


def test_missing_slope_defaults_to_one():
    stored = (WINDOW_HU + 2048).astype(np.uint16)

    gray = read_dicom(ct_file(stored, RescaleIntercept=-2048), LUNG_WINDOW, DEFAULT_MAX_PIXELS)

    np.testing.assert_array_equal(gray, WINDOW_GRAY)


def test_missing_intercept_defaults_to_zero():
    stored = WINDOW_HU // 2

    gray = read_dicom(ct_file(stored, RescaleSlope=2), LUNG_WINDOW, DEFAULT_MAX_PIXELS)

    np.testing.assert_array_equal(gray, WINDOW_GRAY)


def test_enhanced_ct_functional_group_rescale():
    stored = (WINDOW_HU + 1350) // 2
    dataset = ct_dataset(stored)
    dataset.NumberOfFrames = 1
    transformation = Dataset()
    transformation.RescaleSlope = 2
    transformation.RescaleIntercept = -1350
    transformation.RescaleType = "HU"
    group = Dataset()
    group.PixelValueTransformationSequence = [transformation]
    dataset.SharedFunctionalGroupsSequence = [group]

    gray = read_dicom(to_bytes(dataset), LUNG_WINDOW, DEFAULT_MAX_PIXELS)

    np.testing.assert_array_equal(gray, WINDOW_GRAY)


def test_invalid_rescale_slope_rejected():
    with pytest.raises(DicomDecodeError, match="slope 0"):
        read_dicom(ct_file(WINDOW_HU, RescaleSlope=0), LUNG_WINDOW, DEFAULT_MAX_PIXELS)


def test_compressed_ct_decodes():
    # JPEG 2000 is decoded through Pillow's OpenJPEG support, without pydicom plugins.
    gray = read_dicom(pydicom_file("693_J2KI.dcm"), LUNG_WINDOW, DEFAULT_MAX_PIXELS)

    assert gray.shape == (512, 512)
    assert gray.dtype == np.uint8
    assert gray.min() < gray.max()


@pytest.mark.parametrize("name", ["rtplan.dcm", "reportsi.dcm"])
def test_no_pixel_data_rejected(name):
    with pytest.raises(DicomDecodeError, match="has no pixel data: it is not an image"):
        read_dicom(pydicom_file(name), LUNG_WINDOW, DEFAULT_MAX_PIXELS)


def jpeg_ls_ct_file() -> bytes:
    """Return pydicom's JPEG-LS lossless MR test slice relabelled as CT, with a patient name."""
    dataset = pydicom.dcmread(PYDICOM_TEST_FILES / "MR_small_jpeg_ls_lossless.dcm")
    dataset.Modality = "CT"
    dataset.PatientName = PATIENT_NAME
    dataset.PatientID = PATIENT_ID
    return to_bytes(dataset)


def test_undecodable_compression_names_transfer_syntax():
    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoding plugin is installed")

    with pytest.raises(DicomDecodeError) as caught:
        read_dicom(jpeg_ls_ct_file(), LUNG_WINDOW, DEFAULT_MAX_PIXELS)

    message = str(caught.value)
    assert "JPEG-LS Lossless Image Compression" in message
    assert "1.2.840.10008.1.2.4.80" in message
    assert "dcmdjpls" in message
    assert "pylibjpeg" in message


def replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    """Replace the only occurrence of ``old`` with ``new`` of the same length."""
    assert data.count(old) == 1
    assert len(old) == len(new)
    return data.replace(old, new)


def test_unknown_transfer_syntax_rejected():
    # Same length as 1.2.840.10008.1.2.1, so the file meta group length stays right.
    data = replace_once(ct_file(WINDOW_HU), b"1.2.840.10008.1.2.1\x00", b"1.2.826.0.1.3680043\x00")

    with pytest.raises(DicomDecodeError, match="unknown UID '1.2.826.0.1.3680043'"):
        read_dicom(data, LUNG_WINDOW, DEFAULT_MAX_PIXELS)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.97])
def test_truncated_ct_rejected(fraction):
    data = pydicom_file("CT_small.dcm")

    with pytest.raises(DicomDecodeError, match="truncated"):
        read_dicom(data[: int(len(data) * fraction)], LUNG_WINDOW, DEFAULT_MAX_PIXELS)


def test_truncated_preamble_not_dicom():
    with pytest.raises(DicomDecodeError, match="not a DICOM Part 10 file"):
        read_dicom(pydicom_file("CT_small.dcm")[:100], LUNG_WINDOW, DEFAULT_MAX_PIXELS)


def test_png_is_not_dicom():
    png = encode(np.zeros((8, 8), dtype=np.uint8), "PNG", "L")

    assert not is_dicom(png)
    with pytest.raises(DicomDecodeError, match="not a DICOM Part 10 file"):
        read_dicom(png, LUNG_WINDOW, DEFAULT_MAX_PIXELS)


def test_is_dicom_by_content():
    assert is_dicom(pydicom_file("CT_small.dcm"))
    assert is_dicom(ct_file(WINDOW_HU))
    assert not is_dicom(b"DICM" + bytes(200))
    assert not is_dicom(bytes(131))
    assert not is_dicom(b"")


def test_non_ct_modality_rejected():
    with pytest.raises(DicomDecodeError, match="modality is 'MR', not CT"):
        read_dicom(pydicom_file("MR_small.dcm"), LUNG_WINDOW, DEFAULT_MAX_PIXELS)


def test_missing_modality_rejected():
    with pytest.raises(DicomDecodeError, match="no Modality attribute"):
        read_dicom(to_bytes(ct_dataset(WINDOW_HU, modality=None)), LUNG_WINDOW, DEFAULT_MAX_PIXELS)


def test_multi_frame_rejected():
    frames = np.stack([WINDOW_HU, WINDOW_HU])

    with pytest.raises(DicomDecodeError, match="has 2 frames: a single CT slice per file"):
        read_dicom(ct_file(frames, NumberOfFrames=2), LUNG_WINDOW, DEFAULT_MAX_PIXELS)


def test_colour_slice_rejected():
    dataset = ct_dataset(WINDOW_HU, photometric="RGB")
    dataset.SamplesPerPixel = 3
    dataset.PlanarConfiguration = 0
    dataset.BitsAllocated = dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelRepresentation = 0
    dataset.PixelData = bytes(3 * WINDOW_HU.size + 1)

    with pytest.raises(DicomDecodeError, match="3 samples per pixel"):
        read_dicom(to_bytes(dataset), LUNG_WINDOW, DEFAULT_MAX_PIXELS)


def huge_claim_file() -> bytes:
    """Return a CT file whose Rows and Columns claim 20000 x 20000 pixels, with 8 bytes of pixel data."""
    dataset = ct_dataset(np.zeros((2, 2), dtype=np.int16))
    dataset.Rows = dataset.Columns = 20000
    return to_bytes(dataset)


def test_huge_claim_rejected_before_decoding():
    # Decoding would fail on the missing pixel bytes with a different message.
    with pytest.raises(DicomPixelLimitError, match="too many pixels: 20000x20000 is more than the limit of 50,000,000"):
        read_dicom(huge_claim_file(), LUNG_WINDOW, DEFAULT_MAX_PIXELS)


def test_pixel_limit_error_classes():
    with pytest.raises(DicomPixelLimitError) as caught:
        read_dicom(pydicom_file("CT_small.dcm"), LUNG_WINDOW, 128 * 128 - 1)

    assert isinstance(caught.value, ImagePixelLimitError)
    assert isinstance(caught.value, DicomDecodeError)
    assert isinstance(caught.value, ImageDecodeError)


def test_pixel_limit_allows_exact_size():
    assert read_dicom(pydicom_file("CT_small.dcm"), LUNG_WINDOW, 128 * 128).shape == (128, 128)


def test_invalid_number_of_frames_rejected():
    # pydicom's test file stores NumberOfFrames as "1A".
    with pytest.raises(DicomDecodeError, match="NumberOfFrames"):
        read_dicom(pydicom_file("badVR.dcm"), LUNG_WINDOW, DEFAULT_MAX_PIXELS)


def test_damaged_files_raise_only_decode_errors():
    data = pydicom_file("CT_small.dcm")
    rng = random.Random(0)

    for _ in range(300):
        damaged = bytearray(data)
        for _ in range(rng.randrange(1, 6)):
            damaged[rng.randrange(132, 1200)] = rng.randrange(256)
        try:
            gray = read_dicom(bytes(damaged), LUNG_WINDOW, DEFAULT_MAX_PIXELS)
        except DicomDecodeError:
            continue
        assert gray.shape == (128, 128)


MODALITY_ELEMENT = b"\x08\x00\x60\x00CS\x02\x00CT"
TRANSFER_SYNTAX_ELEMENT = b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\x00"


def overrun_file(element: bytes) -> bytes:
    """Return a CT file in which ``element``, explicit VR with a 2-byte length, runs on over the patient name."""
    data = ct_file(WINDOW_HU)
    value_start = data.index(element) + 8
    name_end = data.index(PATIENT_NAME.encode()) + len(PATIENT_NAME)
    length = (name_end - value_start).to_bytes(2, "little")
    return replace_once(data, element, element[:6] + length + element[8:])


def private_value_cases() -> dict[str, bytes]:
    """Return DICOM files that carry PATIENT_NAME and PATIENT_ID, one per outcome."""
    no_pixels = ct_dataset(WINDOW_HU)
    del no_pixels.PixelData
    valid = ct_file(WINDOW_HU)
    cases = {
        "valid": valid,
        "truncated": valid[: len(valid) - 4],
        "no_pixel_data": to_bytes(no_pixels),
        "non_ct": to_bytes(ct_dataset(WINDOW_HU, modality="MR")),
        "modality_overrun": overrun_file(MODALITY_ELEMENT),
        # pydicom itself warns and logs this transfer syntax with the patient name inside it.
        "transfer_syntax_overrun": overrun_file(TRANSFER_SYNTAX_ELEMENT),
        "multi_frame": ct_file(np.stack([WINDOW_HU, WINDOW_HU]), NumberOfFrames=2),
        "too_many_pixels": huge_claim_file(),
        "invalid_slope": replace_once(ct_file(WINDOW_HU, RescaleSlope=9.5), b"9.5 ", b"abc "),
    }
    if not get_decoder(JPEGLSLossless).is_available:
        cases["undecodable"] = jpeg_ls_ct_file()
    return cases


def test_modality_overrun_not_quoted():
    with pytest.raises(DicomDecodeError, match="modality is not a valid code string, not CT"):
        read_dicom(overrun_file(MODALITY_ELEMENT), LUNG_WINDOW, DEFAULT_MAX_PIXELS)


def test_patient_values_never_in_messages_or_logs(caplog):
    cases = private_value_cases()
    texts = []

    # The warning filters in effect are those a service runs with: only read_dicom changes them.
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught_warnings:
        for name, data in cases.items():
            assert PATIENT_NAME.encode() in data, name
            try:
                read_dicom(data, LUNG_WINDOW, DEFAULT_MAX_PIXELS)
            except DicomDecodeError as error:
                texts.append(str(error))
            else:
                assert name == "valid"

    assert len(texts) == len(cases) - 1
    texts += [record.getMessage() for record in caplog.records]
    texts += [str(warning.message) for warning in caught_warnings]
    assert any("Decoded a 3x3 DICOM CT slice" in text for text in texts)
    assert any("Dropped" in text and "pydicom log records" in text for text in texts)
    for text in texts:
        for value in PRIVATE_VALUES:
            assert value not in text, text


@pytest.mark.parametrize(
    ("center", "width", "match"),
    [
        (-600, 0, "greater than 0"),
        (-600, -10, "greater than 0"),
        (float("nan"), 1500, "finite"),
        (-600, float("inf"), "finite"),
        ("-600", 1500, "finite number"),
        (True, 1500, "finite number"),
    ],
)
def test_window_validation(center, width, match):
    with pytest.raises(ValueError, match=match):
        DicomWindow(center=center, width=width)


def test_window_from_params():
    window = DicomWindow.from_params({"dicom_window_center": -500, "dicom_window_width": 1200, "max_pixels": 10})

    assert window == DicomWindow(center=-500.0, width=1200.0)
    assert isinstance(window.center, float)


def test_window_from_params_names_missing_key():
    with pytest.raises(ValueError, match="inference.dicom_window_width"):
        DicomWindow.from_params({"dicom_window_center": -600})


def test_read_dicom_validates_arguments():
    data = ct_file(WINDOW_HU)

    with pytest.raises(ValueError, match="max_pixels"):
        read_dicom(data, LUNG_WINDOW, 0)
    with pytest.raises(ValueError, match="DicomWindow"):
        read_dicom(data, (-600, 1500), DEFAULT_MAX_PIXELS)
