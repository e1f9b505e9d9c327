"""Shared fixtures. The real DAVIS data lives outside the repository, in ``<repo>/../shared``."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_VOS = REPO_ROOT.parent / "shared" / "data" / "vos"


@pytest.fixture(scope="session")
def shared_vos() -> Path:
    """``<repo>/../shared/data/vos``: four DAVIS 2016 sequences (``davis2016_<seq>``); skips if absent."""
    if not SHARED_VOS.is_dir():
        pytest.skip(f"shared DAVIS test data not found at {SHARED_VOS} (expected next to the repository)")
    return SHARED_VOS
