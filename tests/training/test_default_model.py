"""The embedded default model: present, small, loadable, usable by the reference tracker."""

from __future__ import annotations

import numpy as np

from kmnrt.model.checkpoint import load_model, read_checkpoint
from kmnrt.model.config import get_config
from kmnrt.model.embedded import default_checkpoint
from kmnrt.training.default_model import HELDOUT_SEED, MODEL
from kmnrt.training.scoring import track_and_score
from kmnrt.training.videos import VideoConfig, write_video_dataset

MAX_BYTES = 20 * 1024 * 1024


def test_default_checkpoint_is_embedded_small_and_loads():
    path = default_checkpoint(MODEL)
    assert path is not None and path.is_file(), "run `make default-model` to train and install it"
    assert path.stat().st_size <= MAX_BYTES
    _, stored = read_checkpoint(path)
    assert stored == get_config(MODEL)
    assert default_checkpoint("paper") is None


def test_default_model_runs_the_reference_tracker_on_a_generated_video(tmp_path):
    # Quality is not asserted: the shipped model misses its J&F target (docs/default-model.md). This checks that
    # the embedded weights go through the tracker and the scorer like any checkpoint.
    data = write_video_dataset(tmp_path / "videos", videos=1, seed=HELDOUT_SEED + 101,
                               config=VideoConfig(frames=6), progress=False)
    model = load_model(get_config(MODEL), default_checkpoint(MODEL))
    result = track_and_score(model, data, tmp_path / "predictions", progress=False)
    assert np.isfinite(result.global_scores.j_and_f_mean) and 0.0 <= result.global_scores.j_and_f_mean <= 1.0
    assert len(list((tmp_path / "predictions" / "synthetic-0000").glob("*.png"))) == 6
