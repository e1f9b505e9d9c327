"""Real frames and first-frame masks for the benchmarks (never zeros: the read's argmax and the decoder's work
depend on what the network sees, and zeros would also hide the cost of frame conversion).

The default source is a DAVIS sequence of the shared test data (``<repo>/../shared/data/vos``). A benchmark needs
more frames than a short clip has (warm-up + timed frames + the frames that fill the memory to T), so frames are
replayed back and forth (0, 1, ..., L-1, L-2, ..., 1, 0, 1, ...): consecutive frames stay consecutive in time.

Object masks: the first annotation's objects are kept (relabelled 1..k); when fewer than N exist, the largest
object is split in two at its median column until there are N. A frame folder or video without annotation gets a
centred box (half the frame) split the same way. The per-frame cost of KMN depends on N, T and the input size, not
on the masks' shapes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kmnrt.errors import UserInputError
from kmnrt.inputs import mask_ids

DEFAULT_SEQUENCE = "davis2016_bmx-trees"  # the longest shared sequence (80 frames)
MAX_LOADED_FRAMES = 160


def shared_vos_candidates() -> list[Path]:
    """Where ``../shared/data/vos`` may be: next to the working directory or next to this repository."""
    repo = Path(__file__).resolve().parents[1]
    return [Path.cwd().parent / "shared" / "data" / "vos", repo.parent / "shared" / "data" / "vos"]


def default_input() -> Path:
    for root in shared_vos_candidates():
        if (root / DEFAULT_SEQUENCE).is_dir():
            return root / DEFAULT_SEQUENCE
    raise UserInputError(f"no default frames: {DEFAULT_SEQUENCE} was not found in "
                         f"{' or '.join(str(p) for p in shared_vos_candidates())}; give --input VIDEO|FRAMES_DIR|"
                         f"SEQUENCE (a DAVIS sequence folder with JPEGImages/ and Annotations/)")


@dataclass(frozen=True)
class BenchInput:
    """Frames ([H, W, 3] uint8 RGB, one size) and the first frame's index mask."""

    source: str
    frames: list[np.ndarray]
    first_mask: np.ndarray
    mask_origin: str

    @property
    def size(self) -> tuple[int, int]:
        return self.frames[0].shape[0], self.frames[0].shape[1]

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` of the endless back-and-forth replay."""
        count = len(self.frames)
        if count == 1:
            return self.frames[0]
        period = 2 * (count - 1)
        position = index % period
        return self.frames[position if position < count else period - position]

    def object_mask(self, objects: int) -> np.ndarray:
        """The first mask with exactly ``objects`` objects, ids 1..objects."""
        return mask_with_objects(self.first_mask, objects)

    def describe(self) -> dict:
        return {"source": self.source, "frames_loaded": len(self.frames), "frame_size": list(self.size),
                "masks": self.mask_origin, "replay": "back and forth"}


def load_input(path: str | Path | None, needed_frames: int) -> BenchInput:
    """Frames for ``needed_frames`` steps (at most :data:`MAX_LOADED_FRAMES` are loaded; the rest are replayed)."""
    from kmnrt.data.frames import open_frames

    path = Path(path) if path is not None else default_input()
    limit = max(2, min(needed_frames, MAX_LOADED_FRAMES))
    if path.is_dir() and ((path / "JPEGImages").is_dir() or any((child / "JPEGImages").is_dir()
                                                                 for child in path.iterdir())):
        return _load_sequence(path, limit)  # a sequence folder, a DAVIS tree or a folder of sequence folders
    source = open_frames(path, limit)
    frames = [frame for _, frame in source]
    if not frames:
        raise UserInputError(f"{path} holds no frames")
    return BenchInput(str(path), frames, centre_box(frames[0].shape[:2]), "centre box (no annotation given)")


def _load_sequence(folder: Path, limit: int) -> BenchInput:
    from kmnrt.data.davis import find_sequences, open_sequence_frames, read_annotation
    from kmnrt.data.palette import without_void

    sequences = find_sequences(folder)
    sequence, source = sequences[0], str(folder)
    if len(sequences) > 1:  # the run measures one video: say which, in the terminal and in the results
        print(f"--input {folder} holds {len(sequences)} sequences; benchmarking the first, {sequence.name}",
              file=sys.stderr)
        source = f"{folder} (sequence {sequence.name})"
    frames = [frame for _, frame in open_sequence_frames(sequence, limit)]
    if not frames:
        raise UserInputError(f"sequence {source} holds no frames in JPEGImages/")
    first = sequence.frame_names[0]
    if first in sequence.annotation_names:
        mask = without_void(read_annotation(sequence, first))[0]  # as every tracking command reads masks
        if mask.shape != frames[0].shape[:2]:
            raise UserInputError(f"annotation of frame {first} in {source} is {mask.shape[1]}x{mask.shape[0]}, "
                                 f"the frames are {frames[0].shape[1]}x{frames[0].shape[0]}")
        if mask.any():
            return BenchInput(source, frames, mask, f"annotation {sequence.annotation_path(first)}")
    return BenchInput(source, frames, centre_box(frames[0].shape[:2]),
                      "centre box (the sequence has no first-frame annotation)")


def centre_box(size: tuple[int, int]) -> np.ndarray:
    height, width = size
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4: height - height // 4, width // 4: width - width // 4] = 1
    return mask


def mask_with_objects(mask: np.ndarray, objects: int) -> np.ndarray:
    """Relabel ``mask``'s objects to 1..k, keep the first ``objects`` of them, and split the largest one at its
    median column while there are fewer."""
    if objects < 1:
        raise UserInputError(f"the number of objects must be at least 1, got {objects}")
    ids = mask_ids(mask)
    if not ids:
        raise UserInputError("the first mask has no object (every pixel is 0)")
    out = np.zeros(mask.shape, np.uint8)
    for new, old in enumerate(ids[:objects], start=1):
        out[mask == old] = new
    count = min(len(ids), objects)
    while count < objects:
        sizes = [(int((out == i).sum()), i) for i in range(1, count + 1)]
        pixels, largest = max(sizes)
        if pixels < 2:
            raise UserInputError(f"cannot make {objects} objects from the first mask: its objects are too small")
        ys, xs = np.nonzero(out == largest)
        cut = np.median(xs)
        right = xs > cut if (xs > cut).any() else xs >= cut
        if right.all():  # one column wide: split by rows instead
            right = ys > np.median(ys)
        count += 1
        out[ys[right], xs[right]] = count
    return out
