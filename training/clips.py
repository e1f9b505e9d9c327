"""Training clips (three frames, as STM, unless asked for more): synthesised from one image (STM's static
recipe), from a procedural scene whose shapes move on their own, or cut from a video; plus the object selection
every clip goes through."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from kmnrt.training.augment import affine_matrix, colour_jitter, maybe_flip, random_affine, warp_pair
from kmnrt.training.config import AffineRange, HideAndSeekConfig
from kmnrt.training.hide_and_seek import hide_and_seek
from kmnrt.training.synthetic import Scene, compose, render

CLIP_LENGTH = 3
MIN_OBJECT_PIXELS = 16  # an object smaller than this in the first frame is not worth tracking


@dataclass
class Clip:
    """frames [T, 3, S, S] float32 RGB in [0, 1]; labels [T, S, S] int64 with ids 0..num_objects, every id
    present in frame 0."""

    frames: Tensor
    labels: Tensor
    num_objects: int
    forget: Tensor | None = None  # [T, S, S] bool: object pixels moved to background when frame t is memorised


def select_objects(rng: np.random.Generator, masks: list[np.ndarray], max_objects: int) -> list[np.ndarray] | None:
    """Keep up to ``max_objects`` random objects visible in the first frame, renumbered 1..N in every frame; all
    other ids (objects absent from frame 0, DAVIS void 255) become background. None when frame 0 has no object."""
    ids, counts = np.unique(masks[0], return_counts=True)
    present = [int(i) for i, c in zip(ids, counts) if i not in (0, 255) and c >= MIN_OBJECT_PIXELS]
    if not present:
        return None
    chosen = rng.permutation(present)[:max_objects]
    lookup = np.zeros(256, np.uint8)
    lookup[chosen] = np.arange(1, len(chosen) + 1)
    return [lookup[mask] for mask in masks]


def finish_clip(rng: np.random.Generator, frames: list[np.ndarray], masks: list[np.ndarray], max_objects: int,
                hide: HideAndSeekConfig | None = None, hide_probability: float = 0.0,
                memory_forget: float = 0.0) -> Clip | None:
    """Hide-and-Seek per frame (when ``hide`` is enabled), object selection, the blocks to forget in memory
    (:func:`forget_blocks`, when ``memory_forget`` > 0), tensors. None: no object left."""
    if hide is not None and hide.enabled and hide_probability > 0:
        hidden = [hide_and_seek(rng, f, m, hide_probability, hide.grid) for f, m in zip(frames, masks)]
        frames, masks = [h[0] for h in hidden], [h[1] for h in hidden]
    selected = select_objects(rng, masks, max_objects)
    if selected is None:
        return None
    images = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255.0)
    labels = torch.from_numpy(np.stack(selected)).long()
    forget = torch.from_numpy(forget_blocks(rng, selected, memory_forget)) if memory_forget > 0 else None
    return Clip(images.contiguous(), labels, int(labels[0].max()), forget)


def forget_blocks(rng: np.random.Generator, labels: list[np.ndarray], probability: float) -> np.ndarray:
    """[T, S, S] bool: in every frame the network memorises from its own prediction (all but the first and the
    last), each object, with ``probability``, gets a random block of its bounding box (30-70 % of its width
    and of its height) marked; the training step moves the predicted object probability there to background
    before memorising. The next frame must then be segmented whole from a memory that lost part of the object,
    as happens when tracking drifts (an object eroding over a few frames); the first frame stays intact."""
    forget = np.zeros((len(labels), *labels[0].shape), bool)
    for t in range(1, len(labels) - 1):
        for object_id in np.unique(labels[t]):
            if object_id == 0 or rng.random() >= probability:
                continue
            rows, cols = np.nonzero(labels[t] == object_id)
            top, left, height, width = rows.min(), cols.min(), np.ptp(rows) + 1, np.ptp(cols) + 1
            block_h, block_w = (max(1, round(side * rng.uniform(0.3, 0.7))) for side in (height, width))
            y, x = top + rng.integers(0, height - block_h + 1), left + rng.integers(0, width - block_w + 1)
            forget[t, y:y + block_h, x:x + block_w] |= labels[t][y:y + block_h, x:x + block_w] == object_id
    return forget


def static_clip(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, size: int,
                limits: AffineRange, length: int = CLIP_LENGTH) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """STM's static-image clip: ``length`` (3) independent random affines of one image, colour jitter per frame and one
    left-right flip decision for the clip -> frames [S, S, 3] uint8 and masks [S, S] uint8."""
    frames, masks = [], []
    for _ in range(length):
        matrix = random_affine(rng, image.shape[:2], size, limits, zoom=(1.0, 1.25))
        frame, labels = warp_pair(image, mask, matrix, size)
        frames.append(colour_jitter(rng, frame, limits.colour_jitter))
        masks.append(labels)
    return maybe_flip(rng, frames, masks)


def motion_clip(rng: np.random.Generator, scene: Scene, size: int,
                limits: AffineRange, length: int = CLIP_LENGTH) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A synthetic video: the camera (background) and every shape follow their own constant-velocity affine
    motion (translation, rotation, scale and shear change per frame, so shapes also deform and re-occlude)."""
    canvas = scene.background.shape[:2]
    camera = random_affine(rng, canvas, size, limits, zoom=(1.0, 1.25))
    camera_step = _random_velocity(rng, limits, size, fraction=0.3)
    layer_steps = [_random_velocity(rng, limits, size, fraction=1.0) for _ in scene.layers]
    centres = [_centroid(layer.alpha) for layer in scene.layers]
    jitter = [rng.uniform(-1, 1, 4) * limits.colour_jitter / 3 for _ in range(length)]
    frames, masks = [], []
    for t in range(length):
        background = compose(camera, then=_step_about((size / 2, size / 2), camera_step, t))
        layer_matrices = [_step_about(centre, step, t) for centre, step in zip(centres, layer_steps)]
        frame, labels = render(scene, (size, size), background, layer_matrices)
        frames.append(_mild_jitter(frame, jitter[t]))
        masks.append(labels)
    return maybe_flip(rng, frames, masks)


def _random_velocity(rng: np.random.Generator, limits: AffineRange, size: int, fraction: float) -> np.ndarray:
    """Per-frame change: (dx, dy) in pixels, rotation and shear in degrees, log-scale."""
    shift = rng.normal(0.0, limits.translate * size * 0.6, 2) * fraction
    rotation = rng.uniform(-1, 1) * limits.rotation_deg * 0.5 * fraction
    shear = rng.uniform(-1, 1) * limits.shear_deg * 0.5 * fraction
    log_scale = rng.uniform(-1, 1) * np.log(limits.scale[1]) * 0.5 * fraction
    return np.array([shift[0], shift[1], rotation, shear, log_scale])


def _step_about(centre: tuple[float, float], velocity: np.ndarray, t: int) -> np.ndarray:
    """The affine after ``t`` frames of ``velocity``, about ``centre`` (x, y), in the layer's own coordinates."""
    dx, dy, rotation, shear, log_scale = velocity * t
    return affine_matrix(centre, (centre[0] + dx, centre[1] + dy), float(np.exp(log_scale)), rotation, shear)


def _centroid(alpha: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(alpha)
    return (float(xs.mean()), float(ys.mean())) if xs.size else (alpha.shape[1] / 2, alpha.shape[0] / 2)


def _mild_jitter(frame: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Small per-frame brightness/colour drift (lighting changes), so frames never match pixel for pixel."""
    values = frame.astype(np.float32) * (1.0 + offsets[0]) + offsets[1:] * 255
    return np.clip(values, 0, 255).astype(np.uint8)
