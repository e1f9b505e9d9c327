"""Python client of the kmnrt service (``kmnrt serve``): sessions over REST with httpx.

    from kmnrt.client import ServiceClient
    with ServiceClient("http://127.0.0.1:8000") as client:
        session = client.create_session(frame0, mask0)          # [H, W, 3] uint8 RGB, [H, W] ids
        for index, frame in enumerate(frames[1:], start=1):
            labels = client.send_frame(session.session_id, index, frame).labels
        client.delete_session(session.session_id)

Frames given as arrays travel as PNG (lossless), so the server segments exactly the pixels given; bytes (a JPEG
or PNG file's content) are sent as they are.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kmnrt.errors import KmnrtError, UserInputError

UNREACHABLE = "unreachable"


class ServiceClientError(KmnrtError):
    """The service refused a request; ``status`` and ``code`` say why (see docs/service.md)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message if status == 0 else f"server answered {status} {code}: {message}")  # 0: none did
        self.status = status
        self.code = code


@dataclass
class FrameAnswer:
    """One frame's answer: ``labels`` is the [H, W] uint8 index mask (None if the frame was dropped)."""

    frame_index: int
    object_ids: list[int]
    labels: np.ndarray | None
    cached: bool = False
    dropped: bool = False
    batch_size: int = 1
    times_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class SessionHandle:
    session_id: str
    expires_at: float
    ttl_s: float
    mask_format: str
    queue_policy: str
    first: FrameAnswer


class ServiceClient:
    """A connection to one server. ``token``: bearer token (default: ``KMNRT_TOKEN``). ``http``: an existing
    ``httpx.Client`` (e.g. FastAPI's TestClient) instead of a new one for ``base_url``."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", token: str | None = None, timeout_s: float = 60.0,
                 http: Any = None):
        import httpx

        token = token if token is not None else os.environ.get("KMNRT_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._owned = http is None
        if http is None:
            check_service_url(base_url)
        self.http = http if http is not None else httpx.Client(base_url=base_url, timeout=timeout_s)
        self.http.headers.update(headers)

    def close(self) -> None:
        if self._owned:
            self.http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_session(self, frame: np.ndarray | bytes, mask: np.ndarray, *, object_ids: list[int] | None = None,
                       mask_format: str | None = None, ttl_s: float | None = None,
                       queue_policy: str | None = None) -> SessionHandle:
        options = {k: v for k, v in {"object_ids": object_ids, "mask_format": mask_format, "ttl_s": ttl_s,
                                     "queue_policy": queue_policy}.items() if v is not None}
        body = self._call("POST", "/v1/sessions", files={"frame": ("frame.png", encode_frame(frame)),
                                                         "mask": ("mask.png", encode_mask_png(mask))},
                          data={"options": json.dumps(options)})
        return SessionHandle(body["session_id"], body["expires_at"], body["ttl_s"], body["mask_format"],
                             body["queue_policy"], _answer(body["result"]))

    def send_frame(self, session_id: str, frame_index: int, frame: np.ndarray | bytes) -> FrameAnswer:
        body = self._call("POST", f"/v1/sessions/{session_id}/frames",
                          files={"frame": ("frame.png", encode_frame(frame))}, data={"frame_index": str(frame_index)})
        return _answer(body)

    def add_objects(self, session_id: str, frame_index: int, frame: np.ndarray | bytes,
                    mask: np.ndarray) -> FrameAnswer:
        body = self._call("POST", f"/v1/sessions/{session_id}/objects",
                          files={"frame": ("frame.png", encode_frame(frame)), "mask": ("mask.png",
                                                                                     encode_mask_png(mask))},
                          data={"frame_index": str(frame_index)})
        return _answer(body)

    def remove_object(self, session_id: str, object_id: int) -> dict:
        return self._call("DELETE", f"/v1/sessions/{session_id}/objects/{object_id}")

    def get_session(self, session_id: str) -> dict:
        return self._call("GET", f"/v1/sessions/{session_id}")

    def delete_session(self, session_id: str) -> None:
        self._call("DELETE", f"/v1/sessions/{session_id}")

    def ready(self) -> bool:
        """Whether the server answers ``/v2/health/ready`` with 200 (False when nothing answers)."""
        import httpx

        try:
            return self.http.get("/v2/health/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout_s: float = 120.0, interval_s: float = 0.1) -> dict:
        """Poll ``/v2/health/ready`` until the server is ready (it answers 503 while it warms up). -> the ready
        body. Raises ServiceClientError when the warm-up failed or ``timeout_s`` passes (a server that does not
        listen yet is polled too)."""
        import httpx

        deadline = time.monotonic() + timeout_s
        status = UNREACHABLE
        while True:
            try:
                response = self.http.get("/v2/health/ready")
            except httpx.HTTPError:
                status = UNREACHABLE
            else:
                if response.status_code == 200 and _status_of(response) == "ready":
                    return response.json()
                if response.status_code in (401, 403, 404):  # no readiness route here: waiting will not help
                    code = "not_found" if response.status_code == 404 else "unauthorized"
                    raise ServiceClientError(response.status_code, code, "GET /v2/health/ready is not a kmnrt "
                                             f"readiness answer{_hint(code, self.http.base_url)}")
                status = _status_of(response)  # 503 while warming up; a proxy's 502/504 while the server starts
            if status == "failed":
                raise ServiceClientError(503, "failed", "the server's engine warm-up failed; see the server log")
            if time.monotonic() > deadline:
                if status == UNREACHABLE:
                    raise ServiceClientError(0, "connection_failed", f"no server answered at {self.http.base_url} "
                                             f"within {timeout_s:g} s: is `kmnrt serve` running there? (--server)")
                raise ServiceClientError(503, "not_ready", f"the server was not ready after {timeout_s:g} s "
                                         f"(last status: {status})")
            time.sleep(interval_s)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceClientError(0, "connection_failed", f"{method} {path}: no answer from {self.http.base_url} "
                                     f"({exc}); is `kmnrt serve` running there? (--server)") from exc
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                code, message = error["code"], error["message"]
            except (ValueError, KeyError, TypeError):
                raise ServiceClientError(response.status_code, "http_error", response.text[:200]) from None
            raise ServiceClientError(response.status_code, code, message + _hint(code, self.http.base_url))
        return response.json() if response.content else None


def _status_of(response: Any) -> str:
    """The ``status`` of a readiness answer; a proxy's or another server's page has none."""
    try:
        return str(response.json().get("status", f"HTTP {response.status_code}"))
    except (ValueError, AttributeError):
        return f"HTTP {response.status_code}"


def _hint(code: str, base_url: object) -> str:
    """What to do about the errors that come from how the client was set up rather than from a request."""
    if code == "unauthorized":
        return " (the client's token: --token, or KMNRT_TOKEN)"
    if code == "not_found":  # no such route, as opposed to an unknown session (session_not_found)
        return f" (no such route under {base_url}: give the service's root URL, e.g. http://127.0.0.1:8000)"
    return ""


def check_service_url(url: str) -> None:
    """A service URL needs its scheme and a host: ``localhost:8000`` alone would be read as the scheme
    ``localhost``, and a malformed one would otherwise surface as httpx's traceback at the first request."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what finds a bad one
    except ValueError as exc:
        raise UserInputError(f"service URL {url!r} is malformed ({exc}); give one like http://127.0.0.1:8000") \
            from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        example = f"http://{url}" if "://" not in url and url else "http://127.0.0.1:8000"
        raise UserInputError(f"service URL {url!r} needs http:// or https:// and a host, e.g. {example}")


def _answer(body: dict) -> FrameAnswer:
    from kmnrt.service.masks import decode_labels

    labels = decode_labels(body["mask"]) if body.get("mask") else None
    return FrameAnswer(body["frame_index"], body["object_ids"], labels, body.get("cached", False),
                       body.get("dropped", False), body.get("batch_size", 1), body.get("times_ms", {}))


def encode_frame(frame: np.ndarray | bytes) -> bytes:
    """An [H, W, 3] uint8 RGB array as PNG bytes (lossless); bytes pass through (an image file's content)."""
    if isinstance(frame, (bytes, bytearray)):
        return bytes(frame)
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def encode_mask_png(mask: np.ndarray) -> bytes:
    """An [H, W] index mask as an indexed PNG (pixel values = object ids, DAVIS palette)."""
    from kmnrt.service.masks import encode_png

    return encode_png(np.asarray(mask, dtype=np.uint8))
