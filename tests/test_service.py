"""The web service over real HTTP: a uvicorn server running the app on a tiny real model."""

import base64
import io
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pydicom
import pytest
from fastapi import HTTPException
from PIL import Image
from pydicom.data import get_testdata_file

from chestct import paths
from chestct.classifier import Classifier, ModelMismatchError, check_model
from chestct.digests import file_sha256
from chestct.inputs import InputSettings, prepare_input
from chestct.service import ModelState, create_app
from tests.datasets import encode, synthetic_slice
from tests.project import copy_project, write_params
from tests.server import running_server

# Patient name stored in pydicom's CT test file; it must never reach a log.
CT_SMALL = get_testdata_file("CT_small.dcm")
RT_PLAN = get_testdata_file("rtplan.dcm")


def slice_png(seed: int = 0, cancer: bool = True) -> bytes:
    return encode(synthetic_slice(np.random.default_rng(seed), (160, 200), cancer), "PNG", "L")


def post(url: str, data: bytes, name: str = "slice.png", explain: bool = False) -> httpx.Response:
    return httpx.post(
        f"{url}/predict", params={"explain": str(explain).lower()}, files={"file": (name, data)}, timeout=60
    )


def decode_data_url(url: str) -> Image.Image:
    header, payload = url.split(",", 1)
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload)))


@pytest.fixture(scope="module")
def server(tiny_project):
    with running_server(create_app(tiny_project)) as url:
        yield url


@pytest.fixture(scope="module")
def classifier(tiny_project):
    return Classifier(check_model(tiny_project))


def test_predict_returns_the_decision_and_a_preview(server, tiny_project):
    response = post(server, slice_png())

    assert response.status_code == 200
    result = response.json()
    assert result["diagnosis"] == ("cancer" if result["probability"] >= result["threshold"] else "normal")
    assert result["threshold"] == 0.5
    expected_confidence = result["probability"] if result["diagnosis"] == "cancer" else 1 - result["probability"]
    assert result["confidence"] == pytest.approx(expected_confidence)
    assert result["model_version"] == check_model(tiny_project).sha256[:12]
    assert result["input_format"] == "PNG"
    assert decode_data_url(result["preview"]).size == (64, 64)
    assert result["gradcam"] is None
    assert response.headers["cache-control"] == "no-store"


def test_probability_equals_the_library_on_the_same_bytes(server, classifier):
    data = slice_png(seed=7)
    prepared = prepare_input(
        data, classifier.preprocess, InputSettings.from_params(classifier.source.params["inference"])
    )

    expected = classifier.predict_images(prepared.image[None])[0]

    assert post(server, data).json()["probability"] == pytest.approx(expected, abs=1e-6)


def test_images_are_recognised_by_content_not_by_name(server):
    jpeg = encode(synthetic_slice(np.random.default_rng(1), (120, 120), False), "JPEG", "L")

    response = post(server, jpeg, name="scan.dcm")

    assert response.status_code == 200
    assert response.json()["input_format"] == "JPEG"


def test_predict_scores_ct_dicom(server):
    response = post(server, open(CT_SMALL, "rb").read(), name="slice.dcm")

    assert response.status_code == 200, response.text
    assert response.json()["input_format"] == "DICOM"
    assert decode_data_url(response.json()["preview"]).size == (64, 64)


def test_explain_adds_a_grad_cam_overlay(server):
    response = post(server, slice_png(seed=2), explain=True)

    overlay = decode_data_url(response.json()["gradcam"])
    assert overlay.size == (64, 64)
    assert overlay.mode == "RGB"


def truncated_png() -> bytes:
    data = slice_png(seed=3)
    return data[: len(data) // 2]


def huge_png() -> bytes:
    # 400 million pixels, but a few hundred kilobytes once compressed: a decompression bomb.
    stream = io.BytesIO()
    Image.new("1", (20000, 20000)).save(stream, "PNG")
    return stream.getvalue()


BAD_FILES = {
    "truncated PNG": (truncated_png, 422, "truncated"),
    "text renamed .png": (lambda: b"patient notes, not an image\n" * 10, 415, "Unsupported"),
    "20000x20000 PNG": (huge_png, 413, "too many pixels"),
    "DICOM without pixel data": (lambda: open(RT_PLAN, "rb").read(), 422, "no pixel data"),
    "empty file": (lambda: b"", 422, "empty"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_predict_bad_file_gets_4xx(server, name):
    make, status, words = BAD_FILES[name]

    response = post(server, make(), name="slice.png")

    assert response.status_code == status, response.text
    assert words.lower() in response.json()["detail"].lower()
    assert httpx.get(f"{server}/health").status_code == 200
    assert post(server, slice_png()).status_code == 200


def test_predict_without_file_field_is_400(server):
    response = httpx.post(f"{server}/predict", files={"image": ("a.png", slice_png())})

    assert response.status_code == 400
    assert "'file'" in response.json()["detail"]


def test_predict_raw_body_is_400(server):
    response = httpx.post(f"{server}/predict", content=slice_png(), headers={"content-type": "image/png"})

    assert response.status_code == 400
    assert "multipart/form-data" in response.json()["detail"]


def test_uploads_over_the_limit_are_a_413(tiny_project, tmp_path):
    root = copy_project(tiny_project, tmp_path / "limited")
    write_params(root, {"inference.max_upload_bytes": 50_000})

    with running_server(create_app(root)) as url:
        response = post(url, b"\0" * 60_000)

        assert response.status_code == 413
        assert "50,000 bytes" in response.json()["detail"]
        assert post(url, slice_png()).status_code == 200


def test_uploads_never_touch_the_disk(server, tmp_path, monkeypatch):
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    # Several megabytes: Starlette's own parser would spool this to a temporary file.
    noise = np.random.default_rng(0).integers(0, 256, (1500, 1500), dtype=np.uint8)

    response = post(server, encode(noise, "PNG", "L"))

    assert response.status_code == 200
    assert list(spool.iterdir()) == []


def test_fifty_requests_eight_at_a_time_all_succeed(server):
    images = [slice_png(seed=i % 5, cancer=i % 2 == 0) for i in range(50)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda data: post(server, data), images))

    assert [r.status_code for r in responses] == [200] * 50
    probabilities = [r.json()["probability"] for r in responses]
    # The same image gives the same probability however the requests interleave.
    assert probabilities[:5] == pytest.approx(probabilities[10:15], abs=1e-6)


def test_health_answers_while_predictions_are_running(server):
    big = encode(np.tile(np.arange(4000, dtype=np.uint16) % 256, (4000, 1)).astype(np.uint8), "PNG", "L")
    busy = threading.Event()
    health_times = []

    def poll_health():
        while not busy.is_set():
            started = time.perf_counter()
            assert httpx.get(f"{server}/health", timeout=30).status_code == 200
            health_times.append(time.perf_counter() - started)
            time.sleep(0.02)

    poller = threading.Thread(target=poll_health)
    started = time.perf_counter()
    poller.start()
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = [r.status_code for r in pool.map(lambda _: post(server, big, explain=True), range(8))]
    busy.set()
    poller.join()
    busy_seconds = time.perf_counter() - started

    assert statuses == [200] * 8
    assert len(health_times) >= 3
    # Blocking the event loop would hold each /health call for the length of an inference.
    assert max(health_times) < busy_seconds / 4


def test_invalid_query_values_get_one_message(server):
    response = httpx.post(f"{server}/predict", params={"explain": "maybe"}, files={"file": ("a.png", slice_png())})

    assert response.status_code == 422
    assert isinstance(response.json()["detail"], str)
    assert "explain" in response.json()["detail"]


def test_page_head_request_is_200(server):
    assert httpx.head(server).status_code == 200


def test_model_describes_version_threshold_and_test_metrics(server, tiny_project):
    description = httpx.get(f"{server}/model").json()

    assert description["version"] == check_model(tiny_project).version
    assert description["threshold"]["method"] == "youden"
    assert description["test_metrics"]["auc"] == 0.9
    assert description["name"] == "chestct_mobilenetv2"
    assert description["explain_available"] is True


def test_pages_make_no_external_requests(server):
    page = httpx.get(server)

    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(f"{server}/docs").status_code == 404
    assert httpx.get(f"{server}/redoc").status_code == 404
    assert httpx.get(f"{server}/openapi.json").status_code == 200


def test_dicom_tags_are_never_logged(server, caplog):
    patient = str(pydicom.dcmread(CT_SMALL).PatientName)
    caplog.set_level(logging.DEBUG)

    post(server, open(CT_SMALL, "rb").read(), name="slice.dcm")
    post(server, open(RT_PLAN, "rb").read(), name="plan.dcm")

    assert patient and patient not in caplog.text
    assert "slice.dcm" not in caplog.text


def test_health_is_503_until_the_model_has_loaded(tiny_project):
    state = ModelState(check_model(tiny_project))

    with pytest.raises(HTTPException) as caught:
        state.ready()
    assert caught.value.status_code == 503
    assert "loading" in caught.value.detail

    state.load()
    assert state.ready().version == state.source.version


def test_health_after_failed_load_is_503(tiny_project, tmp_path):
    root = copy_project(tiny_project, tmp_path / "broken")
    weights = root / paths.MODEL_WEIGHTS
    weights.write_bytes(b"not an HDF5 file")
    record = json.loads((root / paths.THRESHOLD_FILE).read_text())
    record["model_sha256"] = file_sha256(weights)
    (root / paths.THRESHOLD_FILE).write_text(json.dumps(record))

    with running_server(create_app(root), wait_until_ready=False) as url:
        deadline = time.monotonic() + 60
        while "failed" not in (health := httpx.get(f"{url}/health")).text and time.monotonic() < deadline:
            time.sleep(0.1)

        assert health.status_code == 503
        assert "failed to load" in health.json()["detail"]
        assert post(url, slice_png()).status_code == 503


def test_service_refuses_threshold_of_other_weights(tiny_project, tmp_path):
    root = copy_project(tiny_project, tmp_path / "mismatch")
    record = json.loads((root / paths.THRESHOLD_FILE).read_text())
    record["model_sha256"] = "a" * 64
    (root / paths.THRESHOLD_FILE).write_text(json.dumps(record))

    with pytest.raises(ModelMismatchError):
        create_app(root)

    command = [sys.executable, "-m", "chestct.cli", "serve", "--root", str(root), "--port", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "threshold.json belongs to a model file with SHA-256 aaaa" in result.stderr
