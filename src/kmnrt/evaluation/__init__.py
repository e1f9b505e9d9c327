"""DAVIS J, F and J&F, exactly as the official DAVIS 2017 semi-supervised evaluation computes them.

Public API (imported lazily, so registering the ``eval`` command does not load numpy or OpenCV):

- per frame:   ``region_similarity``, ``contour_accuracy``, ``boundary_map``, ``disk``, ``tolerance_radius``
- per object:  ``series_statistics``, ``decay_breakpoints``, ``SeriesStatistics``
- evaluation:  ``evaluate``, ``evaluate_folders``, ``evaluate_sequence``, ``scored_frames``,
  ``PredictionSource``, ``PredictionFolder``
- results:     ``EvaluationResult``, ``ObjectScores``, ``GlobalScores``, ``OFFICIAL_COLUMNS``
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kmnrt.lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_BOUND_TH": "kmnrt.evaluation.metrics",
    "boundary_map": "kmnrt.evaluation.metrics",
    "contour_accuracy": "kmnrt.evaluation.metrics",
    "disk": "kmnrt.evaluation.metrics",
    "region_similarity": "kmnrt.evaluation.metrics",
    "tolerance_radius": "kmnrt.evaluation.metrics",
    "SeriesStatistics": "kmnrt.evaluation.statistics",
    "decay_breakpoints": "kmnrt.evaluation.statistics",
    "series_statistics": "kmnrt.evaluation.statistics",
    "OFFICIAL_COLUMNS": "kmnrt.evaluation.results",
    "EvaluationResult": "kmnrt.evaluation.results",
    "GlobalScores": "kmnrt.evaluation.results",
    "ObjectScores": "kmnrt.evaluation.results",
    "PredictionFolder": "kmnrt.evaluation.davis",
    "PredictionSource": "kmnrt.evaluation.davis",
    "evaluate": "kmnrt.evaluation.davis",
    "evaluate_folders": "kmnrt.evaluation.davis",
    "evaluate_sequence": "kmnrt.evaluation.davis",
    "scored_frames": "kmnrt.evaluation.davis",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from kmnrt.evaluation.davis import (
        PredictionFolder,
        PredictionSource,
        evaluate,
        evaluate_folders,
        evaluate_sequence,
        scored_frames,
    )
    from kmnrt.evaluation.metrics import (
        DEFAULT_BOUND_TH,
        boundary_map,
        contour_accuracy,
        disk,
        region_similarity,
        tolerance_radius,
    )
    from kmnrt.evaluation.results import OFFICIAL_COLUMNS, EvaluationResult, GlobalScores, ObjectScores
    from kmnrt.evaluation.statistics import SeriesStatistics, decay_breakpoints, series_statistics


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
