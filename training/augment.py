"""Geometric and photometric augmentation on numpy frames (HWC uint8 RGB) and index masks (HW uint8).

Affines are 2x3 float32 matrices mapping source pixel coordinates to output coordinates (OpenCV's
``warpAffine`` convention). Images are interpolated bilinearly, masks with nearest neighbour, both with the same
matrix and border mode, so labels stay aligned with the pixels they describe.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from kmnrt.training.config import AffineRange


def affine_matrix(centre_in: tuple[float, float], centre_out: tuple[float, float], scale: float = 1.0,
                  rotation_deg: float = 0.0, shear_deg: float = 0.0) -> np.ndarray:
    """x_out = centre_out + R(rotation) @ Shear(shear) @ (scale * (x_in - centre_in)); centres are (x, y)."""
    theta, shear = math.radians(rotation_deg), math.radians(shear_deg)
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    shearing = np.array([[1.0, math.tan(shear)], [0.0, 1.0]])
    linear = rotation @ shearing * scale
    offset = np.asarray(centre_out) - linear @ np.asarray(centre_in)
    return np.hstack([linear, offset[:, None]]).astype(np.float32)


def random_affine(rng: np.random.Generator, source_size: tuple[int, int], out_size: int, limits: AffineRange,
                  zoom: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """A random affine from a ``source_size`` (H, W) image into an ``out_size`` square crop: the image is first
    scaled so its short side fills the crop (times a ``zoom`` in that range), then rotated, sheared, scaled and
    translated within ``limits`` around the centres."""
    h, w = source_size
    fill = out_size / min(h, w) * rng.uniform(*zoom)
    scale = fill * rng.uniform(*limits.scale)
    shift = rng.uniform(-limits.translate, limits.translate, 2) * out_size
    centre_out = (out_size / 2 + shift[0], out_size / 2 + shift[1])
    return affine_matrix((w / 2, h / 2), centre_out, scale, rng.uniform(-1, 1) * limits.rotation_deg,
                         rng.uniform(-1, 1) * limits.shear_deg)


def warp_pair(image: np.ndarray, mask: np.ndarray, matrix: np.ndarray,
              out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Warp an image and its mask into an ``out_size`` square with the same matrix (reflected borders for both,
    so the mask keeps describing what the image shows)."""
    size = (out_size, out_size)
    warped = cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    labels = cv2.warpAffine(mask, matrix, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
    return warped, labels


def colour_jitter(rng: np.random.Generator, image: np.ndarray, strength: float) -> np.ndarray:
    """Random brightness, contrast, saturation (each +-strength) and hue (+-strength/3 of the circle)."""
    if strength <= 0:
        return image
    values = image.astype(np.float32)
    values = values * rng.uniform(1 - strength, 1 + strength) + rng.uniform(-strength, strength) * 255
    mean = values.mean()
    values = (values - mean) * rng.uniform(1 - strength, 1 + strength) + mean
    grey = values.mean(axis=2, keepdims=True)
    values = (values - grey) * rng.uniform(1 - strength, 1 + strength) + grey
    hsv = cv2.cvtColor(np.clip(values, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV)
    shift = int(round(rng.uniform(-strength, strength) / 3 * 180))  # OpenCV's 8-bit hue runs over 0..179
    hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def random_resize_crop(rng: np.random.Generator, frames: list[np.ndarray], masks: list[np.ndarray], size: int,
                       short_side: int | None = None,
                       zoom: tuple[float, float] = (1.0, 1.3)) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Main training's crop: resize all frames alike so the short side is ``short_side`` (default ``size``) times
    a random ``zoom``, then cut the same random ``size`` x ``size`` window out of each. A short side above the
    crop trains at a larger scale than the whole frame would fit: match it when tracking (``--short-side``)."""
    h, w = frames[0].shape[:2]
    scale = (short_side or size) / min(h, w) * rng.uniform(*zoom)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = int(rng.integers(0, new_h - size + 1)), int(rng.integers(0, new_w - size + 1))
    out_frames, out_masks = [], []
    for frame, mask in zip(frames, masks):
        frame = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
        out_frames.append(frame[top:top + size, left:left + size])
        out_masks.append(mask[top:top + size, left:left + size])
    return out_frames, out_masks


def maybe_flip(rng: np.random.Generator, frames: list[np.ndarray],
               masks: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Mirror the whole clip left-right with probability 1/2 (one decision per clip: motion stays coherent)."""
    if rng.random() < 0.5:
        return [np.ascontiguousarray(f[:, ::-1]) for f in frames], [np.ascontiguousarray(m[:, ::-1]) for m in masks]
    return frames, masks
