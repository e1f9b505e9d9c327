"""Running a tracker over a dataset's sequences, for ``kmnrt eval --bundle B --dataset ROOT`` (run and score).

Each sequence starts from its first annotated frame's mask (DAVIS semi-supervised protocol) and is tracked through
all its frames. The masks are kept in memory PNG-compressed (DAVIS val at 480p is ~2000 masks: ~30 MB instead of
~800 MB raw) and, if asked, also written as palette PNGs ``out/<sequence>/<frame>.png``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence as Sequences
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from tqdm import tqdm

from kmnrt.errors import UserInputError

if TYPE_CHECKING:
    from kmnrt.data.davis import Sequence
    from kmnrt.runtime.tracker import Tracker


class InMemoryPredictions:
    """Predicted index masks by sequence and frame name; a ``kmnrt.evaluation.davis.PredictionSource``."""

    def __init__(self) -> None:
        self._masks: dict[tuple[str, str], bytes] = {}

    def add(self, sequence: str, frame_name: str, mask: np.ndarray) -> None:
        ok, encoded = cv2.imencode(".png", mask)
        if not ok:
            raise RuntimeError(f"OpenCV could not PNG-encode the mask of {sequence}/{frame_name}")
        self._masks[(sequence, frame_name)] = encoded.tobytes()

    def __len__(self) -> int:
        return len(self._masks)

    def check(self, sequence: Sequence, frame_names: tuple[str, ...]) -> None:
        missing = [name for name in frame_names if (sequence.name, name) not in self._masks]
        if missing:
            raise UserInputError(f"sequence {sequence.name}: no prediction for annotated frame(s) "
                                 f"{', '.join(missing[:5])}; its frames folder lacks frames the annotations have")

    def read(self, sequence: Sequence, frame_name: str) -> np.ndarray:
        data = np.frombuffer(self._masks[(sequence.name, frame_name)], dtype=np.uint8)
        return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)


def run_dataset(tracker: Tracker, sequences: Sequences[Sequence], out: str | os.PathLike | None = None,
                progress: bool = True) -> InMemoryPredictions:
    """Track every sequence from its first annotation; return the masks (and write them under ``out``)."""
    from kmnrt.data.davis import open_sequence_frames, read_annotation
    from kmnrt.data.palette import DAVIS_VOID, write_label_png

    predictions = InMemoryPredictions()
    total = sum(len(s.frame_names) for s in sequences)
    bar = tqdm(total=total, desc="tracking", unit="frame", file=sys.stderr, disable=None if progress else True)
    with bar:
        for sequence in sequences:
            if not sequence.annotation_names:
                raise UserInputError(f"sequence {sequence.name} has no annotation to start from")
            first_name = sequence.annotation_names[0]
            frames = open_sequence_frames(sequence)
            if first_name not in frames.names:
                raise UserInputError(f"sequence {sequence.name}: its first annotation {first_name}.png has no frame "
                                     f"of that name in {sequence.frames_dir}")
            state = None
            bar.set_postfix_str(sequence.name, refresh=False)
            try:
                for name, frame in frames:
                    if state is None and name != first_name:
                        bar.update(1)
                        continue  # frames before the first annotation are not tracked
                    if state is None:
                        mask = read_annotation(sequence, name)
                        # every 255 is void, as the evaluation reads the ground truth it is scored against
                        mask = np.where(mask == DAVIS_VOID, 0, mask).astype(np.uint8)
                        state = tracker.new_state()
                        labels = tracker.add_objects(state, frame, mask, keep_probs=False).mask
                    else:
                        labels = tracker.step(state, frame, keep_probs=False).mask
                    predictions.add(sequence.name, name, labels)
                    if out is not None:
                        write_label_png(Path(out) / sequence.name / f"{name}.png", labels)
                    bar.update(1)
            except UserInputError as exc:  # the runtime's messages know the frame, not the sequence
                raise UserInputError(f"sequence {sequence.name}: {exc}") from None
    return predictions
