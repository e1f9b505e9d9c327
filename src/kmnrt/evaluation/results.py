"""Scores of a DAVIS evaluation: per-object rows, the global row, a text table and JSON.

Column names are the official ones (davis2017-evaluation's ``global_results-*.csv``):
``J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay``, on a 0-1 scale.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from kmnrt.data.atomic import atomic_output
from kmnrt.evaluation.statistics import series_statistics

OFFICIAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


@dataclass(frozen=True)
class ObjectScores:
    """One object of one sequence: its per-frame J and F over the scored frames, and their summaries."""

    sequence: str
    object_id: int
    frame_names: tuple[str, ...]
    j_per_frame: tuple[float, ...]
    f_per_frame: tuple[float, ...]
    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float

    @classmethod
    def from_series(
        cls,
        sequence: str,
        object_id: int,
        frame_names: tuple[str, ...] | list[str],
        j_per_frame: np.ndarray | list[float],
        f_per_frame: np.ndarray | list[float],
    ) -> ObjectScores:
        j = series_statistics(j_per_frame)
        f = series_statistics(f_per_frame)
        return cls(
            sequence=sequence,
            object_id=object_id,
            frame_names=tuple(frame_names),
            j_per_frame=tuple(float(value) for value in j_per_frame),
            f_per_frame=tuple(float(value) for value in f_per_frame),
            j_mean=j.mean,
            j_recall=j.recall,
            j_decay=j.decay,
            f_mean=f.mean,
            f_recall=f.recall,
            f_decay=f.decay,
        )

    @property
    def name(self) -> str:
        """Official row name ``<sequence>_<object id>``, e.g. ``blackswan_1``."""
        return f"{self.sequence}_{self.object_id}"

    @property
    def j_and_f_mean(self) -> float:
        return (self.j_mean + self.f_mean) / 2

    def as_dict(self) -> dict[str, float]:
        """The summary values under the official column names."""
        return dict(zip(OFFICIAL_COLUMNS, _summary(self)))


@dataclass(frozen=True)
class GlobalScores:
    """Plain means over all objects of all sequences (not per-sequence means); J&F = (J-Mean + F-Mean) / 2."""

    j_and_f_mean: float
    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float

    @classmethod
    def from_objects(cls, objects: tuple[ObjectScores, ...] | list[ObjectScores]) -> GlobalScores:
        if not objects:
            return cls(*([math.nan] * len(OFFICIAL_COLUMNS)))
        means = {
            field: float(np.mean([getattr(row, field) for row in objects]))
            for field in ("j_mean", "j_recall", "j_decay", "f_mean", "f_recall", "f_decay")
        }
        return cls(j_and_f_mean=(means["j_mean"] + means["f_mean"]) / 2, **means)

    def as_dict(self) -> dict[str, float]:
        """The values under the official column names."""
        return dict(zip(OFFICIAL_COLUMNS, _summary(self)))


@dataclass(frozen=True)
class EvaluationResult:
    """Everything one evaluation produced.

    Attributes:
        objects: per-object rows, sequences in evaluation order, objects by id.
        global_scores: the global row.
        sequences: names of the evaluated sequences.
        bound_th: the boundary tolerance F was computed with.
    """

    objects: tuple[ObjectScores, ...]
    global_scores: GlobalScores
    sequences: tuple[str, ...]
    bound_th: float

    def object_scores(self, name: str) -> ObjectScores:
        """The row named ``<sequence>_<id>``."""
        for row in self.objects:
            if row.name == name:
                return row
        raise KeyError(f"no object {name!r}; rows are {[row.name for row in self.objects]}")

    def format_table(self, decimals: int = 4) -> str:
        """Plain-text table: the global row, then one row per object (0-1 scale)."""
        width = max(len(column) for column in OFFICIAL_COLUMNS)
        name_width = max([len("Object")] + [len(row.name) for row in self.objects])

        def cells(values: tuple[float, ...]) -> str:
            return "  ".join(f"{value:{width}.{decimals}f}" for value in values)

        header = "  ".join(f"{column:>{width}}" for column in OFFICIAL_COLUMNS)
        lines = [
            f"Global: {len(self.objects)} objects in {len(self.sequences)} sequences "
            "(DAVIS 2017 semi-supervised, first and last frame not scored)",
            f"{'':{name_width}}  {header}",
            f"{'all':{name_width}}  {cells(_summary(self.global_scores))}",
            "",
            f"{'Object':{name_width}}  {header}",
        ]
        lines += [f"{row.name:{name_width}}  {cells(_summary(row))}" for row in self.objects]
        return "\n".join(lines)

    def to_json(self) -> str:
        """JSON text: ``global`` and ``per_object`` under the official names, plus per-frame J and F."""
        document = {
            "task": "semi-supervised",
            "metrics": "DAVIS 2017 J and F (davis2017-evaluation definitions)",
            "bound_th": self.bound_th,
            "sequences": list(self.sequences),
            "global": _finite_or_none(self.global_scores.as_dict()),
            "per_object": {
                row.name: {
                    "sequence": row.sequence,
                    "object_id": row.object_id,
                    **_finite_or_none(row.as_dict()),
                    "frames": list(row.frame_names),
                    "J-per-frame": [_json_number(value) for value in row.j_per_frame],
                    "F-per-frame": [_json_number(value) for value in row.f_per_frame],
                }
                for row in self.objects
            },
        }
        return json.dumps(document, indent=2, allow_nan=False) + "\n"

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` to ``path`` atomically, creating parent folders."""
        with atomic_output(path) as tmp:
            tmp.write_text(self.to_json(), encoding="utf-8")


def _summary(row: ObjectScores | GlobalScores) -> tuple[float, ...]:
    return (row.j_and_f_mean, row.j_mean, row.j_recall, row.j_decay, row.f_mean, row.f_recall, row.f_decay)


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def _finite_or_none(values: dict[str, float]) -> dict[str, float | None]:
    return {key: _json_number(value) for key, value in values.items()}
