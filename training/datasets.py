"""Training data as map-style datasets: sample ``i`` of a run is drawn from a generator seeded by (seed, i).

So a run is reproducible, a resumed run sees exactly the samples it would have seen, and DataLoader workers need
no shared random state. Sample i belongs to iteration ``i // batch``, which sets the schedule-dependent parts:
the Hide-and-Seek probability (pre-training) and the max_skip curriculum (main training).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from kmnrt.errors import KmnrtWarning, UserInputError, a_few
from kmnrt.training.augment import random_resize_crop, maybe_flip
from kmnrt.training.clips import CLIP_LENGTH, Clip, finish_clip, motion_clip, static_clip
from kmnrt.training.config import SkipCurriculum, TrainConfig
from kmnrt.training.hide_and_seek import hide_probability
from kmnrt.training.synthetic import random_scene, render

MAX_ATTEMPTS = 50  # redraws when an augmentation leaves no object in the first frame, or a file is unusable


class UnusableTrainingFile(UserInputError):
    """An image or mask of the training data that cannot be read, or a pair of different sizes: the sample is
    drawn again, so that one damaged file among a hundred thousand does not end a run hours in."""


@dataclass(frozen=True)
class VideoSequence:
    """Frames and masks of one training video, in temporal order, restricted to frames that have both."""

    name: str
    frames: tuple[Path, ...]
    masks: tuple[Path, ...]


def find_image_pairs(root: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
    """Static-image data: ``root/JPEGImages/<name>.jpg`` with ``root/Annotations/<name>.png`` (index masks)."""
    root = Path(root)
    images_dir, masks_dir = root / "JPEGImages", root / "Annotations"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise UserInputError(f"image folder {root} needs JPEGImages/ (images) and Annotations/ (index-mask PNGs) "
                             "side by side; omit --data to pre-train on synthetic images")
    masks = {path.stem: path for path in masks_dir.glob("*.png")}
    images = [path for path in sorted(images_dir.iterdir()) if path.suffix.lower() in (".jpg", ".jpeg", ".png")]
    pairs = [(path, masks[path.stem]) for path in images if path.stem in masks]
    if not pairs:
        if any(path.is_dir() for path in images_dir.iterdir()):
            raise UserInputError(f"{images_dir} holds folders, as a video tree does (JPEGImages/<sequence>/); "
                                 "pre-training takes images (JPEGImages/<name>.jpg with Annotations/<name>.png): "
                                 "train on videos with --stage main")
        raise UserInputError(f"no image in {images_dir} has a mask of the same name in {masks_dir}")
    unmatched = [path.name for path in images if path.stem not in masks]
    orphans = sorted(set(masks) - {path.stem for path in images})
    if unmatched or orphans:  # a naming slip would otherwise shrink the data without a word
        left = []
        if unmatched:
            left.append(f"{len(unmatched)} image(s) without a mask of the same name ({a_few(unmatched, 3)})")
        if orphans:
            left.append(f"{len(orphans)} mask(s) without an image ({a_few((masks[n].name for n in orphans), 3)})")
        warnings.warn(f"{root}: {' and '.join(left)} are left out; training goes on with the {len(pairs)} pair(s)",
                      KmnrtWarning, stacklevel=2)
    return pairs


def find_video_sequences(root: str | os.PathLike[str], clip_frames: int = CLIP_LENGTH) -> list[VideoSequence]:
    """Main-training data: a DAVIS-style tree (see :func:`kmnrt.data.find_sequences`); sequences with fewer than
    ``clip_frames`` annotated frames are skipped."""
    from kmnrt.data import find_sequences, open_sequence_frames

    sequences, short = [], []
    for sequence in find_sequences(root):
        if sequence.frames_dir is None or sequence.annotations_dir is None:
            continue
        frames = {path.stem: path for path in open_sequence_frames(sequence).paths}
        names = [name for name in sequence.annotation_names if name in frames]
        if len(names) >= clip_frames:
            sequences.append(VideoSequence(sequence.name, tuple(frames[n] for n in names),
                                           tuple(sequence.annotation_path(n) for n in names)))
        else:
            short.append(sequence.name)
    if not sequences:
        raise UserInputError(f"no sequence in {root} has {clip_frames} or more frames with both an image "
                             "(JPEGImages/<seq>/) and a mask (Annotations/<seq>/); main training needs videos")
    if short:  # a --clip-frames above the data's videos would otherwise shrink the data without a word
        warnings.warn(f"{root}: {len(short)} sequence(s) with fewer than {clip_frames} annotated frames are left "
                      f"out ({a_few(short, 3)}); training goes on with {len(sequences)}", KmnrtWarning, stacklevel=2)
    return sequences


def read_training_pair(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An image (or frame) and its index mask, at one size. A photo's EXIF orientation is applied when that makes
    it fit its mask (today's browsers and annotation tools show photos turned), and ignored when the mask fits the
    pixels as stored (COCO was annotated in browsers that ignored it): either way the pair lines up. A square
    photo fits both ways and is turned."""
    from kmnrt.data import read_image, read_label_png
    from kmnrt.data.palette import without_void

    try:
        image, mask = read_image(image_path), without_void(read_label_png(mask_path))[0]  # void: no object
    except UserInputError as exc:
        raise UnusableTrainingFile(str(exc)) from None
    if image.shape[:2] != mask.shape:
        stored = read_image(image_path, orientation=False)
        if stored.shape[:2] != mask.shape:
            raise UnusableTrainingFile(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} is "
                                 f"{image.shape[1]}x{image.shape[0]}; they must have the same size")
        image = stored
    return image, mask


def max_skip_at(iteration: int, skip: SkipCurriculum, iterations: int) -> int:
    """The curriculum: ``start`` + ``step`` per ``every_iterations``, capped at ``end`` (a last, shorter step
    reaches an ``end`` that is not a multiple of ``step``)."""
    levels = max(1, -(-(skip.end - skip.start) // max(skip.step, 1)) + 1)
    every = skip.every_iterations or max(1, iterations // levels)
    return min(skip.end, skip.start + skip.step * (iteration // every))


class _IndexedClips(Dataset):
    def __init__(self, config: TrainConfig):
        self.config = config

    def __len__(self) -> int:
        return self.config.iterations * self.config.batch

    def __getitem__(self, index: int) -> Clip:
        rng = np.random.default_rng([self.config.seed, index])
        iteration = index // self.config.batch
        unusable: list[UnusableTrainingFile] = []
        for _ in range(MAX_ATTEMPTS):
            try:
                clip = self.draw(rng, iteration)
            except UnusableTrainingFile as exc:
                unusable.append(exc)
                continue
            if clip is not None:
                for exc in unusable:  # once per file and process (Python's default filter)
                    warnings.warn(f"training goes on without this file: {exc}", KmnrtWarning, stacklevel=2)
                return clip
        if unusable:  # nothing usable in many draws: the data, not one file, is at fault
            raise UserInputError(f"sample {index}: {len(unusable)} of {MAX_ATTEMPTS} draws hit an unusable file, "
                                 f"and no draw gave a clip; the last: {unusable[-1]}")
        raise UserInputError(f"sample {index}: no object survived the augmentation in {MAX_ATTEMPTS} attempts; "
                             "are the masks empty, or the objects tiny?")

    def draw(self, rng: np.random.Generator, iteration: int) -> Clip | None:
        raise NotImplementedError

    def describe(self) -> str:
        """What the clips are made from, for the log: "300 videos, 7200 annotated frames"."""
        raise NotImplementedError


class StaticClips(_IndexedClips):
    """Pre-training clips with Hide-and-Seek: procedural scenes (``pairs`` None) or the user's image/mask pairs."""

    def __init__(self, config: TrainConfig, pairs: list[tuple[Path, Path]] | None = None):
        super().__init__(config)
        self.pairs = pairs

    def describe(self) -> str:
        count = len(self.pairs or ())
        return "procedural images" if self.pairs is None else f"{count} image{'s' * (count != 1)} with masks"

    def draw(self, rng: np.random.Generator, iteration: int) -> Clip | None:
        config, size = self.config, self.config.size
        hide = config.hide_and_seek
        probability = hide_probability(iteration, hide.ramp_iterations or config.iterations, hide.max_probability)
        if self.pairs is None:
            scene = random_scene(rng, (size, size), config.synthetic)
            if rng.random() < config.synthetic.motion_fraction:
                frames, masks = motion_clip(rng, scene, size, config.augment, config.clip_frames)
            else:
                frames, masks = static_clip(rng, *render(scene, (size, size)), size, config.augment,
                                            config.clip_frames)
        else:
            image, mask = read_training_pair(*self.pairs[int(rng.integers(len(self.pairs)))])
            frames, masks = static_clip(rng, image, mask, size, config.augment, config.clip_frames)
        return finish_clip(rng, frames, masks, config.max_objects, hide, probability, config.memory_forget)


class VideoClips(_IndexedClips):
    """Main-training clips: ``clip_frames`` temporally ordered frames of one video, gaps uniform in [0, max_skip]."""

    def __init__(self, config: TrainConfig, sequences: list[VideoSequence]):
        super().__init__(config)
        self.sequences = sequences

    def describe(self) -> str:
        count, frames = len(self.sequences), sum(len(sequence.frames) for sequence in self.sequences)
        return f"{count} video{'s' * (count != 1)}, {frames} annotated frames"

    def frame_indices(self, rng: np.random.Generator, length: int, max_skip: int) -> list[int]:
        """``clip_frames`` ordered indices into a video of ``length`` frames; a gap of g skips g frames. When the
        gaps add up to more than the video holds, the span is cut to the video and the later frames are pushed
        back just enough to stay in order (for 3 frames: STM's draw)."""
        count = self.config.clip_frames
        gaps = rng.integers(0, max_skip + 1, count - 1)
        span = min(int(gaps.sum()) + count - 1, length - 1)
        start = int(rng.integers(0, length - span))
        steps = np.cumsum(gaps + 1)[:-1]
        middle = [start + min(int(step), span - (count - 1 - k)) for k, step in enumerate(steps, start=1)]
        return [start, *middle, start + span]

    def draw(self, rng: np.random.Generator, iteration: int) -> Clip | None:
        sequence = self.sequences[int(rng.integers(len(self.sequences)))]
        max_skip = max_skip_at(iteration, self.config.skip, self.config.iterations)
        indices = self.frame_indices(rng, len(sequence.frames), max_skip)
        frames, masks = map(list, zip(*(read_training_pair(sequence.frames[i], sequence.masks[i]) for i in indices)))
        frames, masks = random_resize_crop(rng, frames, masks, self.config.size, self.config.short_side)
        frames, masks = maybe_flip(rng, frames, masks)
        return finish_clip(rng, frames, masks, self.config.max_objects, memory_forget=self.config.memory_forget)
