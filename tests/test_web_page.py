"""The web page in a real browser, Debian's chromium driven by Playwright, against the real app.

The app serves the tiny Keras model of ``tests.project.make_project`` on 127.0.0.1. The tests
compare what the page shows with what the API returns for the same file, so they check the page
and not a copy of the service's rules.
"""

import base64
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

from tests.datasets import encode, synthetic_slice
from tests.project import TEST_METRICS, copy_project, write_params
from tests.server import running_server

CHROMIUM = Path("/usr/bin/chromium")
# Chromium refuses to start as root without --no-sandbox, and test containers often run as root.
# The other flags keep chromium from contacting Google's update, sync and metrics services.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000
ACCEPTED_TYPES = ".png,.jpg,.jpeg,.dcm,application/dicom,image/png,image/jpeg"
PNG_DATA_URL = "data:image/png;base64,"
NOT_AN_IMAGE = b"Patient notes, saved with the wrong extension.\n"
WEB_DIR = Path(__file__).resolve().parents[1] / "chestct" / "web"


@dataclass
class Visit:
    """A page opened on the app, with the URL of every request the page has made."""

    page: Page
    base_url: str
    requests: list[str] = field(default_factory=list)

    def predict_requests(self) -> list[str]:
        """Return the query string of every POST /predict, in order."""
        prefix = f"{self.base_url}/predict?"
        return [url.removeprefix(prefix) for url in self.requests if url.startswith(prefix)]


# Session scope, like ``tiny_project``, so that a missing chromium skips before the model is built.
@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} is missing. Install Debian's chromium package to run the web page tests."
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def base_url(tiny_project):
    from chestct.service import create_app

    with running_server(create_app(tiny_project)) as url:
        yield url


def open_page(browser, base_url: str):
    """Open the app's page in a fresh browser context and record every request it makes."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    opened = Visit(page, base_url)
    page.on("request", lambda request: opened.requests.append(request.url))
    page.goto(f"{base_url}/")
    return context, opened


@pytest.fixture
def visit(browser, base_url):
    context, opened = open_page(browser, base_url)
    expect(opened.page.locator("#model-version")).not_to_have_text("not loaded yet")
    yield opened
    context.close()


def slice_png(seed: int, cancer: bool) -> bytes:
    """Encode a synthetic 128 x 128 CT slice as an RGBA PNG, as in the Kaggle data."""
    return encode(synthetic_slice(np.random.default_rng(seed), (128, 128), cancer=cancer))


def api_predict(base_url: str, name: str, data: bytes, explain: bool = False) -> httpx.Response:
    return httpx.post(
        f"{base_url}/predict",
        params={"explain": "true" if explain else "false"},
        files={"file": (name, data, "image/png")},
        timeout=60,
    )


def upload(page: Page, name: str, data: bytes) -> None:
    page.set_input_files("#file-input", files=[{"name": name, "mimeType": "image/png", "buffer": data}])


def wait_for_result(page: Page, name: str) -> None:
    # The status line changes only after the whole result for this file is on the page.
    expect(page.locator("#status")).to_have_text(f"Analysed {name}.")


def shown_percent(page: Page, selector: str) -> float:
    text = page.inner_text(selector)
    match = re.fullmatch(r"(\d+\.\d)%", text)
    assert match, f"{selector} shows {text!r}, expected a percentage like '73.1%'"
    return float(match.group(1))


def decode_png_data_url(url: str) -> Image.Image:
    assert url.startswith(PNG_DATA_URL), f"expected a PNG data URL, got {url[:40]!r}"
    image = Image.open(io.BytesIO(base64.b64decode(url.removeprefix(PNG_DATA_URL), validate=True)))
    image.load()
    return image


def test_page_shows_model_information(visit):
    page = visit.page
    model = httpx.get(f"{visit.base_url}/model", timeout=10).json()
    threshold = model["threshold"]["value"]

    expect(page.locator("#model-name")).to_have_text(model["name"])
    expect(page.locator("#model-version")).to_have_text(model["version"])
    expect(page.locator("#model-threshold")).to_contain_text(f"{threshold * 100:.1f}%")
    expect(page.locator("#model-threshold")).to_contain_text("Youden's J")
    expect(page.locator("#model-threshold")).to_contain_text("validation split")
    expect(page.locator("#model-metrics")).to_have_text(
        f"AUC {TEST_METRICS['auc']:.3f}, sensitivity {TEST_METRICS['sensitivity'] * 100:.1f}%, "
        f"specificity {TEST_METRICS['specificity'] * 100:.1f}%"
    )
    expect(page.locator("#model-status")).to_be_hidden()
    expect(page.locator("#error")).to_be_hidden()


def test_research_note_is_visible(visit):
    note = visit.page.locator("#research-note")

    expect(note).to_be_visible()
    expect(note).to_contain_text("not a diagnosis")
    expect(note).to_contain_text("Do not use its output for clinical decisions")


def test_controls_are_labelled_and_reachable(visit):
    page = visit.page

    expect(page.get_by_label("Show Grad-CAM")).to_have_id("explain-toggle")
    expect(page.get_by_label("Choose a file")).to_have_id("file-input")
    expect(page.locator("#file-input")).to_have_attribute("accept", ACCEPTED_TYPES)
    expect(page.locator("#error")).to_have_attribute("role", "alert")

    # The file input is visually hidden but must stay in the tab order.
    focused = []
    for _ in range(5):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("() => document.activeElement.id"))
    assert "file-input" in focused
    assert "explain-toggle" in focused


@pytest.mark.parametrize("cancer", [True, False], ids=["cancer_slice", "normal_slice"])
def test_upload_shows_api_prediction(visit, cancer):
    page = visit.page
    name = "cancer_slice.png" if cancer else "normal_slice.png"
    data = slice_png(seed=1, cancer=cancer)
    expected = api_predict(visit.base_url, name, data).json()

    upload(page, name, data)
    wait_for_result(page, name)

    assert page.inner_text("#diagnosis") == expected["diagnosis"].capitalize()
    assert expected["diagnosis"] in page.get_attribute("#diagnosis", "class").split()
    assert abs(shown_percent(page, "#probability-value") - 100 * expected["probability"]) <= 0.05
    assert abs(shown_percent(page, "#confidence-value") - 100 * expected["confidence"]) <= 0.05
    assert abs(shown_percent(page, "#threshold-value") - 100 * expected["threshold"]) <= 0.05
    assert page.get_attribute("#probability-bar", "aria-valuetext") == page.inner_text("#probability-value")
    assert page.get_attribute("#confidence-bar", "aria-valuetext") == page.inner_text("#confidence-value")
    assert page.inner_text("#model-version") == expected["model_version"]
    assert page.get_attribute("#preview-image", "src") == expected["preview"]
    expect(page.locator("#gradcam-figure")).to_be_hidden()
    expect(page.locator("#error")).to_be_hidden()
    assert visit.predict_requests() == ["explain=false"]


def test_threshold_marker_sits_at_threshold(visit):
    page = visit.page
    data = slice_png(seed=2, cancer=True)
    expected = api_predict(visit.base_url, "slice.png", data).json()

    upload(page, "slice.png", data)
    wait_for_result(page, "slice.png")
    bar = page.locator("#probability-bar").bounding_box()
    marker = page.locator("#threshold-marker").bounding_box()

    marker_fraction = (marker["x"] + marker["width"] / 2 - bar["x"]) / bar["width"]
    assert abs(marker_fraction - expected["threshold"]) < 0.01


def test_gradcam_toggle_fetches_overlay_once(visit):
    page = visit.page
    data = slice_png(seed=3, cancer=True)
    upload(page, "slice.png", data)
    wait_for_result(page, "slice.png")

    page.check("#explain-toggle")
    gradcam = page.locator("#gradcam-image")
    expect(gradcam).to_be_visible()
    expect(gradcam).to_have_attribute("src", re.compile("^" + re.escape(PNG_DATA_URL)))
    overlay = decode_png_data_url(gradcam.get_attribute("src"))
    preview = decode_png_data_url(page.get_attribute("#preview-image", "src"))
    assert overlay.format == "PNG"
    assert overlay.size == preview.size

    # The overlay of the shown file is kept, so switching back and forth sends nothing.
    page.uncheck("#explain-toggle")
    expect(page.locator("#gradcam-figure")).to_be_hidden()
    page.check("#explain-toggle")
    expect(gradcam).to_be_visible()
    assert visit.predict_requests() == ["explain=false", "explain=true"]


def test_upload_with_toggle_on_requests_explain(visit):
    page = visit.page
    page.check("#explain-toggle")

    upload(page, "slice.png", slice_png(seed=4, cancer=False))
    wait_for_result(page, "slice.png")

    expect(page.locator("#gradcam-image")).to_be_visible()
    assert visit.predict_requests() == ["explain=true"]


def test_bad_file_shows_server_detail_then_recovers(visit):
    page = visit.page
    rejected = api_predict(visit.base_url, "notes.png", NOT_AN_IMAGE)
    assert 400 <= rejected.status_code < 500
    detail = rejected.json()["detail"]

    upload(page, "notes.png", NOT_AN_IMAGE)
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text(detail)
    expect(error).to_contain_text(f"HTTP {rejected.status_code}")
    expect(page.locator("#result-body")).to_be_hidden()

    data = slice_png(seed=5, cancer=True)
    expected = api_predict(visit.base_url, "slice.png", data).json()
    upload(page, "slice.png", data)
    wait_for_result(page, "slice.png")
    expect(error).to_be_hidden()
    assert page.inner_text("#diagnosis") == expected["diagnosis"].capitalize()


def test_network_failure_shows_error_then_recovers(visit):
    page = visit.page
    data = slice_png(seed=6, cancer=False)
    page.route("**/predict*", lambda route: route.abort("connectionfailed"))

    upload(page, "slice.png", data)
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("Could not send slice.png to the server")

    page.unroute("**/predict*")
    upload(page, "slice.png", data)
    wait_for_result(page, "slice.png")
    expect(error).to_be_hidden()


def test_drop_zone_accepts_dropped_file(visit):
    page = visit.page
    data = slice_png(seed=7, cancer=True)
    expected = api_predict(visit.base_url, "dropped.png", data).json()

    page.evaluate(
        """([name, encoded]) => {
            const bytes = Uint8Array.from(atob(encoded), (character) => character.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/png" }));
            const zone = document.getElementById("drop-zone");
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
            }
        }""",
        ["dropped.png", base64.b64encode(data).decode("ascii")],
    )
    wait_for_result(page, "dropped.png")

    assert page.inner_text("#diagnosis") == expected["diagnosis"].capitalize()
    assert "dragging" not in page.get_attribute("#drop-zone", "class").split()


def test_page_requests_stay_on_origin(visit, tmp_path):
    page = visit.page
    upload(page, "slice.png", slice_png(seed=8, cancer=True))
    wait_for_result(page, "slice.png")
    page.check("#explain-toggle")
    expect(page.locator("#gradcam-image")).to_be_visible()

    screenshot_dir = Path(os.environ.get("CHESTCT_SCREENSHOT_DIR") or tmp_path)
    screenshot_dir.mkdir(parents=True, exist_ok=True)
    screenshot = screenshot_dir / "web_page.png"
    page.screenshot(path=screenshot, full_page=True)
    upload(page, "notes.png", NOT_AN_IMAGE)
    expect(page.locator("#error")).to_be_visible()

    paths = {url.removeprefix(visit.base_url) for url in visit.requests}
    # data: URLs (previews, overlays, the empty icon) are decoded in the page, not fetched.
    external = [
        url for url in visit.requests if not url.startswith(f"{visit.base_url}/") and not url.startswith("data:")
    ]
    assert external == []
    assert {"/", "/static/app.js", "/static/style.css", "/health", "/model"} <= paths
    assert Image.open(screenshot).format == "PNG"


# Keras warns about every layer of the mismatched head before the load fails.
@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
def test_model_not_ready_shows_status(browser, tiny_project, tmp_path):
    from chestct.service import create_app

    # Weights saved for dense_units [16, 8] cannot load into a [32] head, so /health stays 503.
    broken = copy_project(tiny_project, tmp_path / "broken")
    write_params(broken, {"model.dense_units": [32]})

    with running_server(create_app(broken), wait_until_ready=False) as url:
        health = httpx.get(f"{url}/health", timeout=10)
        context, opened = open_page(browser, url)
        page = opened.page
        try:
            status = page.locator("#model-status")
            expect(status).to_be_visible()
            expect(status).to_contain_text("Waiting for the model")
            upload(page, "slice.png", slice_png(seed=9, cancer=True))
            error = page.locator("#error")
            expect(error).to_contain_text("HTTP 503")
            # The page keeps polling /health, so the failure replaces the loading message.
            expect(status).to_contain_text("The model failed to load")
            expect(page.locator("#model-name")).to_have_text("not loaded yet")
        finally:
            context.close()

    assert health.status_code == 503


def test_web_files_reference_no_other_host():
    for path in sorted(WEB_DIR.iterdir()):
        text = path.read_text(encoding="utf-8")

        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), path.name
        assert "@import" not in text, path.name
        assert "url(" not in text, path.name
