"""Per-frame DAVIS metrics for one object: region similarity J and contour accuracy F.

These follow the official DAVIS 2017 evaluation (davis2017-evaluation, ``davis2017/metrics.py``) exactly,
restated from its definition (see ``docs/evaluation.md``): J is the IoU with J = 1 when both masks are
empty; F is the boundary F-measure of the BSDS ``seg2bmap`` boundaries, matched within a digital disk of
radius ``ceil(0.008 * image diagonal)`` (8 px at 480x854).

Masks are ``[H, W]`` arrays; any non-zero value counts as foreground.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

DEFAULT_BOUND_TH = 0.008
"""Boundary tolerance of the benchmark: a fraction of the image diagonal (values >= 1 are pixels)."""


def region_similarity(pred_mask: np.ndarray, gt_mask: np.ndarray) -> float:
    """J: |P ∩ G| / |P ∪ G|; 1.0 when both masks are empty, 0.0 when exactly one is."""
    pred, gt = _as_bool_pair(pred_mask, gt_mask)
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def tolerance_radius(height: int, width: int, bound_th: float = DEFAULT_BOUND_TH) -> int:
    """Dilation radius in pixels: ``bound_th`` if it is >= 1, else ``ceil(bound_th * sqrt(H^2 + W^2))``.

    480x854 → 8, 480x910 → 9, 720x1280 → 12, 1080x1920 → 18.
    """
    if bound_th >= 1:
        if bound_th != int(bound_th):
            raise ValueError(f"a boundary tolerance >= 1 is a radius in whole pixels, got {bound_th}")
        return int(bound_th)
    if bound_th <= 0:
        raise ValueError(f"bound_th must be positive, got {bound_th}")
    # np.linalg.norm, as the official code uses, so that the float product and ceil agree bit for bit.
    return int(math.ceil(bound_th * float(np.linalg.norm((height, width)))))


def disk(radius: int) -> np.ndarray:
    """Digital disk ``[2r+1, 2r+1]`` uint8: 1 at offsets (dy, dx) with dy² + dx² <= r² (r = 8: 197 ones)."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """1-pixel-wide boundary of a mask, the BSDS ``seg2bmap`` rule at the mask's own size.

    A pixel is on the boundary if it differs from its right, lower or lower-right neighbour. Pixels of
    the last row compare only with their right neighbour, pixels of the last column only with their
    lower neighbour, and the bottom-right pixel is never a boundary. So the image border is never a
    contour, and the boundary lies half a pixel towards the origin.

    Returns:
        ``[H, W]`` bool.
    """
    mask = np.asarray(mask).astype(bool, copy=False)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    boundary = np.zeros(mask.shape, dtype=bool)
    boundary[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    boundary[:-1, :] |= mask[:-1, :] != mask[1:, :]
    boundary[:-1, :-1] |= mask[:-1, :-1] != mask[1:, 1:]
    return boundary


def contour_accuracy(pred_mask: np.ndarray, gt_mask: np.ndarray, bound_th: float = DEFAULT_BOUND_TH) -> float:
    """F: boundary F-measure of ``pred_mask`` against ``gt_mask``.

    Precision is the share of predicted boundary pixels within the disk-dilated GT boundary, recall the
    share of GT boundary pixels within the dilated predicted boundary, F = 2PR / (P + R) (0 if P + R = 0).
    No boundary on either side gives 1.0; a boundary on exactly one side gives 0.0.
    """
    pred, gt = _as_bool_pair(pred_mask, gt_mask)
    pred_boundary = boundary_map(pred)
    gt_boundary = boundary_map(gt)
    pred_count = np.count_nonzero(pred_boundary)
    gt_count = np.count_nonzero(gt_boundary)
    if pred_count == 0 and gt_count == 0:
        return 1.0
    if pred_count == 0 or gt_count == 0:
        return 0.0  # precision or recall is 0 and the other is 1, as the official table says

    radius = tolerance_radius(*pred.shape, bound_th=bound_th)
    # Dilate only the bounding box of both boundaries grown by the radius: nothing outside it can reach
    # a boundary pixel, and it makes the two dilations several times cheaper on typical masks.
    either = pred_boundary | gt_boundary
    rows = np.flatnonzero(either.any(axis=1))
    cols = np.flatnonzero(either.any(axis=0))
    window = (
        slice(max(rows[0] - radius, 0), rows[-1] + radius + 1),
        slice(max(cols[0] - radius, 0), cols[-1] + radius + 1),
    )
    pred_boundary = pred_boundary[window]
    gt_boundary = gt_boundary[window]
    kernel = disk(radius)
    pred_dilated = cv2.dilate(np.ascontiguousarray(pred_boundary, dtype=np.uint8), kernel).astype(bool)
    gt_dilated = cv2.dilate(np.ascontiguousarray(gt_boundary, dtype=np.uint8), kernel).astype(bool)

    precision = np.count_nonzero(pred_boundary & gt_dilated) / pred_count
    recall = np.count_nonzero(gt_boundary & pred_dilated) / gt_count
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _as_bool_pair(pred_mask: np.ndarray, gt_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred_mask).astype(bool, copy=False)
    gt = np.asarray(gt_mask).astype(bool, copy=False)
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(f"masks must be 2-D and of one size, got {pred.shape} and {gt.shape}")
    return pred, gt
