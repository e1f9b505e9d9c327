"""Procedural images for static pre-training: textured backgrounds and textured shapes that occlude each other.

No image dataset (COCO, VOC) can be downloaded where this project is built, so pre-training draws its "images"
here. A :class:`Scene` is a background plus layers (back to front), each layer a texture and an alpha mask at
canvas size, labelled with an object id (1..N) or 0 for a distractor: an unlabelled shape that looks like an
object, so the network must tell objects apart by appearance, not by "anything that is not background".
:func:`render` composes a scene through optional per-layer affines, which gives both the static image and
independently moving (and, through scale/shear, deforming) shapes for the motion clips.

Everything is drawn with a :class:`numpy.random.Generator`, so a seed fixes the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from kmnrt.training.config import SyntheticConfig


@dataclass
class Layer:
    texture: np.ndarray  # [H, W, 3] uint8
    alpha: np.ndarray    # [H, W] uint8, 1 inside the shape
    label: int           # object id, 0 for a distractor


@dataclass
class Scene:
    background: np.ndarray  # [H, W, 3] uint8
    layers: list[Layer]     # back to front
    num_objects: int


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int, channels: int = 1) -> np.ndarray:
    """Value noise in [0, 1]: a random ``cells`` x ``cells`` grid resized bicubically to ``size`` (H, W)."""
    grid = rng.random((cells, cells, channels)).astype(np.float32)
    noise = cv2.resize(grid, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    return np.clip(noise.reshape(size[0], size[1], channels), 0.0, 1.0)


def random_texture(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A [H, W, 3] uint8 texture: two random colours blended by a pattern (noise, stripes, checks or a gradient),
    plus a little pixel noise."""
    h, w = size
    colours = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    kind = rng.integers(4)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:
        pattern = _smooth_noise(rng, size, int(rng.integers(2, 12)))[..., 0]
    elif kind == 1:
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 40)
        phase = (xs * np.cos(angle) + ys * np.sin(angle)) * (2 * np.pi / period)
        pattern = 0.5 + 0.5 * np.sin(phase)
    elif kind == 2:
        period = int(rng.integers(4, 32))
        pattern = (((ys // period) + (xs // period)) % 2).astype(np.float32)
    else:
        angle = rng.uniform(0, 2 * np.pi)
        ramp = xs * np.cos(angle) + ys * np.sin(angle)
        pattern = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    image = colours[0] + (colours[1] - colours[0]) * pattern[..., None]
    image += rng.normal(0.0, rng.uniform(0, 12), size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def random_shape(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A [H, W] uint8 0/1 mask of one ellipse, polygon or blob, 4-45 % of the canvas side across."""
    h, w = size
    mask = np.zeros((h, w), np.uint8)
    radius = rng.uniform(0.08, 0.3) * min(h, w)
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    kind = rng.integers(3)
    if kind == 0:
        axes = (max(2, int(radius * rng.uniform(0.5, 1.2))), max(2, int(radius * rng.uniform(0.3, 1.0))))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
    elif kind == 1:
        vertices = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
        radii = radius * rng.uniform(0.4, 1.1, vertices)
        points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [points.round().astype(np.int32)], 1)
    else:  # blob: a radius modulated by a few random harmonics around the circle
        angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        harmonics = np.arange(2, 6)[:, None]
        amplitudes = rng.uniform(0.0, 0.2, (4, 1))
        phases = rng.uniform(0, 2 * np.pi, (4, 1))
        radii = radius * (1.0 + (amplitudes * np.cos(harmonics * angles + phases)).sum(axis=0))
        points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [points.round().astype(np.int32)], 1)
    return mask


def random_scene(rng: np.random.Generator, size: tuple[int, int], config: SyntheticConfig,
                 num_objects: int | None = None) -> Scene:
    """Background + objects + distractors in random depth order. Shapes too small to see (< 0.3 % of the canvas)
    are redrawn, so every object exists in the composed scene before occlusion."""
    count = num_objects if num_objects is not None else int(rng.integers(config.min_objects,
                                                                          config.max_objects + 1))
    labels = list(range(1, count + 1)) + [0] * int(rng.integers(0, config.max_distractors + 1))
    rng.shuffle(labels)
    layers = []
    min_area = 0.003 * size[0] * size[1]
    for label in labels:
        alpha = random_shape(rng, size)
        while alpha.sum() < min_area:
            alpha = random_shape(rng, size)
        layers.append(Layer(random_texture(rng, size), alpha, int(label)))
    return Scene(random_texture(rng, size), layers, count)


def _warp(plane: np.ndarray, matrix: np.ndarray | None, size: tuple[int, int], nearest: bool) -> np.ndarray:
    if matrix is None:
        return plane
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.warpAffine(plane, matrix, (size[1], size[0]), flags=flags, borderMode=cv2.BORDER_REFLECT_101)


def render(scene: Scene, size: tuple[int, int], background_matrix: np.ndarray | None = None,
           layer_matrices: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Compose the scene -> (image [H, W, 3] uint8, index mask [H, W] uint8). Each 2x3 matrix maps canvas to
    output coordinates; a layer's matrix is applied after (composed with) the background's. Front layers
    overwrite back ones in the mask too, so an occluded part of an object is labelled by its occluder."""
    image = _warp(scene.background, background_matrix, size, nearest=False).copy()
    mask = np.zeros(size, np.uint8)
    for index, layer in enumerate(scene.layers):
        matrix = background_matrix
        if layer_matrices is not None:
            matrix = compose(layer_matrices[index], background_matrix)
        texture = _warp(layer.texture, matrix, size, nearest=False)
        if matrix is None:
            alpha = layer.alpha.astype(bool)
        else:  # constant border: a shape must not be mirrored back into view
            alpha = cv2.warpAffine(layer.alpha, matrix, (size[1], size[0]), flags=cv2.INTER_NEAREST,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
        image[alpha] = texture[alpha]
        mask[alpha] = layer.label
    return image, mask


def compose(first: np.ndarray, then: np.ndarray | None) -> np.ndarray:
    """2x3 affine ``then`` applied after ``first``."""
    if then is None:
        return first
    full = np.vstack([then, [0.0, 0.0, 1.0]]) @ np.vstack([first, [0.0, 0.0, 1.0]])
    return full[:2].astype(np.float32)


def synthetic_image(rng: np.random.Generator, size: tuple[int, int],
                    config: SyntheticConfig = SyntheticConfig()) -> tuple[np.ndarray, np.ndarray]:
    """One procedural image and its index mask (ids 1..N; N in [min_objects, max_objects])."""
    return render(random_scene(rng, size, config), size)
