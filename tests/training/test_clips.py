from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from kmnrt.cli import build_parser
from kmnrt.cli import main as kmnrt_main
from kmnrt.errors import KmnrtWarning, UserInputError
from kmnrt.training.augment import random_resize_crop
from kmnrt.training.cli import config_from_args
from kmnrt.training.clips import select_objects
from kmnrt.training.config import SkipCurriculum, SyntheticConfig, preset
from kmnrt.training.datasets import (
    StaticClips,
    VideoClips,
    find_image_pairs,
    find_video_sequences,
    max_skip_at,
    read_training_pair,
)
from kmnrt.training.synthetic import synthetic_image


def _check_clip(clip, size: int, max_objects: int = 3, frames: int = 3) -> None:
    assert clip.frames.shape == (frames, 3, size, size) and clip.frames.dtype == torch.float32
    assert clip.labels.shape == (frames, size, size) and clip.labels.dtype == torch.int64
    assert 0.0 <= float(clip.frames.min()) and float(clip.frames.max()) <= 1.0
    assert 1 <= clip.num_objects <= max_objects
    assert int(clip.labels.max()) <= clip.num_objects and int(clip.labels.min()) >= 0
    first = set(torch.unique(clip.labels[0]).tolist())
    assert set(range(1, clip.num_objects + 1)) <= first  # every object is visible in frame A


def test_synthetic_image_has_objects_and_is_seeded():
    image, mask = synthetic_image(np.random.default_rng(7), (80, 96), SyntheticConfig(min_objects=2, max_objects=2))
    assert image.shape == (80, 96, 3) and image.dtype == np.uint8 and mask.shape == (80, 96)
    assert set(np.unique(mask)) <= {0, 1, 2} and (mask > 0).any()
    again, _ = synthetic_image(np.random.default_rng(7), (80, 96), SyntheticConfig(min_objects=2, max_objects=2))
    assert np.array_equal(image, again)


def test_static_clips_shapes_and_determinism(small_config):
    clips = StaticClips(small_config)
    assert len(clips) == small_config.iterations * small_config.batch
    for index in range(len(clips)):
        _check_clip(clips[index], 64)
    first, again = clips[3], StaticClips(small_config)[3]
    assert torch.equal(first.frames, again.frames) and torch.equal(first.labels, again.labels)
    other = StaticClips(dataclasses.replace(small_config, seed=1))[3]
    assert not torch.equal(first.frames, other.frames)


@pytest.mark.parametrize("motion_fraction", [0.0, 1.0])
def test_both_synthetic_recipes_make_moving_multi_object_clips(small_config, motion_fraction):
    config = dataclasses.replace(small_config, size=96, synthetic=SyntheticConfig(motion_fraction=motion_fraction))
    clips = [StaticClips(config)[i] for i in range(6)]
    for clip in clips:
        _check_clip(clip, 96)
        assert not torch.equal(clip.labels[0], clip.labels[2])  # the frames differ: something moved
    assert max(clip.num_objects for clip in clips) > 1


def test_select_objects_keeps_first_frame_objects_renumbered():
    first = np.zeros((8, 8), np.uint8)
    first[:4, :4], first[4:, 4:] = 7, 255  # object 7 and DAVIS void
    later = first.copy()
    later[:4, 4:] = 9  # object 9 appears only later
    kept = select_objects(np.random.default_rng(0), [first, later, later], max_objects=3)
    assert kept is not None and all(set(np.unique(m)) == {0, 1} for m in kept)
    assert select_objects(np.random.default_rng(0), [np.zeros((8, 8), np.uint8)] * 3, 3) is None
    many = np.arange(64, dtype=np.uint8).reshape(8, 8).repeat(4, 0).repeat(4, 1)  # 63 objects of 16 px
    assert int(select_objects(np.random.default_rng(0), [many] * 3, max_objects=2)[0].max()) == 2


def test_user_image_pairs_feed_the_static_recipe(tmp_path, small_config):
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "Annotations").mkdir()
    image, mask = synthetic_image(np.random.default_rng(1), (90, 120))
    cv2.imwrite(str(tmp_path / "JPEGImages" / "a.jpg"), image[..., ::-1])
    cv2.imwrite(str(tmp_path / "Annotations" / "a.png"), mask)
    pairs = find_image_pairs(tmp_path)
    assert [p[0].name for p in pairs] == ["a.jpg"]
    _check_clip(StaticClips(small_config, pairs)[0], 64)
    assert StaticClips(small_config, pairs).describe() == "1 image with masks"
    cv2.imwrite(str(tmp_path / "JPEGImages" / "b0.jpg"), image[..., ::-1])  # named unlike its mask: a slip
    cv2.imwrite(str(tmp_path / "Annotations" / "b1.png"), mask)
    with pytest.warns(KmnrtWarning, match=r"1 image\(s\) without a mask of the same name \(b0.jpg\) and 1 mask\(s\) "
                      r"without an image \(b1.png\) are left out; training goes on with the 1 pair\(s\)"):
        assert find_image_pairs(tmp_path) == pairs
    with pytest.raises(UserInputError, match="JPEGImages"):
        find_image_pairs(tmp_path / "JPEGImages")


def test_a_photo_turned_by_exif_lines_up_with_its_mask_either_way(tmp_path):
    """COCO's masks fit the pixels as stored, masks drawn in today's tools fit the photo turned by its EXIF
    orientation: the pair is read at whichever size its mask has, and neither size is an error naming both."""
    from PIL import Image

    from kmnrt.data import read_image

    photo = tmp_path / "photo.jpg"
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255  # stored 40 wide, 20 high; EXIF orientation 6 turns it a quarter, to 20 x 40
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(photo, exif=exif.tobytes())
    for height, width, orientation in ((20, 40, False), (40, 20, True)):
        mask_path = tmp_path / f"mask{height}.png"
        Image.fromarray(np.zeros((height, width), np.uint8)).save(mask_path)
        image, mask = read_training_pair(photo, mask_path)
        assert image.shape == (height, width, 3) and mask.shape == (height, width)
        assert np.array_equal(image, read_image(photo, orientation=orientation))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "other.png")
    with pytest.raises(UserInputError, match=r"mask .*other\.png is 10x10 but image .*photo\.jpg is 20x40"):
        read_training_pair(photo, tmp_path / "other.png")


def test_max_skip_curriculum_grows_by_five_to_twenty_five():
    skip = SkipCurriculum(every_iterations=10)
    assert [max_skip_at(i, skip, 1000) for i in (0, 9, 10, 25, 49, 50, 500)] == [0, 0, 5, 10, 20, 25, 25]
    assert max_skip_at(0, SkipCurriculum(), 600) == 0 and max_skip_at(599, SkipCurriculum(), 600) == 25


def test_max_skip_option_ends_the_curriculum_early_even_off_the_step(tmp_path):
    """--max-skip 10: levels 0, 5, 10 over thirds of the stage; an end that is not a multiple of 5 is still
    reached (0, 5, 7), and --max-skip 0 trains on consecutive frames throughout."""
    def levels(max_skip: str) -> list[int]:
        args = ["train", "--stage", "main", "--data", str(tmp_path), "--iterations", "900", "--max-skip", max_skip,
                "--out", str(tmp_path / "run")]
        config = config_from_args(build_parser().parse_args(args))
        return [max_skip_at(i, config.skip, config.iterations) for i in (0, 299, 300, 599, 600, 899)]

    assert levels("10") == [0, 0, 5, 5, 10, 10]
    assert levels("7") == [0, 0, 5, 5, 7, 7]
    assert levels("0") == [0] * 6


def test_video_clips_are_ordered_within_max_skip(video_tree, tmp_path):
    TREE_FRAMES, video_tree = video_tree.frames, video_tree.root
    config = preset("tiny", "main", tmp_path / "run", data=video_tree, size=64, batch=1, iterations=40)
    sequences = find_video_sequences(video_tree)
    assert [s.name for s in sequences] == ["squares"] and len(sequences[0].frames) == TREE_FRAMES
    clips = VideoClips(config, sequences)
    rng = np.random.default_rng(0)
    for max_skip in (0, 2, 25):
        for _ in range(50):
            a, b, c = clips.frame_indices(rng, TREE_FRAMES, max_skip)
            assert 0 <= a < b < c < TREE_FRAMES
            assert b - a - 1 <= max_skip and c - b - 1 <= max_skip
            if max_skip == 0:
                assert (b, c) == (a + 1, a + 2)
    for index in range(len(clips)):
        _check_clip(clips[index], 64)


def test_longer_clips_keep_order_and_gaps(video_tree, tmp_path):
    config = preset("tiny", "main", tmp_path / "run", data=video_tree.root, size=64, batch=1, iterations=6,
                    clip_frames=5)
    clips = VideoClips(config, find_video_sequences(video_tree.root, config.clip_frames))
    rng = np.random.default_rng(1)
    spans = set()
    for max_skip in (0, 1, 25):
        for _ in range(200):
            indices = clips.frame_indices(rng, video_tree.frames, max_skip)
            assert len(indices) == 5 and indices == sorted(set(indices))  # strictly increasing
            assert 0 <= indices[0] and indices[-1] < video_tree.frames
            assert all(b - a - 1 <= max_skip for a, b in zip(indices, indices[1:]))
            if max_skip == 0:
                assert indices == list(range(indices[0], indices[0] + 5))
            spans.add(indices[-1] - indices[0])
    assert video_tree.frames - 1 in spans  # long gaps are cut to the video, not refused
    for index in range(len(clips)):
        _check_clip(clips[index], 64, frames=5)


def test_static_clips_take_the_clip_length(small_config):
    clip = StaticClips(dataclasses.replace(small_config, clip_frames=4))[0]
    _check_clip(clip, 64, frames=4)


class _FixedFrames(VideoClips):
    """Video clips with given frame indices, to control which objects frame A shows."""

    indices: list[int] = []

    def frame_indices(self, rng, length, max_skip):
        return list(self.indices)


def test_video_objects_come_from_the_first_sampled_frame_only(video_tree, tmp_path):
    config = preset("tiny", "main", tmp_path / "run", data=video_tree.root, size=96, batch=1, iterations=4)
    clips = _FixedFrames(config, find_video_sequences(video_tree.root))
    late = video_tree.new_object_from
    clips.indices = [late - 3, late - 2, late + 1]  # object 2 shows up in frame C only: not tracked
    for index in range(4):
        clip = clips[index]
        assert clip.num_objects == 1 and int(clip.labels.max()) == 1
    clips.indices = [late, late + 1, late + 3]  # both objects in frame A
    assert {clips[index].num_objects for index in range(4)} == {2}


def test_bad_video_folders_are_user_errors(tmp_path, make_video_tree):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="empty"):
        find_video_sequences(tmp_path / "empty")
    short = tmp_path / "short"
    make_video_tree(short, frames=2)
    with pytest.raises(UserInputError, match="3 or more frames"):
        find_video_sequences(short)
    assert len(find_video_sequences(short, clip_frames=2)) == 1
    make_video_tree(short, name="longer", frames=4)  # the 2-frame video is left out, and that is said
    with pytest.warns(KmnrtWarning, match=r"1 sequence\(s\) with fewer than 3 annotated frames are left out "
                      r"\(squares\); training goes on with 1"):
        assert [s.name for s in find_video_sequences(short)] == ["longer"]
    with pytest.raises(UserInputError, match="clip-frames"):
        preset("tiny", "main", tmp_path / "run", clip_frames=1)


def test_an_unusable_file_costs_a_redraw_and_a_warning_naming_it(video_tree, tmp_path):
    """One damaged mask among a video's frames: every sample that drew it is drawn again and the run goes on; a
    warning names the file. When no draw gives a clip, the data is at fault, and that is an error."""
    masks = video_tree.root / "Annotations" / "squares"
    (masks / "00004.png").write_bytes(b"not a png")
    config = preset("tiny", "main", tmp_path / "run", data=video_tree.root, size=64, batch=1, iterations=40)
    clips = VideoClips(config, find_video_sequences(video_tree.root))
    with pytest.warns(KmnrtWarning, match=r"training goes on without this file: cannot read mask .*00004\.png"):
        for index in range(len(clips)):
            _check_clip(clips[index], 64)
    for mask in masks.iterdir():
        mask.write_bytes(b"")
    with pytest.raises(UserInputError, match=r"sample 0: 50 of 50 draws hit an unusable file, and no draw gave a "
                                             r"clip; the last: cannot read mask"):
        clips[0]


def _flat_scene_image(size: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """Flat colours that encode the label: background black, object 1 red, object 2 green."""
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (40, 50), 22, 1, thickness=-1)
    cv2.rectangle(mask, (70, 60), (105, 100), 2, thickness=-1)
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
    return palette[mask], mask


def _labels_match_colours(frame: np.ndarray, labels: np.ndarray) -> None:
    """Away from edges (bilinear blends there), each pixel's colour says which label it must carry."""
    interior = np.ones_like(labels, bool)
    for obj in range(3):
        inside = (labels == obj).astype(np.uint8)
        interior &= ~((cv2.dilate(inside, np.ones((5, 5), np.uint8)) > 0) & (cv2.erode(inside, np.ones((5, 5),
                      np.uint8)) == 0))
    colour_label = np.select([frame[..., 0] > 200, frame[..., 1] > 200], [1, 2], 0)
    assert interior.sum() > 0.5 * labels.size
    assert np.array_equal(colour_label[interior], labels[interior])


def test_short_side_sets_the_training_scale_independently_of_the_crop():
    stripes = (np.arange(64) // 4 % 2).astype(np.uint8)  # vertical stripes 4 px wide
    mask = np.tile(stripes, (64, 1))
    frame = np.repeat(mask[..., None] * 255, 3, axis=2)

    def stripe_edges(short_side):
        _, masks = random_resize_crop(np.random.default_rng(0), [frame], [mask], 32, short_side)
        return int(np.count_nonzero(np.diff(masks[0][16].astype(int))))

    assert stripe_edges(None) >= 10  # short side 32-42: stripes 2-2.6 px, at least 12 edges across the crop
    assert stripe_edges(128) <= 4   # short side 128-166: stripes 8-10.4 px
    with pytest.raises(UserInputError, match="--short-side"):
        preset("small", "main", Path("out"), short_side=64, size=128)


def test_static_clip_masks_move_with_their_images():
    from kmnrt.training.clips import static_clip
    from kmnrt.training.config import AffineRange

    image, mask = _flat_scene_image()
    limits = AffineRange(rotation_deg=30, shear_deg=15, translate=0.2, colour_jitter=0.0)
    frames, masks = static_clip(np.random.default_rng(2), image, mask, 96, limits)
    for frame, labels in zip(frames, masks):
        assert frame.shape == (96, 96, 3) and labels.shape == (96, 96)
        _labels_match_colours(frame, labels)
    centres = [np.argwhere(labels == 1).mean(axis=0) for labels in masks]
    assert max(np.abs(centres[0] - c).max() for c in centres[1:]) > 2  # the affines differ: the object moved


def test_motion_clip_masks_move_with_their_shapes():
    from kmnrt.training.clips import motion_clip
    from kmnrt.training.config import AffineRange
    from kmnrt.training.synthetic import Layer, Scene

    image, mask = _flat_scene_image(96)
    layers = [Layer(np.full((96, 96, 3), colour, np.uint8), (mask == obj).astype(np.uint8), obj)
              for obj, colour in ((1, (255, 0, 0)), (2, (0, 255, 0)))]
    scene = Scene(np.zeros((96, 96, 3), np.uint8), layers, 2)
    frames, masks = motion_clip(np.random.default_rng(4), scene, 96, AffineRange(colour_jitter=0.0))
    for frame, labels in zip(frames, masks):
        _labels_match_colours(frame, labels)
    assert not np.array_equal(masks[0], masks[2])


def test_forgotten_blocks_lie_inside_objects_of_memorised_predictions(video_tree, tmp_path):
    """--memory-forget marks, per memorised prediction (not the given first frame, not the last frame), a block
    of an object's own pixels; with 0 the clip is what it was, to the last label."""
    config = preset("tiny", "main", tmp_path / "run", data=video_tree.root, size=64, batch=1, iterations=40,
                    clip_frames=4)
    sequences = find_video_sequences(video_tree.root, 4)
    plain = VideoClips(config, sequences)
    always = VideoClips(dataclasses.replace(config, memory_forget=1.0), sequences)
    for index in range(8):
        clip, forgetting = plain[index], always[index]
        assert clip.forget is None and torch.equal(clip.labels, forgetting.labels)
        forget = forgetting.forget
        assert forget.shape == clip.labels.shape and forget.dtype == torch.bool
        assert not forget[0].any() and not forget[-1].any()
        for t in (1, 2):
            assert (clip.labels[t][forget[t]] > 0).all()  # object pixels only
            for object_id in torch.unique(clip.labels[t]).tolist():
                if object_id:
                    area = int((clip.labels[t] == object_id).sum())
                    lost = int((forget[t] & (clip.labels[t] == object_id)).sum())
                    assert 0 < lost < area  # part of every object, never all of it


@pytest.mark.parametrize("option, value, message", [
    ("--memory-forget", "-0.1", "--memory-forget must be a probability in [0, 1]"),
    ("--memory-forget", "1.5", "--memory-forget must be a probability in [0, 1]"),
    ("--dice-loss", "-1", "--dice-loss must be 0 or more"),
    ("--train-sigma", "0", "--train-sigma must be positive"),
    ("--max-skip", "-1", "--max-skip must be at least 0"),
])
def test_bad_loss_and_memory_options_are_one_line_errors(tmp_path, capsys, option, value, message):
    stage = ["--stage", "main", "--data", str(tmp_path)] if option == "--max-skip" else []  # where it applies
    assert kmnrt_main(["train", "--iterations", "3", *stage, option, value, "--out", str(tmp_path / "run")]) != 0
    error = capsys.readouterr().err
    assert error.startswith(f"error: {message}") and "Traceback" not in error
