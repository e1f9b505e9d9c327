from __future__ import annotations

import time

import numpy as np
import pytest

from kmnrt.data import read_label_png
from kmnrt.evaluation import boundary_map, contour_accuracy, disk, region_similarity, tolerance_radius


def _shift_right(mask: np.ndarray, pixels: int) -> np.ndarray:
    shifted = np.zeros_like(mask)
    shifted[:, pixels:] = mask[:, :-pixels]
    return shifted


@pytest.mark.parametrize(
    ("sequence", "frame", "expected_j", "expected_f"),
    [("blackswan", "00010", 0.809572, 0.640039), ("bmx-trees", "00040", 0.472928, 0.808393)],
)
def test_single_frame_reference_values(shared_vos, sequence, frame, expected_j, expected_f) -> None:
    gt = read_label_png(shared_vos / f"davis2016_{sequence}" / "Annotations" / f"{frame}.png")
    pred = _shift_right(gt, 10)
    assert region_similarity(pred, gt) == pytest.approx(expected_j, abs=5e-7)
    assert contour_accuracy(pred, gt) == pytest.approx(expected_f, abs=5e-7)
    assert region_similarity(gt, gt) == 1.0 and contour_accuracy(gt, gt) == 1.0


def test_empty_mask_rules() -> None:
    empty = np.zeros((30, 40), bool)
    square = empty.copy()
    square[10:20, 10:20] = True
    assert region_similarity(empty, empty) == 1.0
    assert contour_accuracy(empty, empty) == 1.0
    assert region_similarity(empty, square) == 0.0  # nothing predicted
    assert contour_accuracy(empty, square) == 0.0
    assert region_similarity(square, empty) == 0.0  # predicted where the GT has nothing
    assert contour_accuracy(square, empty) == 0.0


def test_region_similarity_is_iou() -> None:
    pred = np.zeros((10, 10), np.uint8)
    gt = np.zeros((10, 10), np.uint8)
    pred[0:4, 0:5] = 3  # any non-zero value is foreground: 20 px
    gt[2:6, 0:5] = 1  # 20 px, overlap 2 rows x 5 = 10 px
    assert region_similarity(pred, gt) == pytest.approx(10 / 30)
    with pytest.raises(ValueError):
        region_similarity(pred, gt[:9])


@pytest.mark.parametrize(
    ("height", "width", "radius"), [(480, 854, 8), (480, 910, 9), (720, 1280, 12), (1080, 1920, 18)]
)
def test_tolerance_radius(height, width, radius) -> None:
    assert tolerance_radius(height, width) == radius


def test_tolerance_radius_in_pixels() -> None:
    assert tolerance_radius(480, 854, bound_th=3) == 3
    with pytest.raises(ValueError):
        tolerance_radius(480, 854, bound_th=2.5)


def test_disk_is_the_digital_disk() -> None:
    kernel = disk(8)
    assert kernel.shape == (17, 17) and kernel.dtype == np.uint8
    assert int(kernel.sum()) == 197
    assert (kernel == kernel.T).all() and (kernel == kernel[::-1]).all()
    assert kernel[8, 0] == 1 and kernel[0, 8] == 1 and kernel[1, 1] == 0  # (7,7): 98 > 64
    assert disk(1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert disk(0).tolist() == [[1]]


def test_boundary_map_follows_seg2bmap() -> None:
    mask = np.zeros((5, 5), bool)
    mask[1:3, 1:3] = True
    expected = np.array(
        [
            [1, 1, 1, 0, 0],  # above the square: the lower(-right) neighbour differs
            [1, 0, 1, 0, 0],
            [1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ],
        bool,
    )
    assert (boundary_map(mask) == expected).all()


def test_image_border_is_never_a_contour() -> None:
    full = np.ones((6, 7), bool)
    assert not boundary_map(full).any()
    left_half = np.zeros((6, 7), bool)
    left_half[:, :3] = True  # touches the top, left and bottom border
    boundary = boundary_map(left_half)
    assert boundary[:, 2].all()  # the inner edge, half a pixel towards the origin
    assert boundary.sum() == 6
    corner = np.zeros((4, 4), bool)
    corner[3, 3] = True  # only the bottom-right pixel set
    assert boundary_map(corner).tolist() == [
        [False] * 4,
        [False] * 4,
        [False, False, True, True],  # (2, 2): lower-right differs; (2, 3): last column, lower differs
        [False, False, True, False],  # last row: right neighbour only; bottom-right never a boundary
    ]


def test_contour_accuracy_within_and_beyond_tolerance() -> None:
    gt = np.zeros((100, 100), bool)
    gt[20:80, 20:80] = True
    near = np.zeros_like(gt)
    near[22:82, 22:82] = True  # boundaries 2 px apart (diagonally < 3): all within r = 3
    far = np.zeros_like(gt)
    far[30:70, 30:70] = True  # 10 px inside: no boundary pixel matches at r = 3
    assert contour_accuracy(near, gt, bound_th=3) == 1.0
    assert contour_accuracy(far, gt, bound_th=3) == 0.0
    assert 0.0 < contour_accuracy(far, gt, bound_th=12) <= 1.0


def test_metrics_are_fast_at_480p(shared_vos) -> None:
    gt = read_label_png(shared_vos / "davis2016_motocross-jump" / "Annotations" / "00020.png")
    pred = _shift_right(gt, 10)
    start = time.perf_counter()
    for _ in range(10):
        region_similarity(pred, gt)
        contour_accuracy(pred, gt)
    per_pair = (time.perf_counter() - start) / 10
    assert per_pair < 0.05, f"J+F took {per_pair * 1000:.1f} ms per 480p frame pair"  # ~3 ms here
