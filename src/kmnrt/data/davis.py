"""Finding video sequences, their frames and their annotation PNGs in a dataset folder.

:func:`find_sequences` understands three layouts:

1. a DAVIS-style tree: ``ROOT/JPEGImages/[480p/]<seq>/*.jpg`` and ``ROOT/Annotations/[480p/]<seq>/*.png``;
2. a single sequence: ``ROOT/JPEGImages/*.jpg`` and ``ROOT/Annotations/*.png`` (sequence name = ROOT's
   name), or a folder of such sequence folders;
3. a plain folder of sequence folders of PNGs, ``ROOT/<seq>/*.png`` (ground-truth or prediction roots),
   or a single such folder of PNGs.

The same :class:`Sequence` records serve evaluation (annotations only) and tracking (frames plus the
first annotation).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kmnrt.data.frames import IMAGE_EXTENSIONS, ImageFolderSource, natural_sort_key
from kmnrt.data.palette import read_label_png
from kmnrt.errors import UserInputError

FRAMES_FOLDER = "JPEGImages"
ANNOTATIONS_FOLDER = "Annotations"
RESOLUTION_FOLDERS = ("480p", "Full-Resolution")
"""Resolution level folders of the DAVIS tree; the benchmark is scored at 480p."""

_LAYOUTS_HELP = (
    "expected a DAVIS tree (JPEGImages/[480p/]<seq>/ and Annotations/[480p/]<seq>/), a sequence folder "
    "(JPEGImages/ and Annotations/), or a folder of <seq>/ folders of PNG masks"
)


@dataclass(frozen=True)
class Sequence:
    """One video of a dataset.

    Attributes:
        name: sequence name (its folder name), e.g. ``"blackswan"`` or ``"davis2016_blackswan"``.
        frames_dir: folder of its frame images, or ``None`` when the dataset has no frames (GT/prediction roots).
        annotations_dir: folder of its mask PNGs, or ``None`` when it has no annotations.
        frame_names: stems of the frame images in natural order, e.g. ``("00000", "00001", ...)``.
        annotation_names: stems of the mask PNGs in natural order (DAVIS: every frame; YouTube-VOS: some).
    """

    name: str
    frames_dir: Path | None
    annotations_dir: Path | None
    frame_names: tuple[str, ...] = ()
    annotation_names: tuple[str, ...] = ()

    def annotation_path(self, name: str) -> Path:
        """Path of the mask PNG of frame ``name``."""
        if self.annotations_dir is None:
            raise UserInputError(f"sequence {self.name} has no annotation folder")
        path = self.annotations_dir / f"{name}.png"
        if not path.is_file() and (self.annotations_dir / f"{name}.PNG").is_file():
            return self.annotations_dir / f"{name}.PNG"
        return path


def find_sequences(
    root: str | os.PathLike[str],
    names: list[str] | tuple[str, ...] | str | None = None,
    *,
    resolution: str = "480p",
) -> list[Sequence]:
    """List the sequences under ``root`` (any layout of the module docstring), sorted by name.

    Args:
        root: dataset folder.
        names: keep only these sequences, in this order (one name may be given as a str); an unknown name is an
            error.
        resolution: resolution folder to use when the tree has them (``480p`` or ``Full-Resolution``).

    Raises:
        UserInputError: ``root`` is missing, holds no sequence, or lacks one of ``names``.
    """
    root = Path(root)
    if isinstance(names, str):  # not its letters
        names = [names]
    if not root.exists():
        raise UserInputError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise UserInputError(f"{root} is not a folder; {_LAYOUTS_HELP}")
    sequences = _discover(root, resolution)
    if not sequences:
        raise UserInputError(f"no sequences found in {root}: {_LAYOUTS_HELP}")
    if names is None:
        return sequences
    by_name = {sequence.name: sequence for sequence in sequences}
    missing = [name for name in names if name not in by_name]
    if missing:
        available = ", ".join(sorted(by_name, key=natural_sort_key)[:20])
        raise UserInputError(
            f"sequence(s) {', '.join(missing)} not found in {root}; available: {available}"
            + (" ..." if len(by_name) > 20 else "")
        )
    return [by_name[name] for name in dict.fromkeys(names)]


def read_annotation(sequence: Sequence, name: str) -> np.ndarray:
    """Read the mask of frame ``name`` of ``sequence`` as ``[H, W]`` uint8 ids (see ``read_label_png``)."""
    if name not in sequence.annotation_names:
        raise UserInputError(
            f"sequence {sequence.name} has no annotation for frame {name}"
            + (f" in {sequence.annotations_dir}" if sequence.annotations_dir else "")
        )
    return read_label_png(sequence.annotation_path(name))


def open_sequence_frames(sequence: Sequence, max_frames: int | None = None) -> ImageFolderSource:
    """The frames of ``sequence`` as a frame source (for running a tracker over a dataset)."""
    if sequence.frames_dir is None:
        raise UserInputError(
            f"sequence {sequence.name} has no frame folder; give a dataset with {FRAMES_FOLDER}/ folders"
        )
    return ImageFolderSource(sequence.frames_dir, max_frames)


def _discover(root: Path, resolution: str) -> list[Sequence]:
    frames_base = _level_folder(root / FRAMES_FOLDER, resolution)
    annotations_base = _level_folder(root / ANNOTATIONS_FOLDER, resolution)
    if frames_base or annotations_base:
        if _stems(frames_base, IMAGE_EXTENSIONS) or _stems(annotations_base, {".png"}):
            return [_make_sequence(root.name, frames_base, annotations_base)]
        return _tree_sequences(frames_base, annotations_base)
    if _stems(root, {".png"}):
        # A sequence's own Annotations/ folder given directly is named after the sequence, not "Annotations".
        name = root.resolve().parent.name if root.resolve().name == ANNOTATIONS_FOLDER else root.name
        return [_make_sequence(name, None, root)]
    sequences = []
    for folder in _subfolders(root):
        frames_dir = folder / FRAMES_FOLDER
        annotations_dir = folder / ANNOTATIONS_FOLDER
        if _stems(frames_dir, IMAGE_EXTENSIONS) or _stems(annotations_dir, {".png"}):
            sequences.append(_make_sequence(folder.name, _dir_or_none(frames_dir), _dir_or_none(annotations_dir)))
        elif _stems(folder, {".png"}):
            sequences.append(_make_sequence(folder.name, None, folder))
    return sequences


def _tree_sequences(frames_base: Path | None, annotations_base: Path | None) -> list[Sequence]:
    frame_folders = {folder.name: folder for folder in _subfolders(frames_base)}
    annotation_folders = {folder.name: folder for folder in _subfolders(annotations_base)}
    sequences = []
    for name in sorted(frame_folders.keys() | annotation_folders.keys(), key=natural_sort_key):
        sequence = _make_sequence(name, frame_folders.get(name), annotation_folders.get(name))
        if sequence.frame_names or sequence.annotation_names:
            sequences.append(sequence)
    return sequences


def _make_sequence(name: str, frames_dir: Path | None, annotations_dir: Path | None) -> Sequence:
    return Sequence(
        name=name,
        frames_dir=frames_dir,
        annotations_dir=annotations_dir,
        frame_names=_stems(frames_dir, IMAGE_EXTENSIONS),
        annotation_names=_stems(annotations_dir, {".png"}),
    )


def _level_folder(base: Path, resolution: str) -> Path | None:
    """``base/<resolution>`` if the tree has resolution folders, else ``base``; ``None`` if missing."""
    if not base.is_dir():
        return None
    if (base / resolution).is_dir():
        return base / resolution
    levels = [level for level in RESOLUTION_FOLDERS if (base / level).is_dir()]
    if levels:
        raise UserInputError(
            f"{base} has the resolution folder(s) {', '.join(levels)} but not {resolution}; "
            f"choose one of {', '.join(levels)}"
        )
    return base


def _dir_or_none(path: Path) -> Path | None:
    return path if path.is_dir() else None


def _subfolders(folder: Path | None) -> list[Path]:
    if folder is None:
        return []
    entries = [entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith((".", "__"))]
    return sorted(entries, key=lambda entry: natural_sort_key(entry.name))


def _stems(folder: Path | None, extensions: set[str] | frozenset[str]) -> tuple[str, ...]:
    """Stems of the files in ``folder`` with one of ``extensions`` (lower case), in natural order."""
    if folder is None or not folder.is_dir():
        return ()
    stems = {
        entry.stem
        for entry in folder.iterdir()
        if entry.suffix.lower() in extensions and not entry.name.startswith(".") and entry.is_file()
    }
    return tuple(sorted(stems, key=natural_sort_key))
