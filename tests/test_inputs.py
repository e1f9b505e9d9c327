"""What users pass in: frames in any common layout, index masks, ids of new objects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kmnrt.errors import UserInputError
from kmnrt.inputs import check_mask, choose_new_ids, frame_as_rgb

RGB = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)


def test_grayscale_and_rgba_frames_become_rgb_and_rgb_is_a_view():
    as_given = frame_as_rgb(RGB, "frame 0")
    assert np.array_equal(as_given, RGB) and np.shares_memory(as_given, RGB)
    gray = RGB[..., 0]
    for frame in (gray, gray[..., None]):
        assert np.array_equal(frame_as_rgb(frame, "frame 0"), np.repeat(gray[..., None], 3, axis=2))
    rgba = np.dstack([RGB, np.full((4, 5), 7, np.uint8)])
    assert np.array_equal(frame_as_rgb(rgba, "frame 0"), RGB)
    tensor = torch.from_numpy(gray.copy())
    assert torch.equal(frame_as_rgb(tensor, "frame 0"), tensor[..., None].expand(-1, -1, 3))


@pytest.mark.parametrize(("frame", "message"), [
    (RGB.astype(np.float32) / 255, r"got dtype float32; convert it, e\.g\. \(frame \* 255\)"),
    (RGB.astype(np.int64), r"got dtype int64; convert it, e\.g\. frame\.astype\(np\.uint8\) for whole numbers"),
    (torch.zeros(4, 5, 3), r"got dtype torch.float32; convert it, e\.g\. \(frame \* 255\)"),
    (np.zeros((4, 5, 2), np.uint8), r"got shape \(4, 5, 2\)"),
    (np.zeros((0, 5, 3), np.uint8), "the frame is empty"),
])
def test_unusable_frames_say_what_to_do(frame, message):
    with pytest.raises(UserInputError, match=f"frame 3: .*{message}"):
        frame_as_rgb(frame, "frame 3")


def test_masks_of_any_integer_type_bool_or_a_channel_become_uint8_ids():
    ids = np.array([[0, 1], [2, 255]])
    for mask in (ids, ids.astype(np.int32), ids[..., None], torch.from_numpy(ids)):
        checked = check_mask(mask, (2, 2), "first mask")
        assert checked.dtype == np.uint8 and np.array_equal(checked, ids)
    assert np.array_equal(check_mask(ids > 0, (2, 2), "first mask"), (ids > 0).astype(np.uint8))


@pytest.mark.parametrize(("mask", "message"), [
    (np.zeros((2, 2, 3), np.uint8), r"2-D index image \[H, W\] of object ids, got shape \(2, 2, 3\)"),
    (np.zeros((2, 2), np.float32), "integer object ids, got dtype float32"),
    (np.zeros((3, 2), np.uint8), r"mask size 2x3 differs from the frame size 2x2 \(width x height\)"),
    (np.array([[0, 256], [0, 0]]), r"ids must lie in 1\.\.255 .* holds 0\.\.256"),
    (np.array([[-1, 0], [0, 0]]), r"holds -1\.\.0"),
])
def test_unusable_masks_name_the_frame_and_the_problem(mask, message):
    with pytest.raises(UserInputError, match=f"mask of frame 4: .*{message}"):
        check_mask(mask, (2, 2), "mask of frame 4")


def test_a_mask_of_the_frame_turned_a_quarter_points_at_exif_orientation():
    with pytest.raises(UserInputError, match=r"mask size 2x3 differs .* It is the frame's size turned a quarter: "
                                             r"frames are read turned upright by their EXIF orientation"):
        check_mask(np.zeros((3, 2), np.uint8), (2, 3), "first mask")
    with pytest.raises(UserInputError) as other_size:
        check_mask(np.zeros((3, 2), np.uint8), (3, 3), "first mask")
    assert "EXIF" not in str(other_size.value)


def test_new_ids_skip_tracked_ones_and_given_ids_must_be_in_the_mask():
    mask = np.array([[0, 3], [7, 9]], np.uint8)
    assert choose_new_ids(mask, [3], None, "frame 5") == [7, 9]
    assert choose_new_ids(mask, [3], [9], "frame 5") == [9]
    with pytest.raises(UserInputError, match=r"frame 5: object id\(s\) \[4\] do not occur in the mask"):
        choose_new_ids(mask, [], [4], "frame 5")
    with pytest.raises(UserInputError, match=r"object_ids must be distinct, got \[7, 7\]"):
        choose_new_ids(mask, [], [7, 7], "frame 5")


def test_given_ids_are_whole_numbers_and_one_may_be_given_alone():
    mask = np.array([[0, 3], [7, 9]], np.uint8)
    assert choose_new_ids(mask, [], 7, "frame 0") == [7]
    assert choose_new_ids(mask, [], np.array([9, 3]), "frame 0") == [9, 3]
    with pytest.raises(UserInputError, match="frame 0: object_ids is empty; pass None to track every object"):
        choose_new_ids(mask, [], [], "frame 0")
    for wrong in ([1.5], [7.0], ["7"], "7", [True], [0], [-3], 2.5):
        with pytest.raises(UserInputError, match="frame 0: each of object_ids must be a whole number of at least 1"):
            choose_new_ids(mask, [], wrong, "frame 0")
