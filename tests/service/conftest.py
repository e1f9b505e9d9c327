"""Service fixtures: one ONNX Runtime tracker on the tiny bundle, apps around it, synthetic videos, and a real
uvicorn server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

FRAME_SIZE = (60, 100)  # (H, W): smaller than the bundle's 64x112, so frames are resized and padded


@dataclass
class Video:
    frames: list[np.ndarray]
    mask: np.ndarray       # frame 0's index mask


def make_video(seed: int, length: int, size: tuple[int, int] = FRAME_SIZE) -> Video:
    """Random frames and a first mask with one to three rectangles (ids differ between seeds)."""
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(length)]
    mask = np.zeros(size, np.uint8)
    for object_id in rng.choice([1, 2, 3, 5, 7], size=int(rng.integers(1, 4)), replace=False):
        y, x = rng.integers(0, size[0] - 15), rng.integers(0, size[1] - 20)
        mask[y:y + 15, x:x + 20] = object_id
    return Video(frames, mask)


@pytest.fixture(scope="session")
def tracker(tiny_bundle):
    from kmnrt.runtime.tracker import Tracker

    with Tracker.from_bundle(tiny_bundle, backend="onnxruntime") as tracker:
        yield tracker


@pytest.fixture(scope="session")
def reference(tracker) -> Callable[[Video], list[np.ndarray]]:
    """The masks of a video run alone, directly on the tracker (frame 0 included)."""

    def run(video: Video) -> list[np.ndarray]:
        state = tracker.start(video.frames[0], video.mask)
        return [video.mask.copy()] + [tracker.step(state, f, keep_probs=False).mask for f in video.frames[1:]]

    return run


@pytest.fixture
def make_client(tracker):
    """``make_client(**settings)`` -> a FastAPI TestClient of a fresh app on the shared tracker (context-managed by
    the fixture: the app shuts down after the test)."""
    from fastapi.testclient import TestClient

    from kmnrt.service.app import create_app
    from kmnrt.service.settings import ServiceSettings

    opened = []

    def make(**settings) -> TestClient:
        settings.setdefault("warmup", False)
        client = TestClient(create_app(ServiceSettings(**settings), tracker=tracker))
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture(scope="session")
def loopback():
    """``with loopback(app) as url:`` runs ``app`` on a real uvicorn server on 127.0.0.1 in a thread."""
    from kmnrt.service.loadgen import serve_in_thread

    return serve_in_thread


@pytest.fixture(scope="session")
def videos() -> Callable[[int, int], Video]:
    return make_video
