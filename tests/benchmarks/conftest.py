"""Fixtures for the benchmark tests: a small frame folder at the tiny bundle's size and one in-process run."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

FRAME_SIZE = (64, 112)  # the tiny bundle's input size (tests/conftest.py): no resizing, padded == fitted


def moving_scene(index: int, size: tuple[int, int] = FRAME_SIZE) -> np.ndarray:
    """A textured background with a bright disc moving right: non-constant frames that change over time."""
    height, width = size
    ys, xs = np.mgrid[0:height, 0:width]
    planes = [(xs * 2 + index * 3) % 256, (ys * 3) % 256, ((xs + ys) * 2) % 256]
    frame = np.ascontiguousarray(np.stack(planes, axis=-1).astype(np.uint8))
    cv2.circle(frame, (10 + 4 * index % (width - 20), height // 2), 9, (250, 240, 30), -1)
    return frame


@pytest.fixture(scope="session")
def frames_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    for index in range(12):
        cv2.imwrite(str(folder / f"{index:05d}.png"), cv2.cvtColor(moving_scene(index), cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture(scope="session")
def bench_document(tiny_bundle: Path, frames_dir: Path) -> dict:
    """One small run in this process: reference, torch and onnxruntime; T in {1, 3}; N in {1, 2}; K in {1, 2}; and
    a video of 60 frames (the tiny bundle holds 8 memory frames, filled by frame 35 at mem_every 5)."""
    from kmnrt.benchmarks.suite import BenchOptions, run_benchmark

    options = BenchOptions(bundle=tiny_bundle, backends=("reference", "torch", "onnxruntime"), memory=(3, 1),
                           objects=(1, 2), frames=3, warmup=1, input=frames_dir, sessions=(1, 2),
                           video_length=60, isolate=False, progress=False, command="kmnrt bench (test)")
    return run_benchmark(options)
