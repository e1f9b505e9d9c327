from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kmnrt.model.config import get_config
from kmnrt.model.kmn import build_model


@pytest.fixture(scope="session")
def tiny_model():
    return build_model(get_config("tiny"), seed=0)


def load_sequence(root: Path, count: int) -> tuple[list[np.ndarray], list[str]]:
    paths = sorted((root / "JPEGImages").glob("*.jpg"))[:count]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths], [p.stem for p in paths]


@pytest.fixture(scope="session")
def bmx_trees(shared_vos):
    """The first 6 frames of bmx-trees and its two-object DAVIS 2017 first-frame mask (ids 1 = rider, 2 = bike)."""
    root = shared_vos / "davis2016_bmx-trees"
    frames, names = load_sequence(root, 6)
    mask = np.asarray(Image.open(root / "Annotations_davis2017_first_frame" / "00000.png"))
    return frames, names, mask


@pytest.fixture(scope="session")
def blackswan(shared_vos):
    root = shared_vos / "davis2016_blackswan"
    frames, names = load_sequence(root, 8)
    mask = (np.asarray(Image.open(root / "Annotations" / "00000.png")) > 127).astype(np.uint8)
    return frames, names, mask
