from __future__ import annotations

import numpy as np
import pytest

from kmnrt.training.clips import finish_clip
from kmnrt.training.config import HideAndSeekConfig
from kmnrt.training.hide_and_seek import (
    MEAN_COLOUR,
    grid_edges,
    hidden_pixels,
    hide_and_seek,
    hide_probability,
)


def _frame(size: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    image[np.all(image == MEAN_COLOUR, axis=2)] = 0  # no pixel may already hold the fill colour
    mask = np.zeros((size, size), np.uint8)
    mask[10:60, 20:80] = 1
    mask[50:90, 5:40] = 2
    return image, mask


def test_grid_edges_cover_the_image_in_near_equal_cells():
    edges = grid_edges(100, 24)
    assert edges[0] == 0 and edges[-1] == 100 and len(edges) == 25
    assert set(np.diff(edges)) <= {4, 5}
    # at the paper's 384 crop a cell is exactly one stride-16 feature cell
    assert np.array_equal(grid_edges(384, 24), np.arange(0, 385, 16))


def test_hidden_cells_are_whole_aligned_cells():
    image, mask = _frame(96)
    out_image, out_mask, cells = hide_and_seek(np.random.default_rng(3), image, mask, 0.4, grid=24)
    assert cells.shape == (24, 24) and 0 < cells.sum() < 24 * 24
    changed = np.any(out_image != image, axis=2)
    edges = grid_edges(96, 24)
    for row in range(24):
        for col in range(24):
            block = changed[edges[row]:edges[row + 1], edges[col]:edges[col + 1]]
            assert block.all() if cells[row, col] else not block.any()
    assert np.array_equal(changed, hidden_pixels(cells, (96, 96)))


def test_hidden_cells_are_mean_coloured_background_and_the_rest_is_untouched():
    image, mask = _frame(96)
    out_image, out_mask, cells = hide_and_seek(np.random.default_rng(5), image, mask, 0.5, grid=24)
    pixels = hidden_pixels(cells, mask.shape)
    assert np.all(out_image[pixels] == MEAN_COLOUR)
    assert np.all(out_mask[pixels] == 0)
    assert np.array_equal(out_image[~pixels], image[~pixels])
    assert np.array_equal(out_mask[~pixels], mask[~pixels])
    assert mask[pixels].any()  # some object pixels were hidden, so the test above is not vacuous
    assert tuple(MEAN_COLOUR) == (124, 116, 104)


def test_probability_zero_hides_nothing_and_one_hides_everything():
    image, mask = _frame(72)
    kept_image, kept_mask, none = hide_and_seek(np.random.default_rng(0), image, mask, 0.0)
    assert not none.any() and np.array_equal(kept_image, image) and np.array_equal(kept_mask, mask)
    all_image, all_mask, every = hide_and_seek(np.random.default_rng(0), image, mask, 1.0)
    assert every.all() and np.all(all_image == MEAN_COLOUR) and not all_mask.any()


def test_hidden_fraction_follows_the_probability():
    image, mask = _frame(96)
    fractions = [hide_and_seek(np.random.default_rng(s), image, mask, 0.3)[2].mean() for s in range(20)]
    assert np.mean(fractions) == pytest.approx(0.3, abs=0.02)


def test_probability_ramps_linearly_from_zero_to_half():
    ramp = [hide_probability(i, 100) for i in (0, 25, 50, 100, 400)]
    assert ramp == pytest.approx([0.0, 0.125, 0.25, 0.5, 0.5])
    assert hide_probability(10, 100, max_probability=0.2) == pytest.approx(0.02)


def test_each_frame_of_a_clip_gets_its_own_cells():
    image, mask = _frame(96)
    clip = finish_clip(np.random.default_rng(1), [image] * 3, [mask] * 3, max_objects=3,
                       hide=HideAndSeekConfig(grid=24), hide_probability=0.3)
    fill = np.asarray(MEAN_COLOUR, np.float32) / 255
    hidden = [np.all(np.isclose(clip.frames[t].permute(1, 2, 0).numpy(), fill), axis=2) for t in range(3)]
    assert all(h.any() for h in hidden)
    assert not np.array_equal(hidden[0], hidden[1]) and not np.array_equal(hidden[1], hidden[2])
    for t in range(3):
        assert not clip.labels[t].numpy()[hidden[t]].any()


def test_disabled_hide_and_seek_leaves_frames_alone():
    image, mask = _frame(64)
    clip = finish_clip(np.random.default_rng(1), [image] * 3, [mask] * 3, max_objects=3,
                       hide=HideAndSeekConfig(enabled=False), hide_probability=0.5)
    assert np.array_equal((clip.frames[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), image)
