from __future__ import annotations

import math

import numpy as np
import pytest

from kmnrt.evaluation import decay_breakpoints, series_statistics


def _official_float_breakpoints(num_frames: int) -> list[int]:
    """The official float formula, without its uint8 cast (valid only up to 256 frames)."""
    return [int(value) for value in np.round(np.linspace(1, num_frames, 5) + 1e-10) - 1]


def test_breakpoints_reference_values() -> None:
    assert decay_breakpoints(48) == (0, 12, 24, 35, 47)
    assert decay_breakpoints(78) == (0, 19, 39, 58, 77)
    assert decay_breakpoints(1) == (0, 0, 0, 0, 0)
    with pytest.raises(ValueError):
        decay_breakpoints(0)


def test_breakpoints_agree_with_the_official_formula_up_to_256() -> None:
    for num_frames in range(1, 257):
        assert list(decay_breakpoints(num_frames)) == _official_float_breakpoints(num_frames), num_frames


def test_decay_is_exact_beyond_256_frames() -> None:
    # The official uint8 breakpoints would be 0, 75, 150, 224, 43 here, giving NaN.
    assert decay_breakpoints(300) == (0, 75, 150, 224, 299)
    values = 1 - np.arange(300) / 299  # 1.0 falling linearly to 0.0
    stats = series_statistics(values)
    assert math.isfinite(stats.decay)
    first = values[0:76].mean()  # frames 0..75 inclusive
    last = values[224:300].mean()  # frames 224..299 inclusive
    assert stats.decay == pytest.approx(first - last)
    assert stats.decay == pytest.approx(224 / 299)


def test_mean_recall_decay() -> None:
    values = [1.0, 0.8, 0.5, 0.51, 0.2]  # N = 5: breakpoints 0, 1, 2, 3, 4
    stats = series_statistics(values)
    assert stats.mean == pytest.approx(np.mean(values))
    assert stats.recall == pytest.approx(3 / 5)  # 0.5 itself is not above the threshold
    assert stats.decay == pytest.approx((1.0 + 0.8) / 2 - (0.51 + 0.2) / 2)


def test_quarters_share_their_boundary_frame() -> None:
    # N = 78, quarter 0 = frames 0..19 inclusive: zeroing frame 19 alone must change the decay.
    values = np.ones(78)
    values[19] = 0.0
    assert series_statistics(values).decay == pytest.approx(-1 / 20)


def test_nan_frames() -> None:
    stats = series_statistics([1.0, math.nan, 0.0, 1.0])
    assert stats.mean == pytest.approx(2 / 3)  # NaN ignored
    assert stats.recall == pytest.approx(2 / 4)  # NaN counts as a miss
    empty = series_statistics([])
    assert math.isnan(empty.mean) and math.isnan(empty.recall) and math.isnan(empty.decay)
