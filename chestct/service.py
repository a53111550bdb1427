"""The web service: a FastAPI app that scores uploaded CT slices and serves the web page.

``create_app`` checks the model files before it returns (a threshold chosen for other weights
stops the service from starting) and loads the model in a background thread, so that
``/health`` returns 503 until the model is usable. Decoding and inference run in worker
threads, never on the event loop, so a slow request does not hold up ``/health``.

Uploads stay in memory (``chestct.uploads``) and are dropped with the response. Nothing about
an upload is logged except its size, detected format and result: file names and DICOM tags can
carry patient data.
"""

import logging
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from chestct.classifier import Classifier, ModelSource, check_model
from chestct.imaging import ImageDecodeError
from chestct.inputs import ImagePixelLimitError, InputSettings, UnsupportedFormatError, prepare_input
from chestct.runtimes import usable_cpu_count
from chestct.uploads import UploadError, read_upload

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"

# Every page and script comes from the app itself; images may also be data URLs, which is how
# previews and Grad-CAM overlays arrive.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


class ModelState:
    """The model's load status (loading, ready or failed) and the loaded classifier, safe to share between threads."""

    def __init__(self, source: ModelSource):
        self.source = source
        self.status = "loading"
        self.error: str | None = None
        self.classifier: Classifier | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the classifier; record a failure instead of raising, so that /health can report it."""
        started = time.perf_counter()
        try:
            classifier = Classifier(self.source)
        except Exception as error:  # noqa: BLE001 - any failure must reach /health, not kill the thread
            logger.exception("Loading the model from %s failed", self.source.model_path)
            with self._lock:
                self.status, self.error = "failed", f"{type(error).__name__}: {error}"
            return

        with self._lock:
            self.classifier, self.status = classifier, "ready"
        logger.info(
            "Model %s (%s, version %s) ready in %.1f s",
            classifier.name,
            classifier.format,
            classifier.version,
            time.perf_counter() - started,
        )

    def ready(self) -> Classifier:
        """Return the classifier, or raise HTTP 503 while it is loading or after a failed load."""
        with self._lock:
            if self.status == "ready":
                return self.classifier
            if self.status == "failed":
                raise HTTPException(503, f"The model failed to load: {self.error}")
            raise HTTPException(503, "The model is still loading; try again in a few seconds.")


def create_app(root: str | Path = ".", model_path: str | Path | None = None, source: ModelSource | None = None):
    """Build the app for the pipeline folder ``root``.

    Args:
        root: the repository root, holding ``params.yaml`` and ``models/``.
        model_path: an exported model to serve instead of the trained weights.
        source: already checked model files (``check_model``); overrides ``root`` and
            ``model_path``.

    Raises:
        FileNotFoundError, ModelMismatchError, ValueError: from ``check_model``, before anything
            is served.
    """
    source = source or check_model(root, model_path)
    settings = InputSettings.from_params(source.params["inference"])
    max_upload_bytes = _check_upload_limit(source.params["inference"]["max_upload_bytes"])
    state = ModelState(source)
    # A well-compressed upload can decode to hundreds of megabytes. Allowing one decode per core
    # at a time bounds the peak memory, because further decodes wait for a free slot.
    decode_slots = threading.BoundedSemaphore(usable_cpu_count())

    async def lifespan(app: FastAPI):
        threading.Thread(target=state.load, name="model-loader", daemon=True).start()
        yield

    # No /docs or /redoc: their pages load scripts from a CDN.
    app = FastAPI(title="chestct", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.model = state
    _add_error_handlers(app)
    _add_security_headers(app)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        classifier = state.ready()
        return {"status": "ok", "model_version": classifier.version}

    @app.get("/model")
    async def model() -> dict[str, Any]:
        return state.ready().describe()

    @app.post("/predict")
    async def predict(request: Request, explain: bool = Query(False)) -> dict[str, Any]:
        classifier = state.ready()
        if explain and not classifier.explain_available:
            raise HTTPException(400, f"Grad-CAM needs a Keras model; this service runs {classifier.format}.")

        try:
            data = await read_upload(
                request.headers.get("content-type", ""),
                request.headers.get("content-length"),
                request.stream(),
                max_upload_bytes,
            )
        except UploadError as error:
            raise HTTPException(error.status, error.detail) from None

        started = time.perf_counter()
        result = await run_in_threadpool(_score, classifier, data, settings, explain, decode_slots)
        logger.info(
            "Scored a %s upload of %d bytes: %s in %.0f ms",
            result["input_format"],
            len(data),
            result["diagnosis"],
            1000 * (time.perf_counter() - started),
        )
        return result

    return app


def _score(
    classifier: Classifier, data: bytes, settings: InputSettings, explain: bool, decode_slots: threading.Semaphore
) -> dict[str, Any]:
    # Runs in a worker thread: decoding, preprocessing and inference all block.
    from chestct.gradcam import overlay, png_data_url

    try:
        with decode_slots:
            prepared = prepare_input(data, classifier.preprocess, settings)
    except (ImageDecodeError, ValueError) as error:
        status, detail = _decode_failure(error)
        # The messages name formats and sizes only, never file names or DICOM tag values.
        logger.info("Rejected an upload of %d bytes with %d: %s", len(data), status, detail)
        raise HTTPException(status, detail) from None

    # The probability always comes from the same call as in the evaluate stage; Grad-CAM's own
    # forward pass only shapes the heat map.
    probability = float(classifier.predict_images(prepared.image[None])[0])
    prediction = classifier.decide(probability)
    heatmap = classifier.explain(prepared.image)[0] if explain else None

    return {
        "diagnosis": prediction.diagnosis,
        "probability": prediction.probability,
        "confidence": prediction.confidence,
        "threshold": prediction.threshold,
        "model_version": classifier.version,
        "input_format": prepared.format,
        "image_size": classifier.source.image_size,
        "preview": png_data_url(prepared.image),
        "gradcam": png_data_url(overlay(prepared.image, heatmap)) if explain else None,
    }


def _decode_failure(error: Exception) -> tuple[int, str]:
    """Return the HTTP status and message for a file that ``prepare_input`` could not use."""
    if isinstance(error, ImagePixelLimitError):
        return 413, f"The image is too large: {_clause(error)}."
    if isinstance(error, UnsupportedFormatError):
        return 415, f"Unsupported file: {_clause(error)}. Send a PNG, JPEG or DICOM image."
    return 422, f"The image cannot be read: {_clause(error)}."


def _clause(error: Exception) -> str:
    # Library messages may end in a full stop; the service appends its own sentence.
    return str(error).rstrip(". ")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's default body is a list of errors; every error of this service is one string.
        problems = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors())
        return JSONResponse({"detail": f"Invalid request: {problems}."}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        # The traceback goes to the log; the client learns only that the failure was ours.
        logger.error("Unexpected error on %s %s", request.method, request.url.path, exc_info=error)
        return JSONResponse({"detail": "Internal error while handling the request; see the server log."}, 500)


def _add_security_headers(app: FastAPI) -> None:
    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        # Results describe one patient's image; no cache should keep them.
        if request.url.path == "/predict":
            response.headers["Cache-Control"] = "no-store"
        return response


def _check_upload_limit(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"inference.max_upload_bytes must be a positive integer, got {value!r}.")
    return value
