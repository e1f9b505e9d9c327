"""Summaries of one object's per-frame J or F over a video: Mean, Recall and Decay.

Same definitions as the official DAVIS 2017 evaluation (``db_statistics``): Mean ignores NaN frames;
Recall is the share of frames scoring strictly above 0.5, a NaN frame counting as a miss; Decay is the
mean of the first quarter of the frames minus the mean of the last quarter.

One deliberate difference: the official code stores the quarter breakpoints as ``uint8``, so for videos
of more than 256 scored frames they wrap around (N = 300 gives 0, 75, 150, 224, 43) and Decay comes out
wrong or NaN. Here the breakpoints are exact integers for any length; for N <= 256 both agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RECALL_THRESHOLD = 0.5
"""A frame counts towards Recall when its score is strictly above this."""

DECAY_BINS = 4
"""Decay compares the first and the last of this many bins (quarters)."""


@dataclass(frozen=True)
class SeriesStatistics:
    """Mean, Recall and Decay of one per-frame series (NaN when the series is empty)."""

    mean: float
    recall: float
    decay: float


def decay_breakpoints(num_frames: int) -> tuple[int, ...]:
    """0-based frame indices b_0..b_4 that split ``num_frames`` frames into quarters, both ends inclusive.

    b_i = round(1 + i * (N - 1) / 4) - 1 with halves rounded up, as the official
    ``round(linspace(1, N, 5) + 1e-10) - 1``, but in integer arithmetic, so exact for any N.
    N = 48 → (0, 12, 24, 35, 47); N = 78 → (0, 19, 39, 58, 77); N = 300 → (0, 75, 150, 224, 299).
    """
    if num_frames < 1:
        raise ValueError(f"need at least one frame, got {num_frames}")
    # round-half-up(i (N-1) / B) = floor((2 i (N-1) + B) / 2B)
    return tuple((2 * i * (num_frames - 1) + DECAY_BINS) // (2 * DECAY_BINS) for i in range(DECAY_BINS + 1))


def series_statistics(values: np.ndarray | list[float] | tuple[float, ...]) -> SeriesStatistics:
    """Mean, Recall and Decay of the per-frame ``values`` of one object (J or F over the scored frames).

    Quarter q holds frames b_q..b_{q+1} inclusive, so neighbouring quarters share a frame; Decay =
    nanmean(quarter 0) - nanmean(quarter 3), positive when quality drops over time.
    """
    series = np.asarray(values, dtype=np.float64).ravel()
    if series.size == 0:
        return SeriesStatistics(math.nan, math.nan, math.nan)
    breakpoints = decay_breakpoints(series.size)
    first_quarter = series[breakpoints[0] : breakpoints[1] + 1]
    last_quarter = series[breakpoints[-2] : breakpoints[-1] + 1]
    return SeriesStatistics(
        mean=_nanmean(series),
        recall=float(np.mean(series > RECALL_THRESHOLD)),  # NaN > 0.5 is False: a miss, as officially
        decay=_nanmean(first_quarter) - _nanmean(last_quarter),
    )


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN values; NaN (without numpy's warning) when there are none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan
