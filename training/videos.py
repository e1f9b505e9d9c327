"""Procedural videos with ground truth, written as a DAVIS-style tree that ``kmnrt train --stage main``,
``kmnrt track`` and ``kmnrt eval`` read like real data.

A video is one :class:`kmnrt.training.synthetic.Scene` (textured background, labelled shapes, unlabelled
distractors, in depth order) rendered frame by frame while every layer follows its own smooth motion: a sinusoidal
path (so shapes cross and re-occlude each other but stay near the view), a steady spin, and breathing scale and
shear (so they deform); the camera pans slowly over the background. Some distractors are *look-alikes*: they wear
an object's texture, so appearance alone does not say which shape is the object and the tracker must use where it
was. Every labelled object is visible in the first frame (the annotation the tracker starts from).

Everything is drawn from ``numpy.random.default_rng([seed, video_index])``: a seed fixes the whole tree, and
video ``i`` is the same whatever the number of videos.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from kmnrt.errors import UserInputError
from kmnrt.training.augment import affine_matrix
from kmnrt.training.config import SyntheticConfig
from kmnrt.training.synthetic import Layer, Scene, random_scene, render

MIN_VISIBLE_FRACTION = 0.004  # of the frame: every object must show at least this much in frame 0
MAX_SCENE_DRAWS = 100


@dataclass(frozen=True)
class VideoConfig:
    """Size and motion of the generated videos. Amplitudes are fractions of the frame's short side."""

    height: int = 144
    width: int = 256
    frames: int = 24
    min_objects: int = 1
    max_objects: int = 3
    max_distractors: int = 3
    lookalike_probability: float = 0.5  # a distractor copies an object's texture
    path_amplitude: float = 0.3    # sinusoidal path, per axis
    period_frames: tuple[float, float] = (16.0, 60.0)
    spin_deg: float = 4.0          # rotation per frame, at most
    scale_amplitude: float = 0.3   # log-scale breathing
    shear_deg: float = 12.0
    camera_amplitude: float = 0.08

    def __post_init__(self) -> None:
        if self.height < 32 or self.width < 32 or self.frames < 3:
            raise UserInputError(f"generated videos need at least 32x32 pixels (--width, --height) and 3 frames "
                                 f"(--frames), got {self.width}x{self.height}, {self.frames} frames")
        if not 1 <= self.min_objects <= self.max_objects <= 255:
            raise UserInputError(f"objects per video must satisfy 1 <= min_objects <= max_objects (--max-objects) "
                                 f"<= 255, the ids a mask PNG holds; got {self.min_objects} and {self.max_objects}")


@dataclass(frozen=True)
class _Motion:
    """One layer's path: x(t) = centre + amplitude * sin(omega t + phase) per axis, plus spin, scale, shear."""

    centre: tuple[float, float]
    amplitude: np.ndarray  # (ax, ay) pixels
    omega: np.ndarray      # (wx, wy) radians per frame
    phase: np.ndarray      # (px, py)
    spin: float            # degrees per frame
    scale: tuple[float, float, float]  # (log amplitude, omega, phase)
    shear: tuple[float, float, float]  # (degrees amplitude, omega, phase)

    def matrix(self, t: int) -> np.ndarray:
        """The layer's canvas -> frame affine at frame ``t``, relative to its pose in frame 0."""
        offset = self.amplitude * (np.sin(self.omega * t + self.phase) - np.sin(self.phase))
        log_scale = self.scale[0] * (np.sin(self.scale[1] * t + self.scale[2]) - np.sin(self.scale[2]))
        shear = self.shear[0] * (np.sin(self.shear[1] * t + self.shear[2]) - np.sin(self.shear[2]))
        target = (self.centre[0] + offset[0], self.centre[1] + offset[1])
        return affine_matrix(self.centre, target, float(np.exp(log_scale)), self.spin * t, float(shear))


def _random_motion(rng: np.random.Generator, centre: tuple[float, float], config: VideoConfig,
                   amplitude: float) -> _Motion:
    side = min(config.height, config.width)

    def omega(count: int) -> np.ndarray:
        return 2 * np.pi / rng.uniform(*config.period_frames, count)

    return _Motion(
        centre=centre,
        amplitude=rng.uniform(0.2, 1.0, 2) * amplitude * side,
        omega=omega(2),
        phase=rng.uniform(0, 2 * np.pi, 2),
        spin=float(rng.uniform(-1, 1) * config.spin_deg),
        scale=(float(rng.uniform(0, config.scale_amplitude)), float(omega(1)[0]), float(rng.uniform(0, 2 * np.pi))),
        shear=(float(rng.uniform(0, config.shear_deg)), float(omega(1)[0]), float(rng.uniform(0, 2 * np.pi))),
    )


def _add_lookalikes(rng: np.random.Generator, scene: Scene, probability: float) -> Scene:
    """Give some distractors the texture of a random object (slightly recoloured, as a sibling would be)."""
    objects = [layer for layer in scene.layers if layer.label]
    layers = []
    for layer in scene.layers:
        if layer.label == 0 and objects and rng.random() < probability:
            source = objects[int(rng.integers(len(objects)))].texture.astype(np.float32)
            tint = rng.uniform(-12, 12, 3).astype(np.float32)
            layer = Layer(np.clip(source + tint, 0, 255).astype(np.uint8), layer.alpha, 0)
        layers.append(layer)
    return Scene(scene.background, layers, scene.num_objects)


def _centroid(alpha: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(alpha)
    return float(xs.mean()), float(ys.mean())


def generate_video(rng: np.random.Generator, config: VideoConfig = VideoConfig()) -> tuple[np.ndarray, np.ndarray]:
    """One video -> frames [T, H, W, 3] uint8 RGB and index masks [T, H, W] uint8 (ids 1..N, 0 background)."""
    size = (config.height, config.width)
    shapes = SyntheticConfig(min_objects=config.min_objects, max_objects=config.max_objects,
                             max_distractors=config.max_distractors)
    min_visible = MIN_VISIBLE_FRACTION * config.height * config.width
    for _ in range(MAX_SCENE_DRAWS):
        scene = _add_lookalikes(rng, random_scene(rng, size, shapes), config.lookalike_probability)
        _, first_mask = render(scene, size)
        counts = np.bincount(first_mask.ravel(), minlength=scene.num_objects + 1)
        if (counts[1:scene.num_objects + 1] >= min_visible).all():
            break
    else:  # pragma: no cover - needs a pathological configuration (huge objects, tiny frames)
        raise UserInputError(f"could not draw a scene whose {config.max_objects} objects are all visible in "
                             f"{config.width}x{config.height} frames; use larger frames or fewer objects")
    motions = [_random_motion(rng, _centroid(layer.alpha), config, config.path_amplitude) for layer in scene.layers]
    camera = _random_motion(rng, (config.width / 2, config.height / 2), config, config.camera_amplitude)
    camera = _Motion(camera.centre, camera.amplitude, camera.omega, camera.phase, 0.0, (0.0, 0.0, 0.0),
                     (0.0, 0.0, 0.0))
    frames, masks = [], []
    for t in range(config.frames):
        image, mask = render(scene, size, camera.matrix(t), [motion.matrix(t) for motion in motions])
        frames.append(image)
        masks.append(mask)
    return np.stack(frames), np.stack(masks)


def write_video_dataset(out: str | os.PathLike[str], videos: int, seed: int = 0,
                        config: VideoConfig = VideoConfig(), prefix: str = "synthetic",
                        progress: bool = True) -> Path:
    """Write ``videos`` generated videos as ``out/JPEGImages/<prefix>-NNNN/00000.jpg`` and
    ``out/Annotations/<prefix>-NNNN/00000.png`` (DAVIS palette PNGs). The tree is built in a temporary folder
    next to ``out`` and renamed into place; an existing ``out`` is an error."""
    from tqdm import tqdm

    from kmnrt.data import write_label_png

    out = Path(out)
    if videos < 1:
        raise UserInputError(f"--videos must be at least 1, got {videos}")
    if out.exists():
        raise UserInputError(f"{out} already exists; remove it or choose another --out")
    ancestor = next(p for p in out.absolute().parents if p.exists())
    if not ancestor.is_dir():
        raise UserInputError(f"--out {out}: {ancestor} is a file, not a folder")
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")  # this process's own: nothing of anyone else's
    try:
        for index in tqdm(range(videos), desc=f"generate {out.name}", unit="video", file=sys.stderr,
                          disable=not progress):
            frames, masks = generate_video(np.random.default_rng([seed, index]), config)
            name = f"{prefix}-{index:04d}"
            (tmp / "JPEGImages" / name).mkdir(parents=True)
            for t, (frame, mask) in enumerate(zip(frames, masks)):
                cv2.imwrite(str(tmp / "JPEGImages" / name / f"{t:05d}.jpg"), frame[..., ::-1],
                            [cv2.IMWRITE_JPEG_QUALITY, 95])
                write_label_png(tmp / "Annotations" / name / f"{t:05d}.png", mask)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
