// Client of the chestct web service: sends one slice to POST /predict and shows the result.
// Every request goes to the page's own origin. The Content-Security-Policy in index.html
// blocks anything else.
"use strict";

(function () {
  const HEALTH_RETRY_MIN_MS = 2000;
  const HEALTH_RETRY_MAX_MS = 30000;
  const DIAGNOSIS_LABELS = { cancer: "Cancer", normal: "Normal" };
  const SPLIT_NAMES = { train: "training", valid: "validation", test: "test" };

  const state = {
    // The File last chosen, kept so that turning Grad-CAM on can send it again.
    file: null,
    result: null,
    // The File that state.result describes.
    resultFile: null,
    // Grad-CAM overlay of state.file, once the server has returned it.
    gradcam: null,
    // AbortController of the /predict request in flight, or null.
    controller: null,
    // Increases with every /predict request, so that a late response to an older one is dropped.
    requestId: 0,
    explainAvailable: true,
    healthRetryMs: HEALTH_RETRY_MIN_MS,
  };

  function byId(id) {
    const element = document.getElementById(id);
    if (element === null) {
      throw new Error(`The page has no element with id "${id}".`);
    }
    return element;
  }

  function formatPercent(fraction) {
    return `${(fraction * 100).toFixed(1)}%`;
  }

  // Ends a message with a full stop unless the server's detail already ends a sentence.
  function endSentence(text) {
    return /[.!?]$/.test(text) ? text : `${text}.`;
  }

  function describeSize(size) {
    return Number.isInteger(size) && size > 0 ? `${size} × ${size} px` : "an unknown size";
  }

  function isFraction(value) {
    return typeof value === "number" && Number.isFinite(value) && value >= 0 && value <= 1;
  }

  // ---- Messages ----

  function showError(message) {
    const error = byId("error");
    error.textContent = message;
    error.hidden = false;
  }

  function clearError() {
    const error = byId("error");
    error.textContent = "";
    error.hidden = true;
  }

  function setStatus(message) {
    byId("status").textContent = message;
  }

  function setModelStatus(message) {
    const status = byId("model-status");
    status.textContent = message;
    status.hidden = message === "";
  }

  // Reads FastAPI's {"detail": ...} error body. A validation error has a list of
  // objects with a "msg" as detail, and a proxy in front may return HTML.
  async function readErrorDetail(response) {
    let detail = null;
    try {
      const body = await response.json();
      detail = body !== null && typeof body === "object" ? body.detail : null;
    } catch (error) {
      detail = null;
    }

    if (typeof detail === "string" && detail !== "") {
      return detail;
    }
    if (Array.isArray(detail) && detail.length > 0) {
      return detail.map((item) => (item && typeof item.msg === "string" ? item.msg : JSON.stringify(item))).join("; ");
    }
    return response.statusText || "the response gave no detail";
  }

  function describeFailure(status, fileName) {
    if (status === 503) {
      return "The model is not ready";
    }
    if (status >= 500) {
      return `The server failed on ${fileName}`;
    }
    return `The server rejected ${fileName}`;
  }

  // ---- Prediction ----

  // Returns an error message for a /predict body that breaks the API contract, or "".
  function checkPrediction(body, explain) {
    if (body === null || typeof body !== "object") {
      return "the body is not a JSON object";
    }
    if (typeof body.diagnosis !== "string" || !Object.hasOwn(DIAGNOSIS_LABELS, body.diagnosis)) {
      return `diagnosis is ${JSON.stringify(body.diagnosis)}, expected "cancer" or "normal"`;
    }
    for (const key of ["probability", "confidence", "threshold"]) {
      if (!isFraction(body[key])) {
        return `${key} is ${JSON.stringify(body[key])}, expected a number in [0, 1]`;
      }
    }
    if (typeof body.preview !== "string" || !body.preview.startsWith("data:image/png;base64,")) {
      return "preview is not a PNG data URL";
    }
    if (explain && body.gradcam !== null && typeof body.gradcam !== "string") {
      return "gradcam is neither null nor a data URL";
    }
    return "";
  }

  function predictionFinished(requestId) {
    if (requestId !== state.requestId) {
      return false;
    }
    state.controller = null;
    byId("result").removeAttribute("aria-busy");
    return true;
  }

  // A failed upload of a new file hides the previous result, so that it is not read as the
  // result for that file. A failed Grad-CAM request for the shown file keeps the result.
  function failPrediction(message, sameFile) {
    if (!sameFile) {
      state.file = null;
      state.result = null;
      state.resultFile = null;
      state.gradcam = null;
      showResultBody(false);
    }
    setStatus("");
    showError(message);
  }

  async function predict(file, explain) {
    const sameFile = state.result !== null && state.resultFile === file;
    if (state.controller !== null) {
      state.controller.abort();
    }
    const controller = new AbortController();
    state.controller = controller;
    state.requestId += 1;
    const requestId = state.requestId;

    const form = new FormData();
    form.append("file", file, file.name);
    clearError();
    setStatus(explain ? `Analysing ${file.name} and computing Grad-CAM…` : `Analysing ${file.name}…`);
    byId("result").setAttribute("aria-busy", "true");

    let response;
    try {
      response = await fetch(`/predict?explain=${explain ? "true" : "false"}`, {
        method: "POST",
        body: form,
        signal: controller.signal,
      });
    } catch (error) {
      // An aborted request was replaced by a newer one, which reports its own outcome.
      if (controller.signal.aborted || !predictionFinished(requestId)) {
        return;
      }
      failPrediction(
        `Could not send ${file.name} to the server (${error.message}). Check that the service is running, then try again.`,
        sameFile,
      );
      return;
    }

    if (!response.ok) {
      const detail = await readErrorDetail(response);
      if (predictionFinished(requestId)) {
        failPrediction(`${describeFailure(response.status, file.name)} (HTTP ${response.status}): ${detail}`, sameFile);
      }
      return;
    }

    let body;
    try {
      body = await response.json();
    } catch (error) {
      body = undefined;
    }
    if (!predictionFinished(requestId)) {
      return;
    }
    const problem = checkPrediction(body, explain);
    if (problem !== "") {
      failPrediction(`The server returned an invalid prediction: ${problem}.`, sameFile);
      return;
    }

    state.result = body;
    state.resultFile = file;
    state.gradcam = typeof body.gradcam === "string" ? body.gradcam : state.gradcam;
    renderResult(body, file.name);
    if (explain && state.gradcam === null) {
      setStatus("The server returned no Grad-CAM for this image.");
    } else {
      setStatus(`Analysed ${file.name}.`);
    }
  }

  // ---- Rendering ----

  function showResultBody(visible) {
    byId("result-body").hidden = !visible;
    byId("result-empty").hidden = visible;
  }

  function renderMeter(barId, fillId, valueId, fraction) {
    const percent = formatPercent(fraction);
    byId(valueId).textContent = percent;
    byId(fillId).style.width = `${fraction * 100}%`;
    const bar = byId(barId);
    bar.setAttribute("aria-valuenow", (fraction * 100).toFixed(1));
    bar.setAttribute("aria-valuetext", percent);
  }

  function renderThreshold(threshold) {
    byId("threshold-value").textContent = formatPercent(threshold);
    byId("threshold-marker").style.left = `${threshold * 100}%`;
  }

  function renderImages() {
    const showGradcam = byId("explain-toggle").checked && state.gradcam !== null;
    byId("gradcam-figure").hidden = !showGradcam;
    if (showGradcam) {
      byId("gradcam-image").src = state.gradcam;
    }
  }

  function renderResult(result, fileName) {
    const diagnosis = byId("diagnosis");
    diagnosis.textContent = DIAGNOSIS_LABELS[result.diagnosis];
    diagnosis.className = `diagnosis ${result.diagnosis}`;

    renderMeter("probability-bar", "probability-fill", "probability-value", result.probability);
    byId("probability-fill").classList.toggle("above-threshold", result.probability >= result.threshold);
    renderThreshold(result.threshold);
    renderMeter("confidence-bar", "confidence-fill", "confidence-value", result.confidence);

    byId("result-file-name").textContent = fileName;
    byId("input-format").textContent = String(result.input_format || "unknown format");
    byId("image-size").textContent = describeSize(result.image_size);
    if (typeof result.model_version === "string" && result.model_version !== "") {
      byId("model-version").textContent = result.model_version;
    }

    byId("preview-image").src = result.preview;
    renderImages();
    showResultBody(true);
  }

  // ---- Model information ----

  function describeThreshold(threshold) {
    let method = "";
    if (threshold.method === "youden") {
      method = "maximises Youden's J (sensitivity + specificity − 1)";
    } else if (threshold.method === "target_sensitivity") {
      const target = isFraction(threshold.target_sensitivity) ? ` of ${formatPercent(threshold.target_sensitivity)}` : "";
      method = `highest threshold that reaches the target sensitivity${target}`;
    } else if (typeof threshold.method === "string") {
      method = `chosen by ${threshold.method}`;
    }
    if (method !== "" && typeof threshold.chosen_on === "string") {
      method += ` on the ${SPLIT_NAMES[threshold.chosen_on] || threshold.chosen_on} split`;
    }

    const sentences = [method === "" ? formatPercent(threshold.value) : `${formatPercent(threshold.value)}, ${method}`];
    if (isFraction(threshold.validation_sensitivity) && isFraction(threshold.validation_specificity)) {
      sentences.push(
        `Validation sensitivity ${formatPercent(threshold.validation_sensitivity)}, ` +
          `specificity ${formatPercent(threshold.validation_specificity)}`,
      );
    }
    return sentences.map(endSentence).join(" ");
  }

  function describeMetrics(metrics) {
    if (metrics === null || typeof metrics !== "object") {
      return "not recorded";
    }
    const parts = [];
    if (isFraction(metrics.auc)) {
      parts.push(`AUC ${metrics.auc.toFixed(3)}`);
    }
    if (isFraction(metrics.sensitivity)) {
      parts.push(`sensitivity ${formatPercent(metrics.sensitivity)}`);
    }
    if (isFraction(metrics.specificity)) {
      parts.push(`specificity ${formatPercent(metrics.specificity)}`);
    }
    return parts.length > 0 ? parts.join(", ") : "not recorded";
  }

  function renderModelInfo(info) {
    byId("model-name").textContent = info.name || "unknown";
    byId("model-version").textContent = info.version || "unknown";
    byId("model-image-size").textContent = describeSize(info.image_size);

    const threshold = info.threshold;
    if (threshold !== null && typeof threshold === "object" && isFraction(threshold.value)) {
      byId("model-threshold").textContent = describeThreshold(threshold);
      renderThreshold(threshold.value);
    }
    byId("model-metrics").textContent = describeMetrics(info.test_metrics);

    state.explainAvailable = info.explain_available !== false;
    const toggle = byId("explain-toggle");
    toggle.disabled = !state.explainAvailable;
    if (!state.explainAvailable) {
      toggle.checked = false;
      byId("explain-help").textContent = "Grad-CAM is not available for this model.";
      renderImages();
    }
  }

  function retryHealth(message) {
    setModelStatus(`${endSentence(message)} Checking again in ${Math.round(state.healthRetryMs / 1000)} s.`);
    window.setTimeout(loadModelInfo, state.healthRetryMs);
    state.healthRetryMs = Math.min(state.healthRetryMs * 2, HEALTH_RETRY_MAX_MS);
  }

  // Waits for GET /health to return 200, then shows GET /model.
  async function loadModelInfo() {
    let health;
    try {
      health = await fetch("/health", { cache: "no-store" });
    } catch (error) {
      retryHealth(`Could not reach the server (${error.message})`);
      return;
    }
    if (!health.ok) {
      const detail = await readErrorDetail(health);
      const prefix = health.status === 503 ? "Waiting for the model" : `Health check failed (HTTP ${health.status})`;
      retryHealth(`${prefix}: ${detail}`);
      return;
    }
    setModelStatus("");
    state.healthRetryMs = HEALTH_RETRY_MIN_MS;

    let response;
    try {
      response = await fetch("/model", { cache: "no-store" });
    } catch (error) {
      showError(`Could not load the model information (${error.message}). Reload the page to try again.`);
      return;
    }
    if (!response.ok) {
      const detail = await readErrorDetail(response);
      showError(`Could not load the model information (HTTP ${response.status}): ${detail}`);
      return;
    }
    try {
      renderModelInfo(await response.json());
    } catch (error) {
      showError(`The server returned invalid model information: ${error.message}`);
    }
  }

  // ---- Input ----

  function chooseFile(files) {
    if (files.length === 0) {
      return;
    }
    if (files.length > 1) {
      showError(`Drop one image at a time. ${files.length} files were dropped, so none was sent.`);
      return;
    }
    state.file = files[0];
    state.gradcam = null;
    predict(state.file, byId("explain-toggle").checked);
  }

  function onExplainToggle() {
    if (state.file === null) {
      return;
    }
    // A request in flight was sent with the old setting, so it is replaced.
    const needsRequest = state.controller !== null || state.result === null;
    if (needsRequest || (byId("explain-toggle").checked && state.gradcam === null)) {
      predict(state.file, byId("explain-toggle").checked);
      return;
    }
    renderImages();
  }

  function setUpDropZone() {
    const dropZone = byId("drop-zone");

    for (const type of ["dragenter", "dragover"]) {
      dropZone.addEventListener(type, (event) => {
        event.preventDefault();
        event.dataTransfer.dropEffect = "copy";
        dropZone.classList.add("dragging");
      });
    }
    dropZone.addEventListener("dragleave", (event) => {
      if (!dropZone.contains(event.relatedTarget)) {
        dropZone.classList.remove("dragging");
      }
    });
    dropZone.addEventListener("drop", (event) => {
      event.preventDefault();
      dropZone.classList.remove("dragging");
      chooseFile(event.dataTransfer.files);
    });

    // A file dropped beside the zone would otherwise replace the page with the file.
    for (const type of ["dragover", "drop"]) {
      window.addEventListener(type, (event) => {
        if (!dropZone.contains(event.target)) {
          event.preventDefault();
          event.dataTransfer.dropEffect = "none";
        }
      });
    }
  }

  function start() {
    const input = byId("file-input");
    input.addEventListener("change", () => {
      chooseFile(input.files);
      // Clearing the value lets the same file be chosen again, after an error for example.
      input.value = "";
    });
    byId("explain-toggle").addEventListener("change", onExplainToggle);
    setUpDropZone();
    loadModelInfo();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
