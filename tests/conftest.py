"""Shared fixtures. The real DAVIS data lives outside the repository, in ``<repo>/../shared``."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_VOS = REPO_ROOT.parent / "shared" / "data" / "vos"

TINY_BUNDLE_SIZE = (64, 112)


@pytest.fixture(scope="session")
def shared_vos() -> Path:
    """``<repo>/../shared/data/vos``: four DAVIS 2016 sequences (``davis2016_<seq>``); skips if absent."""
    if not SHARED_VOS.is_dir():
        pytest.skip(f"shared DAVIS test data not found at {SHARED_VOS} (expected next to the repository)")
    return SHARED_VOS


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-config fp32 ONNX bundle at 64x112 (max 4 objects, 8 memory slots, seeded random weights),
    exported once per test session without verification (the export tests verify bundles themselves)."""
    from kmnrt.export.bundle import ExportOptions, export_bundle
    from kmnrt.model.config import get_config
    from kmnrt.model.kmn import build_model

    height, width = TINY_BUNDLE_SIZE
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    options = ExportOptions(config="tiny", out=out, height=height, width=width, max_objects=4, max_memory=8,
                            verify=False)
    return export_bundle(options, model=build_model(get_config("tiny"), options.read_config, seed=0),
                         progress=False)


def declare_frames(video: Path, count: int) -> None:
    """Make an OpenCV-written MJPG .avi declare ``count`` frames, whatever it holds: the video stream header's
    dwLength (32 bytes into 'strh') is the count OpenCV reports."""
    data = bytearray(video.read_bytes())
    length = data.find(b"strh") + 8 + 32
    data[length:length + 4] = count.to_bytes(4, "little")
    video.write_bytes(bytes(data))


@pytest.fixture()
def under_declared_video():
    """``declare_frames`` for tests in every package (conftest helpers are not importable as a module here)."""
    return declare_frames
