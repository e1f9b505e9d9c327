"""The procedural video generator and its DAVIS-layout output."""

from __future__ import annotations

import numpy as np
import pytest

from kmnrt.data import find_sequences, read_annotation
from kmnrt.errors import UserInputError
from kmnrt.evaluation import evaluate_folders
from kmnrt.training.videos import MIN_VISIBLE_FRACTION, VideoConfig, generate_video, write_video_dataset

SMALL = VideoConfig(height=64, width=96, frames=8)


def test_a_video_is_seeded_and_its_objects_start_visible_then_move():
    frames, masks = generate_video(np.random.default_rng([5, 0]), SMALL)
    assert frames.shape == (8, 64, 96, 3) and frames.dtype == np.uint8 and masks.shape == (8, 64, 96)
    again, again_masks = generate_video(np.random.default_rng([5, 0]), SMALL)
    assert np.array_equal(frames, again) and np.array_equal(masks, again_masks)
    ids = [i for i in np.unique(masks[0]) if i]
    assert ids == list(range(1, len(ids) + 1))
    for obj in ids:
        assert (masks[0] == obj).sum() >= MIN_VISIBLE_FRACTION * 64 * 96
    assert not np.array_equal(masks[0], masks[-1])  # the objects moved
    assert (np.abs(frames[0].astype(int) - frames[-1].astype(int)) > 10).mean() > 0.02


def test_videos_vary_in_object_count_and_show_lookalike_distractors():
    counts, lookalikes = set(), 0
    for index in range(12):
        frames, masks = generate_video(np.random.default_rng([0, index]), SMALL)
        counts.add(int(masks[0].max()))
        # a look-alike: unlabelled pixels (not background texture) coloured like an object
        background = masks[0] == 0
        for obj in range(1, int(masks[0].max()) + 1):
            colour = np.median(frames[0][masks[0] == obj], axis=0)
            close = np.abs(frames[0].astype(int) - colour).max(axis=2) < 12
            if (close & background).sum() > 0.5 * (masks[0] == obj).sum():
                lookalikes += 1
    assert counts == {1, 2, 3}
    assert lookalikes >= 1


def test_written_tree_reads_as_davis_and_scores_perfectly_against_itself(tmp_path):
    root = write_video_dataset(tmp_path / "gen", videos=2, seed=4, config=SMALL, progress=False)
    sequences = find_sequences(root)
    assert [s.name for s in sequences] == ["synthetic-0000", "synthetic-0001"]
    _, masks = generate_video(np.random.default_rng([4, 1]), SMALL)
    assert np.array_equal(read_annotation(sequences[1], "00005"), masks[5])  # PNGs hold the exact labels
    jpegs = sorted((root / "JPEGImages" / "synthetic-0001").iterdir())
    assert [p.name for p in jpegs] == [f"{t:05d}.jpg" for t in range(8)]
    result = evaluate_folders(root, root / "Annotations", progress=False)
    assert result.global_scores.as_dict()["J&F-Mean"] == pytest.approx(1.0)
    with pytest.raises(UserInputError, match="already exists"):
        write_video_dataset(root, videos=1, config=SMALL, progress=False)
    assert not list(tmp_path.glob(".gen.*"))
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserInputError, match=r"--out .*file/deeper/gen: .*file is a file, not a folder"):
        write_video_dataset(tmp_path / "file" / "deeper" / "gen", videos=1, config=SMALL, progress=False)
    mine = tmp_path / ".other.tmp"  # a folder of the user's named like the old fixed scratch name: left alone
    mine.mkdir()
    write_video_dataset(tmp_path / "other", videos=1, config=SMALL, progress=False)
    assert mine.is_dir()


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "--seed must be 0 or more, got -1"),
    (["--frames", "1"], "generated videos need at least 32x32 pixels (--width, --height) and 3 frames (--frames)"),
    (["--max-objects", "300"], "objects per video must satisfy 1 <= min_objects <= max_objects (--max-objects) <= 255"),
])
def test_generate_data_option_errors_are_one_line(tmp_path, capsys, argv, message):
    from kmnrt.cli import main

    assert main(["generate-data", "--videos", "1", "--frames", "3", "--height", "32", "--width", "48", *argv,
                 "--out", str(tmp_path / "videos")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {message}") and not (tmp_path / "videos").exists()
