"""Run the real web service on a free local port in a background thread, for HTTP tests."""

import threading
import time
from contextlib import contextmanager

import httpx
import uvicorn


@contextmanager
def running_server(app, wait_until_ready: bool = True, timeout: float = 120.0):
    """Serve ``app`` on 127.0.0.1 and yield its base URL; stop the server on exit.

    With ``wait_until_ready``, wait until ``/health`` returns 200, i.e. the model has loaded.
    """
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("The test server did not start.")
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        base_url = f"http://127.0.0.1:{port}"
        if wait_until_ready:
            wait_for_health(base_url, deadline)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_for_health(base_url: str, deadline: float) -> None:
    """Poll ``/health`` until it returns 200; at ``deadline``, raise with its last response."""
    last = None
    while time.monotonic() < deadline:
        last = httpx.get(f"{base_url}/health", timeout=10)
        if last.status_code == 200:
            return
        time.sleep(0.1)
    raise RuntimeError(
        f"/health did not become ready: {last.status_code if last else None} {last.text if last else ''}"
    )
