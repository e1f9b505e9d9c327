"""Readiness: a real uvicorn server answers `/v2/health/ready` 503 while its engines warm up and 200 after; work sent
meanwhile is refused with 503 `not_ready` rather than run on cold engines; a failed warm-up never turns ready."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from kmnrt.client import ServiceClient, ServiceClientError
from kmnrt.service.app import create_app
from kmnrt.service.settings import ServiceSettings


class HeldWarmup:
    """The real tracker, except that its first ``step_batch`` (the warm-up's, on the worker thread) waits until
    the test sets ``release``; ``entered`` tells the test the warm-up is under way. Everything else, and every later
    call, is the tracker's own: the app serves it through its public ``tracker=`` parameter."""

    def __init__(self, tracker):
        self._tracker = tracker
        self.entered, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._tracker, name)

    def step_batch(self, *args, **kwargs):
        self.entered.set()
        if not self.release.wait(60):
            raise TimeoutError("the test never released the warm-up")
        return self._tracker.step_batch(*args, **kwargs)


class FailingWarmup(HeldWarmup):
    """The real tracker whose device fails during the warm-up (as a GPU out of memory would)."""

    def step_batch(self, *args, **kwargs):
        raise RuntimeError("CUDA error: out of memory (simulated during warm-up)")


def test_ready_answers_503_while_warming_up_then_200(tracker, loopback, videos, reference):
    held = HeldWarmup(tracker)
    app = create_app(ServiceSettings(warmup=True, max_batch=2), tracker=held)
    clip = videos(500, 3)
    try:
        with loopback(app, wait_ready=False) as url:
            assert held.entered.wait(60), "the warm-up did not start"
            # the server listens and answers while its worker is inside the warm-up
            ready = httpx.get(f"{url}/v2/health/ready")
            assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
            assert httpx.get(f"{url}/v2/health/live").status_code == 200
            assert httpx.get(f"{url}/metrics").status_code == 200
            with ServiceClient(url) as client:
                assert not client.ready()
                with pytest.raises(ServiceClientError) as raised:
                    client.create_session(clip.frames[0], clip.mask)
                assert (raised.value.status, raised.value.code) == (503, "not_ready")
                assert 'kmnrt_errors_total{code="not_ready"} 1.0' in httpx.get(f"{url}/metrics").text

                held.release.set()
                body = client.wait_ready(timeout_s=60)
                assert body["status"] == "ready" and body["backend"] == "onnxruntime"
                session = client.create_session(clip.frames[0], clip.mask)
                answer = client.send_frame(session.session_id, 1, clip.frames[1])
                assert np.array_equal(answer.labels, reference(clip)[1])
    finally:
        held.release.set()  # never leave the worker thread waiting if an assertion failed


def test_failed_warm_up_never_gets_ready(tracker, videos):
    from fastapi.testclient import TestClient

    clip = videos(501, 2)
    with TestClient(create_app(ServiceSettings(warmup=True), tracker=FailingWarmup(tracker))) as http:
        deadline = time.monotonic() + 60
        while http.get("/v2/health/ready").json()["status"] == "not_ready" and time.monotonic() < deadline:
            time.sleep(0.02)  # the warm-up runs on the worker thread; it fails at its first batch
        ready = http.get("/v2/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        live = http.get("/v2/health/live")  # an orchestrator should restart this instance
        assert live.status_code == 503 and live.json()["status"] == "failed"
        with pytest.raises(ServiceClientError) as raised:
            ServiceClient(http=http).create_session(clip.frames[0], clip.mask)
        assert (raised.value.status, raised.value.code) == (503, "not_ready")


def test_the_client_waits_through_a_proxys_errors_but_not_for_a_missing_route():
    """In front of a server that is starting, a proxy answers 502/504: the client keeps waiting (as for 503 and
    for no answer at all); a 404 means the URL is wrong, which no wait mends."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    answers = [502, 504, 200]

    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            status = answers.pop(0) if answers else 404
            body = json.dumps({"status": "ready"}).encode() if status == 200 else b"<html>bad gateway</html>"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Proxy) as proxy:
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{proxy.server_address[1]}"
        with ServiceClient(url) as client:
            assert client.wait_ready(timeout_s=30, interval_s=0.01) == {"status": "ready"} and not answers
            started = time.monotonic()
            with pytest.raises(ServiceClientError, match="give the service's root URL") as raised:
                client.wait_ready(timeout_s=30, interval_s=0.01)
            assert raised.value.status == 404 and time.monotonic() - started < 5
        proxy.shutdown()
