"""Fixtures for the training tests: small run configurations and a tiny DAVIS-style video tree on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from kmnrt.training.config import TrainConfig, preset

TREE_FRAMES = 10
NEW_OBJECT_FROM = 5  # object 2 first appears in this frame of the fixture video


def write_video_tree(root: Path, name: str = "squares", frames: int = TREE_FRAMES) -> Path:
    """root/JPEGImages/<name>/00000.jpg ... and root/Annotations/<name>/00000.png ...: a 96x128 video where
    object 1 (a square) moves right one step per frame and object 2 appears at frame NEW_OBJECT_FROM."""
    (root / "JPEGImages" / name).mkdir(parents=True, exist_ok=True)
    (root / "Annotations" / name).mkdir(parents=True, exist_ok=True)
    for t in range(frames):
        image = np.full((96, 128, 3), 40, np.uint8)
        mask = np.zeros((96, 128), np.uint8)
        x = 8 + 6 * t
        image[30:60, x:x + 30] = (200, 60, 60)
        mask[30:60, x:x + 30] = 1
        if t >= NEW_OBJECT_FROM:
            image[70:90, 90:120] = (60, 200, 60)
            mask[70:90, 90:120] = 2
        cv2.imwrite(str(root / "JPEGImages" / name / f"{t:05d}.jpg"), image[..., ::-1])
        cv2.imwrite(str(root / "Annotations" / name / f"{t:05d}.png"), mask)
    return root


@dataclass(frozen=True)
class VideoTree:
    root: Path
    frames: int = TREE_FRAMES
    new_object_from: int = NEW_OBJECT_FROM


@pytest.fixture
def video_tree(tmp_path: Path) -> VideoTree:
    return VideoTree(write_video_tree(tmp_path / "videos"))


@pytest.fixture
def make_video_tree():
    """The writer itself, for trees of other lengths."""
    return write_video_tree


@pytest.fixture
def small_config(tmp_path: Path) -> TrainConfig:
    """A pre-training run small enough for unit tests: 64x64 crops, batch 2, 4 iterations."""
    return preset("tiny", "pretrain", tmp_path / "run", size=64, batch=2, iterations=4, checkpoint_every=2)
