"""The DAVIS 2017 semi-supervised evaluation of predicted masks against ground truth.

Protocol (as in the official davis2017-evaluation, see ``docs/evaluation.md``):

- a sequence's frames are its ground-truth PNGs in name order; the first (the given mask) and the last
  are not scored;
- its objects are 1..K, K = the largest id in the first ground-truth frame; GT void (255) counts as
  background; predicted id k is scored against GT id k, with no matching;
- a missing predicted id scores as an empty mask; a predicted id above K is an error (the official tool
  stops there too);
- J and F per object and frame, Mean/Recall/Decay per object, global = plain mean over all objects.

Predictions come from a :class:`PredictionSource`: :class:`PredictionFolder` reads
``PRED_ROOT/<sequence>/<frame>.png``; a tracker can supply its masks in memory instead.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from kmnrt.data.davis import Sequence, find_sequences, read_annotation
from kmnrt.data.palette import DAVIS_VOID, read_label_png
from kmnrt.errors import KmnrtWarning, UserInputError, a_few
from kmnrt.evaluation.metrics import DEFAULT_BOUND_TH, contour_accuracy, region_similarity
from kmnrt.evaluation.results import EvaluationResult, GlobalScores, ObjectScores


class PredictionSource(Protocol):
    """Where the predicted label maps of the sequences come from."""

    def check(self, sequence: Sequence, frame_names: tuple[str, ...]) -> None:
        """Raise :class:`UserInputError` if a prediction for one of ``frame_names`` is missing."""

    def read(self, sequence: Sequence, frame_name: str) -> np.ndarray:
        """The ``[H, W]`` uint8 label map predicted for ``frame_name`` of ``sequence``."""


class PredictionFolder:
    """Predictions stored as ``root/<sequence name>/<frame name>.png`` (indexed or grayscale PNGs)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserInputError(
                f"prediction folder {self.root} does not exist or is not a folder; "
                "it should hold one <sequence>/ folder of <frame>.png masks per sequence"
            )

    def sequence_dir(self, sequence: Sequence) -> Path:
        return self.root / sequence.name

    def check(self, sequence: Sequence, frame_names: tuple[str, ...]) -> None:
        folder = self.sequence_dir(sequence)
        if not folder.is_dir():
            hint = ""
            if any(self.root.glob("*.png")):
                fix = (f"did you mean {self.root.parent}?" if self.root.name == sequence.name  # the sequence's own
                       else f"move them into {folder}")
                hint = f"; {self.root} holds PNG files itself, but PRED_ROOT must hold one folder per sequence ({fix})"
            raise UserInputError(
                f"no predictions for sequence {sequence.name}: expected the folder {folder} with one PNG "
                f"per ground-truth frame ({frame_names[0]}.png ... {frame_names[-1]}.png){hint}"
            )
        missing = [name for name in frame_names if not (folder / f"{name}.png").is_file()]
        if missing:
            listed = ", ".join(f"{name}.png" for name in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise UserInputError(
                f"sequence {sequence.name}: prediction {folder / (missing[0] + '.png')} is missing "
                f"({len(missing)} of {len(frame_names)} scored frames have no prediction: {listed}); "
                f"write one PNG per ground-truth frame, with the same name, into {folder}"
            )

    def read(self, sequence: Sequence, frame_name: str) -> np.ndarray:
        return read_label_png(self.sequence_dir(sequence) / f"{frame_name}.png")


def scored_frames(sequence: Sequence) -> tuple[str, ...]:
    """The annotated frames that are scored: all but the first and the last."""
    names = sequence.annotation_names
    if len(names) < 3:
        raise UserInputError(
            f"sequence {sequence.name} has {len(names)} annotated frame(s) in {sequence.annotations_dir}; "
            "semi-supervised scoring skips the first and the last, so it needs at least 3"
        )
    return names[1:-1]


def evaluate_sequence(
    sequence: Sequence, predictions: PredictionSource, bound_th: float = DEFAULT_BOUND_TH
) -> list[ObjectScores]:
    """Per-object scores of one sequence (objects 1..K of its first ground-truth frame)."""
    frame_names = scored_frames(sequence)
    first_name = sequence.annotation_names[0]
    first = _read_ground_truth(sequence, first_name)
    num_objects = int(first.max())
    if num_objects == 0:
        raise UserInputError(
            f"sequence {sequence.name}: the first ground-truth frame {sequence.annotation_path(first_name)} "
            "holds no object; semi-supervised evaluation takes the objects from the first frame"
        )
    absent = sorted(set(range(1, num_objects + 1)) - set(np.unique(first).tolist()))
    if absent:  # the official tool scores them too, and each absent one scores a perfect 1 (both masks empty)
        warnings.warn(f"sequence {sequence.name}: the first frame's ids run to {num_objects}, but {len(absent)} of "
                      f"them are absent ({a_few(absent, 5)}); as in the official DAVIS tool they count as objects and, "
                      f"empty in both masks, score 1.0 each; renumber the objects 1..N", KmnrtWarning, stacklevel=2)
    j_values = np.zeros((num_objects, len(frame_names)))
    f_values = np.zeros((num_objects, len(frame_names)))
    for index, frame_name in enumerate(frame_names):
        gt = _read_ground_truth(sequence, frame_name)
        pred = predictions.read(sequence, frame_name)
        _check_prediction(sequence, frame_name, pred, gt, num_objects, first_name)
        for object_id in range(1, num_objects + 1):
            pred_mask = pred == object_id
            gt_mask = gt == object_id
            j_values[object_id - 1, index] = region_similarity(pred_mask, gt_mask)
            f_values[object_id - 1, index] = contour_accuracy(pred_mask, gt_mask, bound_th)
    return [
        ObjectScores.from_series(sequence.name, k, frame_names, j_values[k - 1], f_values[k - 1])
        for k in range(1, num_objects + 1)
    ]


def evaluate(
    sequences: Iterable[Sequence],
    predictions: PredictionSource,
    *,
    bound_th: float = DEFAULT_BOUND_TH,
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate already-resolved ground-truth ``sequences`` against ``predictions``.

    Every sequence's predictions are checked for presence before any scoring starts, so a missing file
    is reported at once. ``progress`` shows a bar over sequences on a terminal (stderr).
    """
    sequences = list(sequences)
    if not sequences:
        raise UserInputError("nothing to evaluate: no ground-truth sequences were given")
    for sequence in sequences:
        predictions.check(sequence, scored_frames(sequence))
    objects: list[ObjectScores] = []
    bar = tqdm(sequences, desc="eval", unit="seq", disable=None if progress else True)
    for sequence in bar:
        bar.set_postfix_str(sequence.name, refresh=False)
        objects.extend(evaluate_sequence(sequence, predictions, bound_th))
    return EvaluationResult(
        objects=tuple(objects),
        global_scores=GlobalScores.from_objects(objects),
        sequences=tuple(sequence.name for sequence in sequences),
        bound_th=bound_th,
    )


def evaluate_folders(
    gt_root: str | os.PathLike[str],
    pred_root: str | os.PathLike[str],
    sequence_names: list[str] | tuple[str, ...] | None = None,
    *,
    bound_th: float = DEFAULT_BOUND_TH,
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate the ground truth under ``gt_root`` (any layout ``find_sequences`` accepts) against the
    predictions in ``pred_root/<sequence>/<frame>.png``."""
    sequences = find_sequences(gt_root, sequence_names)
    return evaluate(sequences, PredictionFolder(pred_root), bound_th=bound_th, progress=progress)


def _read_ground_truth(sequence: Sequence, frame_name: str) -> np.ndarray:
    labels = read_annotation(sequence, frame_name)
    if (labels == DAVIS_VOID).any():
        labels = np.where(labels == DAVIS_VOID, 0, labels).astype(np.uint8)  # void counts as background
    return labels


def _check_prediction(
    sequence: Sequence, frame_name: str, pred: np.ndarray, gt: np.ndarray, num_objects: int, first_name: str
) -> None:
    if pred.shape != gt.shape:
        raise UserInputError(
            f"sequence {sequence.name}: prediction {frame_name}.png is {pred.shape[1]}x{pred.shape[0]} "
            f"(width x height) but its ground truth is {gt.shape[1]}x{gt.shape[0]}; write predictions at the "
            "annotation size (upsample the scores before the argmax, never resize label maps)"
        )
    if pred.max(initial=0) > num_objects:
        extra = ", ".join(str(int(value)) for value in np.unique(pred[pred > num_objects]))
        raise UserInputError(
            f"sequence {sequence.name}: prediction {frame_name}.png holds object id(s) {extra}, but the first "
            f"ground-truth frame {first_name}.png defines only objects 1..{num_objects}; predicted id k is "
            f"scored against ground-truth id k, so ids above {num_objects} are not allowed"
        )
