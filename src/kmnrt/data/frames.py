"""Video frames as ``[H, W, 3]`` uint8 RGB arrays, from a folder of images or from a video file.

:func:`open_frames` picks the source by path type. Every source yields ``(name, frame)`` pairs, where
``name`` is the frame's stem ("00000"), the name its mask PNG gets. All frames of one source must have
the size of the first one.
"""

from __future__ import annotations

import os
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from kmnrt.errors import KmnrtWarning, UserInputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
"""Suffixes (lower case) that count as frames in a folder."""


def natural_sort_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """Sort key that orders embedded numbers by value: "frame2" < "frame10" (plain sorting says otherwise)."""
    # re.split with a group alternates text, number, text, ...; so position i always holds the same type.
    parts = re.split(r"(\d+)", name)
    return tuple(int(part) if index % 2 else part.casefold() for index, part in enumerate(parts)), name


def read_image(path: str | os.PathLike[str], orientation: bool = True) -> np.ndarray:
    """Read an image file as ``[H, W, 3]`` uint8 RGB.

    Grayscale is repeated over three channels, alpha is dropped, 16-bit is scaled to 8-bit, and the EXIF
    orientation of photos is applied (OpenCV ``IMREAD_COLOR``), unless ``orientation`` is False: then the pixels
    come as stored.

    Raises:
        UserInputError: the file is missing or cannot be decoded as an image.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # not cv2.imread: it fails on non-ASCII paths on Windows
    except FileNotFoundError:
        raise UserInputError(f"image {path} does not exist") from None
    except OSError as exc:
        raise UserInputError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    flags = cv2.IMREAD_COLOR if orientation else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    frame = cv2.imdecode(data, flags) if data.size else None
    if frame is None:
        raise UserInputError(
            f"cannot decode image {path}: the file is empty, damaged or not an image; "
            "replace it or remove it from the folder"
        )
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


class FrameSource(ABC):
    """A sequence of same-size RGB frames with names.

    Attributes:
        path: the folder or video file the frames come from.
        names: frame stems in playback order, e.g. ``["00000", "00001", ...]``.
        cut: whether ``max_frames`` left frames out, so that ``names`` is not the whole video.
    """

    path: Path
    names: list[str]
    cut: bool = False  # max_frames left frames out: ``names`` is not the whole video

    def __len__(self) -> int:
        return len(self.names)

    @property
    @abstractmethod
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the first frame; every frame has this size."""

    @abstractmethod
    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(name, frame)`` with ``frame`` ``[H, W, 3]`` uint8 RGB, in order."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {len(self)} frames)"

    def _check_size(self, frame: np.ndarray, what: str) -> None:
        height, width = self.size
        if frame.shape[:2] != (height, width):
            raise UserInputError(
                f"{what} is {frame.shape[1]}x{frame.shape[0]} (width x height) but the first frame of "
                f"{self.path} is {width}x{height}; all frames of a video must have the same size"
            )


class ImageFolderSource(FrameSource):
    """Frames stored as image files in one folder, in natural order of their names (2 before 10)."""

    def __init__(self, folder: str | os.PathLike[str], max_frames: int | None = None) -> None:
        self.path = Path(folder)
        if not self.path.is_dir():
            raise UserInputError(f"frame folder {self.path} does not exist or is not a folder")
        files = sorted(
            (
                entry
                for entry in self.path.iterdir()
                # not is_file(): a link to a missing file must be reported when its frame comes, not dropped
                if entry.suffix.lower() in IMAGE_EXTENSIONS and not entry.name.startswith(".") and not entry.is_dir()
            ),
            key=lambda entry: natural_sort_key(entry.name),
        )
        if not files:
            hint = ""
            if (self.path / "JPEGImages").is_dir():
                hint = f" (did you mean {self.path / 'JPEGImages'}?)"
            extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise UserInputError(f"frame folder {self.path} holds no images ({extensions}){hint}")
        seen: dict[str, Path] = {}
        for file in files:
            if file.stem in seen:
                raise UserInputError(
                    f"frame folder {self.path} holds both {seen[file.stem].name} and {file.name}; "
                    "frame names must be unique, remove one of them"
                )
            seen[file.stem] = file
        self.paths: list[Path] = files[: _check_max_frames(max_frames)]
        self.cut = len(self.paths) < len(files)
        self.names = [file.stem for file in self.paths]

    @cached_property
    def _first_frame_size(self) -> tuple[int, int]:
        height, width = read_image(self.paths[0]).shape[:2]
        return height, width

    @property
    def size(self) -> tuple[int, int]:
        return self._first_frame_size

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, file in zip(self.names, self.paths):
            frame = read_image(file)
            self._check_size(frame, f"frame {file}")
            yield name, frame


class VideoFileSource(FrameSource):
    """Frames decoded from a video file with OpenCV; names are ``00000``, ``00001``, ...

    The frame count comes from the container (``CAP_PROP_FRAME_COUNT``); when it is unknown the file is
    decoded once at opening to count. A decoder simply stops at damaged data, so a video that ends before
    its declared count raises :class:`UserInputError` naming the first missing frame, after the frames
    before it have been yielded. A video that holds more frames than it declares is read up to the declared
    count (callers size their work by it), with a warning as the last of them is read: decoding the whole file at
    opening to count would double the decoding of every well-formed video.
    """

    def __init__(self, path: str | os.PathLike[str], max_frames: int | None = None) -> None:
        self.path = Path(path)
        limit = _check_max_frames(max_frames)
        capture = self._open()
        try:
            self.declared_frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            ok, first = capture.read()
            if not ok or first is None:
                raise UserInputError(f"video {self.path} holds no frame that OpenCV can decode")
            self._size: tuple[int, int] = (first.shape[0], first.shape[1])
            count = self.declared_frame_count
            if count <= 0:  # some containers do not say; count by decoding
                count = 1
                while capture.grab():
                    count += 1
                self.declared_frame_count = count
        finally:
            capture.release()
        self.names = [f"{index:05d}" for index in range(count if limit is None else min(count, limit))]
        self.cut = len(self.names) < count

    def _open(self) -> cv2.VideoCapture:
        if not self.path.is_file():
            raise UserInputError(f"video {self.path} does not exist")
        try:  # OpenCV says only that it could not open the file; say why when the reason is plain
            self.path.open("rb").close()
        except OSError as exc:
            raise UserInputError(f"cannot read video {self.path}: {exc.strerror or exc}") from None
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            capture.release()
            raise UserInputError(
                f"cannot open video {self.path}: OpenCV could not read it (unknown container or codec, or a "
                "damaged file); re-encode it (e.g. to H.264 .mp4) or extract its frames to a folder"
            )
        return capture

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        capture = self._open()
        try:
            for index, name in enumerate(self.names):
                ok, frame = capture.read()
                if not ok or frame is None:
                    raise UserInputError(
                        f"frame {index} of video {self.path} could not be decoded: the file declares "
                        f"{self.declared_frame_count} frames but decoding stopped after {index}; the file is "
                        "truncated or damaged, re-encode it or use only its first frames"
                    )
                if frame.ndim == 2:
                    frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
                else:
                    frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                self._check_size(frame, f"frame {index} of video {self.path}")
                # Checked before the last frame is handed out: callers that count frames stop asking after it.
                # (Not when max_frames cut the video short: more frames are expected then.)
                last_declared = index + 1 == self.declared_frame_count
                if last_declared and capture.grab():
                    warnings.warn(f"video {self.path} holds more frames than the {len(self.names)} it declares; "
                                  f"only those are read. Re-encode it (e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`) or "
                                  f"extract its frames to a folder to read them all", KmnrtWarning, stacklevel=2)
                yield name, frame
        finally:
            capture.release()


def open_frames(path: str | os.PathLike[str], max_frames: int | None = None) -> FrameSource:
    """Open a folder of images or a video file as a :class:`FrameSource` of at most ``max_frames`` frames.

    Raises:
        UserInputError: the path does not exist, is a single image, or holds no readable frames.
    """
    path = Path(path)
    if path.is_dir():
        _refuse_mask_folder(path)
        return ImageFolderSource(path, max_frames)
    if not path.exists():
        raise UserInputError(f"{path} does not exist; give a folder of frames or a video file")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        _refuse_mask_folder(path.parent)  # a mask given as a frame: name the frames, not the masks' folder
        raise UserInputError(
            f"{path} is a single image; give the folder that holds the frames ({path.parent}) or a video file"
        )
    return VideoFileSource(path, max_frames)


def _refuse_mask_folder(path: Path) -> None:
    """A DAVIS/YouTube-VOS mask folder (``Annotations/``, ``Annotations/<seq>``, ``Annotations/480p/<seq>``) given
    as frames would be read as images, palette colours and all, and tracked or timed without complaint. Frames
    (JPEGs) in a folder of that name are frames."""
    parts = path.parts if "Annotations" in path.parts[-3:] else path.resolve().parts  # "." may be one
    if "Annotations" not in parts[-3:]:
        return
    try:
        if any(child.suffix.lower() in (".jpg", ".jpeg") for child in path.iterdir()):
            return
    except OSError:  # unreadable: the frame source says so
        return
    index = len(parts) - 1 - parts[::-1].index("Annotations")
    frames = Path(*parts[:index], "JPEGImages", *parts[index + 1:])
    if not frames.is_dir():
        hint = " (JPEGImages/<sequence> in DAVIS)"
    elif any(child.is_dir() for child in frames.iterdir()):  # the tree's root or a resolution level
        hint = f" (a sequence's folder in {frames})"
    else:
        hint = f" ({frames})"
    raise UserInputError(f"{path} is an Annotations folder, the masks; give the frames instead{hint}")


def _check_max_frames(max_frames: int | None) -> int | None:
    if max_frames is not None and max_frames < 1:
        raise UserInputError(f"max_frames (--max-frames) must be at least 1, got {max_frames}")
    return max_frames
