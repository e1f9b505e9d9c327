"""KMN's Hide-and-Seek augmentation for static-image pre-training.

Our reading of the paper (restated in docs/kmn-model.md §5, "image split into a 24x24 grid"): the frame is cut
into 24 rows x 24 columns of cells (not cells of 24x24 pixels); each cell is hidden independently with
probability p, and p rises linearly from 0 to 0.5 over pre-training. The grid is laid over the network input
(the augmented crop), so at the paper's 384x384 crop a cell is 16x16 pixels: exactly one stride-16 feature cell.

Inferred, not stated in the sources we could read: a hidden cell is filled with the ImageNet mean colour (what the
encoders normalise to zero) and labelled background in the mask, which gives the clean, straight object
boundaries the paper's motivation describes. Each frame of a clip gets its own random cells.
"""

from __future__ import annotations

import numpy as np

from kmnrt.model.encoders import IMAGENET_MEAN

MEAN_COLOUR = np.array([round(channel * 255) for channel in IMAGENET_MEAN], dtype=np.uint8)  # (124, 116, 104)


def hide_probability(iteration: int, ramp_iterations: int, max_probability: float = 0.5) -> float:
    """The linear ramp: 0 at iteration 0, ``max_probability`` from ``ramp_iterations`` on."""
    if ramp_iterations <= 0:
        return max_probability
    return max_probability * min(1.0, iteration / ramp_iterations)


def grid_edges(length: int, cells: int) -> np.ndarray:
    """Pixel boundaries of ``cells`` cells over ``length`` pixels: ``cells + 1`` ints from 0 to ``length``, as even
    as integer pixels allow (cell sizes differ by at most one)."""
    return np.floor(np.arange(cells + 1) * length / cells).astype(np.int64)


def hidden_pixels(hidden_cells: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A [grid, grid] bool cell map -> the [H, W] bool pixel map it covers."""
    cells = hidden_cells.shape[0]
    rows = np.searchsorted(grid_edges(size[0], cells), np.arange(size[0]), side="right") - 1
    cols = np.searchsorted(grid_edges(size[1], cells), np.arange(size[1]), side="right") - 1
    return hidden_cells[rows[:, None], cols[None, :]]


def hide_and_seek(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, probability: float,
                  grid: int = 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hide random grid cells of one frame.

    image [H, W, 3] uint8, mask [H, W] uint8 -> (image with hidden cells in the mean colour, mask with hidden
    cells 0, the [grid, grid] bool map of hidden cells). The inputs are not modified.
    """
    hidden_cells = rng.random((grid, grid)) < probability
    pixels = hidden_pixels(hidden_cells, mask.shape)
    image, mask = image.copy(), mask.copy()
    image[pixels] = MEAN_COLOUR
    mask[pixels] = 0
    return image, mask, hidden_cells
